"""DeepLab segmentation networks over ``build_backbone`` (spec section 6).

``build_deeplab(model, backbone, num_classes, pretrained, output_stride, freeze_bn=True)``
returns a :class:`DeepLab`; ``forward(images)`` takes float images in [0, 1] (B, 3, H, W)
and returns class logits (B, num_classes, h, w) at the backbone's feature resolution
(``stride`` = the backbone's output stride). ``num_classes`` counts the background.

Heads (``model``):

``deeplab_largefov`` (DeepLab v1 LargeFOV)
    fc6 3x3 conv with dilation ``rate`` -> H, ReLU, Dropout(0.5); fc7 1x1 H -> H, ReLU,
    Dropout(0.5); fc8 1x1 -> num_classes. On ``vgg16`` this is the standard LargeFOV
    (H = 1024, rate 12) with fc6/fc7 initialised from the DeepLab-decimated ImageNet
    classifier (``Backbone.fc_init()``, spec 9.2) when the backbone is pretrained.
``deeplab_v2_aspp`` (DeepLab v2 ASPP)
    Four parallel branches with dilations ``rates`` whose class logits are summed. On
    ``vgg16`` each branch is fc6 3x3 (dilated) -> fc7 1x1 -> fc8 1x1 with H = 1024 (ASPP-L,
    as the authors' ``vgg16_aspp``); on every other backbone a branch is one 3x3 dilated
    conv straight to the class logits (the paper-era ResNet-101 DeepLab-v2, rates
    6/12/18/24, weights N(0, 0.01^2)).

Defaults by backbone (``head_channels`` / ``rates`` arguments override them):

============================  =====  ============  ====================
backbone                      H      LargeFOV rate  ASPP rates
============================  =====  ============  ====================
vgg16, resnet50, resnet101    1024   12             6, 12, 18, 24
efficientnet_lite0, tiny      256    3              2, 4, 6, 8
============================  =====  ============  ====================

Why the small rates: the published rates are for 321-px crops at output stride 8, a 41x41
map, where rate 12 reaches 12/41 = 0.29 of the map. The embedded dataset's 96-px images
enter at ``input_scale`` 2 (192 px) and output stride 16: a 12x12 map, where rate 12 would
only sample the zero padding (the 3x3 conv would collapse to a 1x1 conv). Scaling the rates
by the same fraction of the map (0.29 * 12 = 3.5) gives LargeFOV rate 3 and ASPP rates
2/4/6/8 (6/12/18/24 * 12/41 = 1.8/3.5/5.3/7.0, rounded to an even ladder). H = 256 keeps the
head small next to efficientnet_lite0's 320-channel output. The CPU default of config.yaml
(96-px crops of images upsampled x1.5, output stride 16) trains on 6x6 maps and predicts on
9x9 maps: rate 3 then spans the whole map, as rate 12 spans most of a 41x41 one.

``freeze_bn`` (the DeepLab/CIAN practice with small batches): the backbone's BatchNorm layers
stay in eval mode (ImageNet running statistics) and their affine parameters get no gradient.
``freeze_backbone`` (a CPU-budget option, off in the paper recipe): the whole backbone is fixed
(eval mode, no gradient, run under ``torch.no_grad``) and only the head learns; a training step
then costs about one backbone forward pass instead of forward + backward.
``head_parameters()`` / ``backbone_parameters()`` split the trainable parameters for the
head's larger learning rate.

Checkpoints: ``save_deeplab`` / ``load_deeplab`` write and read dicts of tensors and plain
values (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

from ..misc.io import save_model_file
from .backbones import Backbone, build_backbone

MODELS = ("deeplab_largefov", "deeplab_v2_aspp")
CHECKPOINT_FORMAT = "icd-pipeline/deeplab-model"
CHECKPOINT_VERSION = 1
_LARGE_BACKBONES = ("vgg16", "resnet50", "resnet101")


class CheckpointError(ValueError):
    """A DeepLab checkpoint that cannot be used (names the file and the problem)."""


def default_head_channels(backbone_name: str) -> int:
    return 1024 if backbone_name in _LARGE_BACKBONES else 256


def default_rates(model: str, backbone_name: str) -> tuple[int, ...]:
    large = backbone_name in _LARGE_BACKBONES
    if model == "deeplab_largefov":
        return (12,) if large else (3,)
    if model == "deeplab_v2_aspp":
        return (6, 12, 18, 24) if large else (2, 4, 6, 8)
    raise ValueError(f"unknown DeepLab model {model!r}; choose one of {', '.join(MODELS)}")


class LargeFOVBranch(nn.Module):
    """fc6 (3x3, dilation ``rate``) -> ReLU -> dropout -> fc7 (1x1) -> ReLU -> dropout -> fc8."""

    def __init__(self, in_channels: int, head_channels: int, num_classes: int, rate: int,
                 dropout: float = 0.5):
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, head_channels, 3, padding=rate, dilation=rate)
        self.fc7 = nn.Conv2d(head_channels, head_channels, 1)
        self.fc8 = nn.Conv2d(head_channels, num_classes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.drop7 = nn.Dropout(dropout)
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.fc8.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc8.bias)

    def load_fc(self, fc: dict[str, torch.Tensor] | None) -> bool:
        """Copy pretrained fc6/fc7 weights when the shapes fit (vgg16); True if copied."""
        if fc is None or fc["fc6.weight"].shape != self.fc6.weight.shape \
                or fc["fc7.weight"].shape != self.fc7.weight.shape:
            return False
        with torch.no_grad():
            for name in ("fc6", "fc7"):
                getattr(self, name).weight.copy_(fc[f"{name}.weight"])
                getattr(self, name).bias.copy_(fc[f"{name}.bias"])
        return True

    def forward(self, x):
        x = self.drop6(self.relu(self.fc6(x)))
        x = self.drop7(self.relu(self.fc7(x)))
        return self.fc8(x)


class ASPPConvBranch(nn.Module):
    """One 3x3 dilated conv to the class logits (ResNet DeepLab-v2 ASPP branch)."""

    def __init__(self, in_channels: int, num_classes: int, rate: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate)
        nn.init.normal_(self.conv.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return self.conv(x)


class DeepLab(nn.Module):
    """Backbone + LargeFOV or ASPP head; the branches' logits are summed."""

    def __init__(self, backbone: Backbone, num_classes: int, model: str = "deeplab_largefov",
                 head_channels: int | None = None, rates: Sequence[int] | None = None,
                 freeze_bn: bool = True, dropout: float = 0.5, freeze_backbone: bool = False):
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"unknown DeepLab model {model!r}; choose one of {', '.join(MODELS)}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        self.backbone = backbone
        self.model_name = model
        self.num_classes = int(num_classes)
        self.head_channels = int(head_channels or default_head_channels(backbone.name))
        self.rates = tuple(int(r) for r in (rates or default_rates(model, backbone.name)))
        if model == "deeplab_largefov" and len(self.rates) != 1:
            raise ValueError(f"deeplab_largefov takes one rate, got {list(self.rates)}")
        if any(r < 1 for r in self.rates):
            raise ValueError(f"rates must be >= 1, got {list(self.rates)}")
        self.freeze_bn = bool(freeze_bn)
        self.freeze_backbone = bool(freeze_backbone)
        self.stride = backbone.stride
        C = backbone.out_channels
        if model == "deeplab_largefov" or backbone.name == "vgg16":
            branches = [LargeFOVBranch(C, self.head_channels, num_classes, r, dropout) for r in self.rates]
        else:
            branches = [ASPPConvBranch(C, num_classes, r) for r in self.rates]
        self.head = nn.ModuleList(branches)
        fc = backbone.fc_init()
        self.fc_initialised = any(b.load_fc(fc) for b in branches if isinstance(b, LargeFOVBranch)) \
            if fc is not None else False
        if self.freeze_bn:
            for m in backbone.bn_modules():
                for p in m.parameters():
                    p.requires_grad_(False)
        if self.freeze_backbone:
            for p in backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_backbone:
            self.backbone.eval()
        elif mode and self.freeze_bn:
            for m in self.backbone.bn_modules():
                m.eval()
        return self

    def forward(self, images: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """``images`` (B, 3, H, W) in [0, 1], or the frozen backbone's features ``{"out": ...}``
        (the feature cache)."""
        if isinstance(images, dict):
            feats = images["out"]
        elif self.freeze_backbone:
            with torch.no_grad():
                feats = self.backbone(images)["out"]
        else:
            feats = self.backbone(images)["out"]
        out = self.head[0](feats)
        for branch in self.head[1:]:
            out = out + branch(feats)
        return out

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.head.parameters() if p.requires_grad)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.backbone.parameters() if p.requires_grad)


