"""The ICD model: a CAM classifier and the Intra-Class Discriminator branch (spec 1.2-1.3).

``ICDModel(backbone, num_classes)``:

- CAM head on ``backbone(x)["out"]``: fc6 3x3 (pad 1) + ReLU + Dropout(0.5), fc7 1x1 + ReLU +
  Dropout(0.5), fc8 1x1 -> K with bias. The CAM is fc8's output A (B, K, h, w).
- ICD branch on ``backbone(x)["icd"]``: x = BN(features) with gamma fixed at 1 (eps 1e-5,
  momentum 0.1); directions W (K x C) ~ N(0, 0.01^2); bottom-up b = conv1x1(sg(x), W/|W|);
  sign EMA buffer ``sign_acc`` (K x 2); top-down head fc6_ft 3x3 + ReLU, fc7_ft 1x1 + ReLU,
  concat [x, g1, g2], conv_ft 1x1 -> K without bias ~ N(0, 0.01^2). T is the ICD map.

Head width: ``head_channels`` (None: 1024 for vgg16, the paper's width, and 256 otherwise).
fc6/fc7 and fc6_ft/fc7_ft start from the backbone's pretrained fc6/fc7 when it has them
(vgg16 with ImageNet weights) and the shapes fit; otherwise N(0, 0.01^2) as the official
code initialises parameters missing from its pretrained file.

Checkpoints (``save_icd_checkpoint`` / ``load_icd_model``) are dicts of tensors and plain
values, loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..misc.io import save_model_file
from .backbones import Backbone, build_backbone

CHECKPOINT_FORMAT = "icd-pipeline/icd-model"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that does not fit what the caller expects (names the file and the field)."""


def default_head_channels(backbone_name: str) -> int:
    return 1024 if backbone_name == "vgg16" else 256


