"""Whole-image DeepLab inference: the test protocol shared by ``stages.infer_deeplab`` (a split,
scored) and ``stages.predict`` (a folder of photographs).

Per image, the softmax probabilities are averaged at the image's own resolution over the test
scales ``deeplab.test_scales`` (each multiplied by the ``input_scale`` the model was trained
with, read from the checkpoint) and, with ``deeplab.test_flip``, their horizontal flips
(the CIAN/DeepLab test protocol, without CIAN's extra element-wise max term). The logits of
each pass are upsampled bilinearly to the image size before the softmax. ``deeplab.test_crf``:
a dense CRF (``crf.dense_crf``) refines the averaged probabilities (unary = -log p), with
``deeplab.test_crf_params`` when given, else those of ``pseudo_masks.crf``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import ConfigError
from .data.voc import to_tensor
from .misc.runtime import inference_memory_format, whole_image_inference
from .models.deeplab import load_deeplab


CRF_KEYS = ("gaussian_sxy", "gaussian_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat",
            "iterations")


@torch.no_grad()
def predict_probs(model: torch.nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,),
                  flip: bool = False, input_scale: float = 1.0) -> torch.Tensor:
    """Softmax probabilities (B, C, H, W) at the images' resolution, averaged over the
    scales (times ``input_scale``) and, with ``flip``, the horizontally flipped passes."""
    h, w = images.shape[-2:]
    total = None
    passes = 0
    fmt = inference_memory_format(images.device)
    for s in scales:
        f = float(s) * float(input_scale)
        size = (max(1, int(round(h * f))), max(1, int(round(w * f))))
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            xi = torch.flip(x, dims=[3]) if flipped else x
            with whole_image_inference(images.device):  # float32: each image has its own size
                logits = model(xi.contiguous(memory_format=fmt))
            logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
            if flipped:
                logits = torch.flip(logits, dims=[3])
            p = torch.softmax(logits, dim=1)
            total = p if total is None else total + p
            passes += 1
    return total / passes


def crf_params(config: dict) -> dict:
    own = config["deeplab"].get("test_crf_params")
    src = own if own else config.get("pseudo_masks", {}).get("crf", {})
    missing = [k for k in CRF_KEYS if k not in src]
    if missing:
        raise ConfigError(f"deeplab.test_crf needs CRF parameters {missing} "
                          f"(deeplab.test_crf_params or pseudo_masks.crf)")
    return {k: src[k] for k in CRF_KEYS}


@dataclass(frozen=True)
class TestSettings:
    """How a trained DeepLab is run at test time (the ``deeplab.test_*`` keys of the config).

    ``input_scale`` is the one the model was trained with (read from its checkpoint);
    ``crf`` holds the dense CRF parameters, or None for no CRF."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    input_scale: float = 1.0
    crf: dict | None = None

    @classmethod
    def from_config(cls, config: dict, meta: dict | None = None) -> "TestSettings":
        section = config["deeplab"]
        trained = (meta or {}).get("config", {})
        return cls(scales=tuple(float(s) for s in section["test_scales"]), flip=bool(section["test_flip"]),
                   input_scale=float(trained.get("input_scale", section.get("input_scale", 1.0))),
                   crf=crf_params(config) if section["test_crf"] else None)

    def as_dict(self) -> dict:
        return {"test_scales": list(self.scales), "test_flip": self.flip, "test_crf": self.crf is not None,
                "crf_params": self.crf, "input_scale": self.input_scale}


def load_for_inference(checkpoint: str | Path, device: torch.device,
                       num_classes: int | None = None) -> tuple[torch.nn.Module, dict]:
    """A trained DeepLab in eval mode on ``device`` (channels-last on the CPU), and its checkpoint metadata.
    Its backbone runs as ``Backbone.inference_copy()`` (BN folded into the convs: the same
    function in eval mode up to float rounding, faster on CPU)."""
    model, meta = load_deeplab(checkpoint, map_location=device, num_classes=num_classes)
    model.backbone = model.backbone.inference_copy()
    return model.to(memory_format=inference_memory_format(device)).eval(), meta


def segment(model: torch.nn.Module, images: Sequence[np.ndarray], settings: TestSettings,
            device: torch.device) -> list[np.ndarray]:
    """Label maps (H, W) uint8 for RGB uint8 images of one size (H, W, 3): softmax averaged over
    the test scales and flips (``predict_probs``), the dense CRF when asked, then the argmax.
    The one inference path of ``infer_deeplab`` and ``predict``."""
    batch = torch.stack([to_tensor(img) for img in images]).to(device)
    probs = predict_probs(model, batch, settings.scales, settings.flip, settings.input_scale).cpu().numpy()
    del batch
    labels = []
    for image, p in zip(images, probs):
        if settings.crf is not None:
            from .crf import dense_crf

            p = dense_crf(image, p.astype(np.float32), **settings.crf)
        labels.append(np.asarray(p).argmax(0).astype(np.uint8))
    return labels