def build_deeplab(model: str, backbone: str, num_classes: int, pretrained: bool = True,
                  output_stride: int = 16, freeze_bn: bool = True, head_channels: int | None = None,
                  rates: Sequence[int] | None = None, freeze_backbone: bool = False, dropout: float = 0.5) -> DeepLab:
    """A DeepLab by name (see the module docstring); ``num_classes`` includes background."""
    if model not in MODELS:
        raise ValueError(f"unknown DeepLab model {model!r}; choose one of {', '.join(MODELS)}")
    bb = build_backbone(backbone, pretrained=pretrained, output_stride=output_stride)
    return DeepLab(bb, num_classes, model=model, head_channels=head_channels, rates=rates, freeze_bn=freeze_bn,
                   freeze_backbone=freeze_backbone, dropout=dropout)


def build_from_config(section: dict, num_classes: int, pretrained: bool | None = None) -> DeepLab:
    """A DeepLab from a ``deeplab`` config section."""
    return build_deeplab(
        section.get("model", "deeplab_largefov"), section.get("backbone", "efficientnet_lite0"), num_classes,
        pretrained=section.get("pretrained", True) if pretrained is None else pretrained,
        output_stride=section.get("output_stride", 16), freeze_bn=section.get("freeze_bn", True),
        head_channels=section.get("head_channels"), rates=section.get("rates"),
        freeze_backbone=section.get("freeze_backbone", False), dropout=section.get("dropout", 0.5))