class ICDModel(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, head_channels: int | None = None,
                 dropout: float = 0.5, freeze_backbone_bn: bool = False, w_init_std: float = 0.01,
                 cam_head: str = "fc", directions: int = 1):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.head_channels = int(head_channels or default_head_channels(backbone.name))
        self.freeze_backbone_bn = freeze_backbone_bn
        H, C, K = self.head_channels, backbone.icd_channels, num_classes
        # CAM branch: "fc" = fc6/fc7/fc8 (the paper's VGG head); "linear" = fc8 alone on the
        # backbone features (irn's ResNet CAM: a 1x1 classifier, no hidden layers to learn)
        if cam_head not in ("fc", "linear"):
            raise ValueError(f"cam_head must be 'fc' or 'linear', got {cam_head!r}")
        self.cam_head_kind = cam_head
        if cam_head == "fc":
            self.fc6 = nn.Conv2d(backbone.out_channels, H, 3, padding=1)
            self.fc7 = nn.Conv2d(H, H, 1)
            self.drop6 = nn.Dropout(dropout)
            self.drop7 = nn.Dropout(dropout)
        self.fc8 = nn.Conv2d(H if cam_head == "fc" else backbone.out_channels, K, 1, bias=True)
        # ICD branch
        self.bn = nn.BatchNorm2d(C, eps=1e-5, momentum=0.1)
        self.bn.weight.data.fill_(1.0)
        self.bn.weight.requires_grad_(False)
        self.W = nn.Parameter(torch.randn(K, C) * w_init_std)
        self.register_buffer("sign_acc", torch.zeros(K, 2))
        self.fc6_ft = nn.Conv2d(C, H, 3, padding=1)
        self.fc7_ft = nn.Conv2d(H, H, 1)
        self.conv_ft = nn.Conv2d(C + 2 * H, K, 1, bias=False)
        self._init_heads(backbone.fc_init())
        if freeze_backbone_bn:
            for m in backbone.bn_modules():
                for p in m.parameters():
                    p.requires_grad_(False)
        # icd.directions (issue 33, directions.py): R - 1 more candidate directions per class,
        # each with its own sign EMA, and the agreement EMA that picks the working one. Drawn
        # after every other parameter, so the paper's parameters are initialised as with R = 1.
        if int(directions) < 1:
            raise ValueError(f"directions must be >= 1, got {directions}")
        self.num_directions = R = int(directions)
        if R > 1:
            self.W_alt = nn.Parameter(torch.randn(K, R - 1, C) * w_init_std)
            self.register_buffer("sign_acc_alt", torch.zeros(K, R - 1, 2))
        # statistics only (no effect on the paper's training): the agreement EMA of every
        # candidate with the CAM and the working candidate; the seeds' CAM fallback reads them
        self.register_buffer("agree_acc", torch.zeros(K, R))
        self.register_buffer("direction", torch.zeros(K, dtype=torch.long))

    def working_agreement(self) -> torch.Tensor:
        """(K,) agreement EMA of each class's working direction with the CAM (NaN when the
        checkpoint predates it)."""
        return self.agree_acc[torch.arange(self.num_classes, device=self.agree_acc.device), self.direction]

    def _init_heads(self, fc: dict[str, torch.Tensor] | None) -> None:
        # N(0, 0.01^2), the official code's initializer for parameters missing from the
        # pretrained file (Kaiming made the CAM logits explode on pretrained features)
        hidden = (self.fc6, self.fc7) if self.cam_head_kind == "fc" else ()
        for conv in (*hidden, self.fc6_ft, self.fc7_ft):
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.fc8.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc8.bias)
        nn.init.normal_(self.conv_ft.weight, 0.0, 0.01)
        self.fc_initialised = False
        if fc is None:
            return
        if (fc["fc6.weight"].shape == self.fc6_ft.weight.shape and fc["fc7.weight"].shape == self.fc7_ft.weight.shape
                and (self.cam_head_kind != "fc" or fc["fc6.weight"].shape == self.fc6.weight.shape)):
            with torch.no_grad():
                for prefix in ("fc6", "fc7"):
                    targets = (prefix + "_ft",) if self.cam_head_kind != "fc" else (prefix, prefix + "_ft")
                    for target in (getattr(self, t) for t in targets):
                        target.weight.copy_(fc[f"{prefix}.weight"])
                        target.bias.copy_(fc[f"{prefix}.bias"])
            self.fc_initialised = True

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            frozen = self.backbone.bn_modules() if self.freeze_backbone_bn else self.backbone.frozen_bn_modules()
            for m in frozen:
                m.eval()
        return self

    # ------------------------------------------------------------------ forward

    def cam_head(self, feats: torch.Tensor) -> torch.Tensor:
        if self.cam_head_kind == "linear":
            return self.fc8(feats)
        h = self.drop6(F.relu(self.fc6(feats)))
        h = self.drop7(F.relu(self.fc7(h)))
        return self.fc8(h)

    def td_head(self, x: torch.Tensor) -> torch.Tensor:
        g1 = F.relu(self.fc6_ft(x))
        g2 = F.relu(self.fc7_ft(g1))
        return self.conv_ft(torch.cat([x, g1, g2], dim=1))

    def bottom_up(self, x: torch.Tensor) -> torch.Tensor:
        """b = conv1x1(sg(x), W / |W|) in float32: gradient reaches W only."""
        w_hat = F.normalize(self.W.float(), dim=1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.conv2d(x.detach().float(), w_hat[:, :, None, None])

    def directions_hat(self) -> torch.Tensor:
        """(K, R, C) unit candidate directions; candidate 0 is W (the paper's)."""
        w = self.W.float()[:, None]
        if self.num_directions > 1:
            w = torch.cat([w, self.W_alt.float()], dim=1)
        return F.normalize(w, dim=2)

    def bottom_up_candidates(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K, R, h, w) projections of sg(x) on every candidate, float32, gradient to the
        directions only."""
        w_hat = self.directions_hat()
        K, R, C = w_hat.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            p = F.conv2d(x.detach().float(), w_hat.reshape(K * R, C)[:, :, None, None])
        return p.reshape(p.shape[0], K, R, *p.shape[2:])

    def candidate_sign_acc(self) -> torch.Tensor:
        """(K, R, 2) sign EMA of every candidate (a copy; :meth:`set_candidate_sign_acc`)."""
        acc = self.sign_acc[:, None]
        return torch.cat([acc, self.sign_acc_alt], dim=1) if self.num_directions > 1 else acc.clone()

    def set_candidate_sign_acc(self, acc: torch.Tensor) -> None:
        self.sign_acc.copy_(acc[:, 0])
        if self.num_directions > 1:
            self.sign_acc_alt.copy_(acc[:, 1:])

    def forward(self, images: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``images`` (B, 3, H, W) in [0, 1], or the backbone's features ``{"out", "icd"}``
        already computed (the frozen-feature cache): the heads see the same tensors either way.
        With several directions, ``bu_candidates`` holds every candidate's projections and
        ``bu`` the working one's."""
        f = images if isinstance(images, dict) else self.backbone(images)
        cam = self.cam_head(f["out"])
        x = self.bn(f["icd"])
        out = {"cam": cam, "td": self.td_head(x), "feats": x}
        if self.num_directions > 1:
            from ..directions import gather_candidate

            out["bu_candidates"] = self.bottom_up_candidates(x)
            out["bu"] = gather_candidate(out["bu_candidates"], self.direction)
        else:
            out["bu"] = self.bottom_up(x)
        return out

    @torch.no_grad()
    def predict(self, images: torch.Tensor | dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(CAM logits, top-down ICD logits), both (B, K, h, w), in eval mode; ``images`` as
        in :meth:`forward`."""
        was_training = self.training
        self.eval()
        try:
            f = images if isinstance(images, dict) else self.backbone(images)
            cam = self.cam_head(f["out"])
            td = self.td_head(self.bn(f["icd"]))
        finally:
            self.train(was_training)
        return cam, td

    def sign(self) -> torch.Tensor:
        """sigma_c in {+1, -1} from the EMA buffer (spec 2.3), of the working direction."""
        acc = self.working_sign_acc()
        return torch.where(acc[:, 0] >= acc[:, 1], 1.0, -1.0)

    def working_sign_acc(self) -> torch.Tensor:
        """(K, 2) sign EMA of each class's working direction (``sign_acc`` with one direction)."""
        if self.num_directions == 1:
            return self.sign_acc
        return self.candidate_sign_acc()[torch.arange(self.num_classes), self.direction]


# --------------------------------------------------------------------------- checkpoints


def build_icd_model(config: dict, num_classes: int, pretrained: bool | None = None) -> ICDModel:
    """An ICDModel from an ``icd`` config section."""
    name = config.get("backbone", "efficientnet_lite0")
    backbone = build_backbone(name, pretrained=config.get("pretrained", True) if pretrained is None else pretrained,
                              output_stride=config.get("output_stride", 16), out_block=config.get("out_block"))
    if config.get("frozen_stages"):
        backbone.freeze_stages(int(config["frozen_stages"]))
    model = ICDModel(backbone, num_classes, head_channels=config.get("head_channels"),
                     freeze_backbone_bn=config.get("freeze_bn", False), w_init_std=config.get("w_init_std", 0.01),
                     dropout=config.get("dropout", 0.5), cam_head=config.get("cam_head", "fc"),
                     directions=config.get("directions", 1))
    if not config.get("bn_shift_trainable", True):
        # beta stays 0: the ICD features stay zero-mean, so the boundary w^T x = 0 passes
        # through the feature mean (spec 2.2). In the paper L_td moves beta slowly (lr 1e-3);
        # at the embedded config's 30x lr it drifts and its rank-one term dominates the
        # uncentred second moment, pulling W away from the object/background direction.
        model.bn.bias.requires_grad_(False)
    return model


def save_icd_checkpoint(path: str | Path, model: ICDModel, config_section: dict, class_names: Sequence[str],
                        extra: dict[str, Any] | None = None) -> None:
    """Write the model and its metadata atomically. ``class_names`` lists the foreground
    classes (background excluded) or all classes starting with 'background'."""
    names = list(class_names)
    if names and names[0] == "background":
        names = names[1:]
    if len(names) != model.num_classes:
        raise ValueError(f"{len(names)} class names for a model with {model.num_classes} classes")
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "backbone": model.backbone.name,
        "output_stride": int(model.backbone.stride),
        "num_classes": int(model.num_classes),
        "head_channels": int(model.head_channels),
        "class_names": names,
        "config": dict(config_section),
        "extra": dict(extra or {}),
    }
    save_model_file(path, meta, model)


def load_icd_model(path: str | Path, map_location: str | torch.device = "cpu",
                   num_classes: int | None = None, backbone: str | None = None) -> tuple[ICDModel, dict]:
    """Rebuild an ICDModel from a checkpoint; ``num_classes``/``backbone``, when given, must
    match what the checkpoint holds (CheckpointError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file is missing")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable / truncated / not a torch file
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or "meta" not in ckpt or ckpt["meta"].get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an ICD model checkpoint (written by save_icd_checkpoint)")
    meta = ckpt["meta"]
    if num_classes is not None and int(num_classes) != meta["num_classes"]:
        raise CheckpointError(
            f"{path}: checkpoint has {meta['num_classes']} classes ({', '.join(meta['class_names'])}), "
            f"but {num_classes} were expected: it was trained on another dataset")
    if backbone is not None and backbone != meta["backbone"]:
        raise CheckpointError(f"{path}: checkpoint backbone is {meta['backbone']!r}, expected {backbone!r}")
    cfg = dict(meta.get("config", {}))
    cfg.update(backbone=meta["backbone"], output_stride=meta["output_stride"], head_channels=meta["head_channels"])
    model = build_icd_model(cfg, meta["num_classes"], pretrained=False)
    state = dict(ckpt["state_dict"])
    if "agree_acc" not in state and "W_alt" not in state:  # written before issue 33: agreement unknown
        state["agree_acc"] = torch.full_like(model.agree_acc, float("nan"))
        state["direction"] = torch.zeros_like(model.direction)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit backbone {meta['backbone']!r} "
                              f"with {meta['num_classes']} classes ({str(exc).splitlines()[0]})") from exc
    return model.to(map_location), meta


__all__ = ["ICDModel", "CheckpointError", "build_icd_model", "save_icd_checkpoint", "load_icd_model",
           "default_head_channels"]
