"""DeepLab inference and VOC mIoU on a split (spec section 6).

Entry point::

    python -m icd_pipeline.infer_deeplab --config-json JSON --data-root DIR --split val \
        --checkpoint results/<ds>/deeplab/<target>/model.pt --pred-dir .../predictions \
        --out-csv .../per_class.csv --out-json .../summary.json

Per image, the softmax probabilities are averaged at the image's own resolution over the test
scales ``deeplab.test_scales`` (each multiplied by the ``input_scale`` the model was trained
with, read from the checkpoint) and, with ``deeplab.test_flip``, their horizontal flips
(the CIAN/DeepLab test protocol, without CIAN's extra element-wise max term). The logits of
each pass are upsampled bilinearly to the image size before the softmax.

``deeplab.test_crf``: a dense CRF (``crf.dense_crf``) refines the averaged probabilities
(unary = -log p). Its pairwise parameters are ``deeplab.test_crf_params`` when given, else
those of ``pseudo_masks.crf`` (gaussian/bilateral terms and iterations; the pseudo-mask-only
``unary_confidence`` and ``min_posterior`` do not apply). The prediction is the argmax.

Predictions are palette PNGs ``<id>.png`` written into ``--pred-dir`` as a whole folder
(atomically), then scored with ``evaluate`` (VOC protocol, confusion matrix over the split):
per-class IoU CSV and a summary JSON (mIoU, pixel accuracy, mean accuracy, and the test
settings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import ConfigError, add_config_args, config_from_args
from .data.voc import DataError, VOCLayout, read_image, to_tensor, write_palette_png
from .evaluate import evaluate_dirs, write_results
from .misc.io import atomic_dir
from .misc.progress import progress as progress_bar
from .misc.runtime import get_logger, inference_memory_format, select_device, set_threads, whole_image_inference
from .models.deeplab import CheckpointError, load_deeplab

LOG = get_logger("infer_deeplab")
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


def _batches(layout: VOCLayout, ids: list[str], batch_size: int):
    """Consecutive images of the same size, up to ``batch_size`` at a time."""
    pending: list[tuple[str, np.ndarray]] = []
    for image_id in ids:
        image = read_image(layout.image_path(image_id))
        if pending and (len(pending) >= batch_size or pending[0][1].shape != image.shape):
            yield pending
            pending = []
        pending.append((image_id, image))
    if pending:
        yield pending


def infer(config: dict, data_root: str | Path, split: str, checkpoint: str | Path, pred_dir: str | Path,
          out_csv: str | Path, out_json: str | Path, progress: bool = True) -> dict:
    section = config["deeplab"]
    set_threads()
    device = select_device(config.get("device", "auto"))
    layout = VOCLayout.open(data_root)
    ids = layout.ids(split)
    model, meta = load_for_inference(checkpoint, device, num_classes=layout.num_classes)
    settings = TestSettings.from_config(config, meta)
    batch_size = max(1, int(section.get("batch_size", 8)))
    LOG.info("predicting %d %s images with %s (scales %s x input %.2f, flip %s, CRF %s) on %s",
             len(ids), split, checkpoint, list(settings.scales), settings.input_scale, settings.flip,
             settings.crf if settings.crf else "off", device)
    start = time.time()
    with atomic_dir(pred_dir) as tmp:
        bar = progress_bar(total=len(ids), desc="predict", disable=not progress, file=sys.stderr)
        for batch in _batches(layout, ids, batch_size):
            labels = segment(model, [img for _, img in batch], settings, device)
            for (image_id, _), label in zip(batch, labels):
                write_palette_png(tmp / f"{image_id}.png", label)
            bar.update(len(batch))
        bar.close()
    seconds = time.time() - start
    ev = evaluate_dirs(layout, ids, pred_dir, ignore_pred_void=False, progress=progress)
    extra = {"split": split, "checkpoint": str(checkpoint), "model": meta["model"], "backbone": meta["backbone"],
             **settings.as_dict(), "seconds": seconds}
    summary = write_results(ev, layout.class_names, out_csv, out_json, extra)
    LOG.info("%s mIoU %.4f (pixel acc %.4f) in %.1f s", split, summary["miou"], summary["pixel_acc"], seconds)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--data-root", required=True, help="dataset folder in VOC layout")
    parser.add_argument("--split", required=True, help="evaluation split list under ImageSets/Segmentation")
    parser.add_argument("--checkpoint", required=True, help="model.pt written by train_deeplab")
    parser.add_argument("--pred-dir", required=True, help="output folder of palette PNG predictions")
    parser.add_argument("--out-csv", required=True, help="per-class IoU CSV")
    parser.add_argument("--out-json", required=True, help="summary JSON")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        summary = infer(config, args.data_root, args.split, args.checkpoint, args.pred_dir, args.out_csv,
                        args.out_json, progress=not args.no_progress)
    except (DataError, ConfigError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: summary[k] for k in ("miou", "pixel_acc", "mean_acc", "images")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