# --------------------------------------------------------------------------- checkpoints


def save_deeplab(path: str | Path, model: DeepLab, config_section: dict, class_names: Sequence[str],
                 extra: dict[str, Any] | None = None) -> None:
    """Write weights + metadata atomically. ``class_names`` includes 'background'."""
    names = list(class_names)
    if len(names) != model.num_classes:
        raise ValueError(f"{len(names)} class names for a model with {model.num_classes} classes")
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model.model_name,
        "backbone": model.backbone.name,
        "output_stride": int(model.backbone.stride),
        "num_classes": model.num_classes,
        "head_channels": model.head_channels,
        "rates": list(model.rates),
        "freeze_bn": model.freeze_bn,
        "freeze_backbone": model.freeze_backbone,
        "class_names": names,
        "config": dict(config_section),
        "extra": dict(extra or {}),
    }
    save_model_file(path, meta, model)


def load_deeplab(path: str | Path, map_location: str | torch.device = "cpu",
                 num_classes: int | None = None) -> tuple[DeepLab, dict]:
    """Rebuild a DeepLab from ``save_deeplab``'s file (no pretrained weights are read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file is missing")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable / truncated / not a torch file
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("meta"), dict) \
            or ckpt["meta"].get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a DeepLab checkpoint (written by train_deeplab)")
    meta = ckpt["meta"]
    if num_classes is not None and int(num_classes) != meta["num_classes"]:
        raise CheckpointError(
            f"{path}: checkpoint has {meta['num_classes']} classes ({', '.join(meta['class_names'])}), "
            f"but the dataset has {num_classes}: it was trained on another dataset")
    model = build_deeplab(meta["model"], meta["backbone"], meta["num_classes"], pretrained=False,
                          output_stride=meta["output_stride"], freeze_bn=meta["freeze_bn"],
                          head_channels=meta["head_channels"], rates=meta["rates"],
                          freeze_backbone=meta.get("freeze_backbone", False))
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {meta['model']} over {meta['backbone']!r} "
                              f"({str(exc).splitlines()[0]})") from exc
    return model.to(map_location), meta


__all__ = ["MODELS", "DeepLab", "build_deeplab", "build_from_config", "save_deeplab", "load_deeplab",
           "CheckpointError", "default_rates", "default_head_channels"]
