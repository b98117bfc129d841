"""Export a trained DeepLab as a self-contained ONNX or TorchScript file.

Entry point::

    icd-pipeline export --model results/<ds>/<exp>/deeplab/pseudo/model.pt \
        --format onnx|torchscript --out FILE [--opset 17]

The exported network takes ``images``: float32 (B, 3, H, W), RGB in [0, 1], any B, H, W,
and returns ``logits``: float32 (B, num_classes, H, W), the class logits at the input size
(argmax over dim 1 = the label map; softmax = class probabilities). Everything between is
inside the file: the backbone's normalisation (its mean/std), the resize by the
``input_scale`` the model was trained with, the network, and the bilinear upsampling of the
logits to the input size. It is one forward pass at test scale 1 without flip: the
multi-scale / flip averaging of ``deeplab.test_scales`` / ``test_flip`` is left to the caller
(average the softmax of passes over resized / flipped inputs; the sidecar lists them).

Beside ``FILE`` a JSON sidecar ``FILE.json`` holds what a user of the file needs:
``class_names`` (index = class id, 0 background), ``palette`` (RGB per class, the VOC
colours of the masks), ``input`` / ``output`` (names, layout, range), ``normalisation`` (the
mean/std applied inside), ``input_scale``, ``test_scales``, ``test_flip``, the model and
backbone names and the source checkpoint's SHA-256.

Both formats are traced on an example input; sizes stay dynamic because every size-dependent
step is recorded as a tensor operation (the efficientnet TF-"SAME" padding is swapped for an
equivalent whose pad arithmetic is traced, see :class:`TraceableSamePadConv2d`). ONNX: the
TorchScript-based exporter (``dynamo=False``) with dynamic axes batch/height/width. Run the
ONNX file with ``onnxruntime``; load the TorchScript file with ``torch.jit.load`` (no
icd_pipeline import needed).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.voc import palette_array
from ..misc.commands import command_name
from ..misc.io import atomic_path, sha256_file
from ..misc.runtime import get_logger
from ..models.deeplab import CheckpointError, DeepLab, load_deeplab

LOG = get_logger("export")
FORMATS = ("onnx", "torchscript")
EXAMPLE_SIZE = (67, 93)  # odd, non-square: a traced constant size would show up in the check below


class SegmentationExport(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> logits (B, C, H, W): resize by ``input_scale``, DeepLab,
    bilinear upsampling to the input size (as ``infer_deeplab.predict_probs`` at scale 1)."""

    def __init__(self, model: DeepLab, input_scale: float = 1.0):
        super().__init__()
        self.model = model
        self.input_scale = float(input_scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2], images.shape[-1]
        x = images
        if self.input_scale != 1.0:
            # size floor(H * s) and the sampling step H / size, as predict_probs' explicit size
            # (which rounds instead of flooring: they agree whenever H * s is whole)
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear", align_corners=False,
                              recompute_scale_factor=True)
        logits = self.model(x)
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)


class TraceableSamePadConv2d(nn.Conv2d):
    """efficientnet's ``Conv2dDynamicSamePadding`` (TF "SAME") with the pad computed from the
    traced input size by tensor arithmetic, so a traced graph pads each size correctly
    (Python ``math.ceil`` / ``max`` would freeze the example's pad into the graph). Same
    numbers as the original in eager mode."""

    def forward(self, x):
        ih, iw = x.shape[-2], x.shape[-1]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        dh, dw = self.dilation
        oh = (ih + sh - 1) // sh
        ow = (iw + sw - 1) // sw
        pad_h = torch.clamp(torch.as_tensor((oh - 1) * sh + (kh - 1) * dh + 1 - ih), min=0)
        pad_w = torch.clamp(torch.as_tensor((ow - 1) * sw + (kw - 1) * dw + 1 - iw), min=0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def make_traceable(module: nn.Module) -> nn.Module:
    """Swap efficientnet's dynamic SAME-padding convolutions for :class:`TraceableSamePadConv2d`
    (in place; weights and hyper-parameters unchanged)."""
    try:
        from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding
    except ImportError:  # the package is a dependency; without it there is nothing to swap
        return module
    for m in module.modules():
        if type(m) is Conv2dDynamicSamePadding:
            m.__class__ = TraceableSamePadConv2d
    return module


def build_export_module(checkpoint: str | Path) -> tuple[SegmentationExport, dict]:
    model, meta = load_deeplab(checkpoint, map_location="cpu")
    input_scale = float(meta.get("config", {}).get("input_scale", 1.0))
    wrapper = SegmentationExport(make_traceable(model.float().eval()), input_scale).eval()
    return wrapper, meta


def sidecar(meta: dict, checkpoint: str | Path, fmt: str, wrapper: SegmentationExport, extra: dict | None = None) -> dict:
    names = list(meta["class_names"])
    backbone = wrapper.model.backbone
    trained = meta.get("config", {})
    return {
        "format": fmt,
        "class_names": names,
        "palette": palette_array()[: len(names)].tolist(),
        "input": {"name": "images", "shape": ["batch", 3, "height", "width"], "dtype": "float32",
                  "range": [0.0, 1.0], "channels": "RGB", "any_size": True},
        "output": {"name": "logits", "shape": ["batch", len(names), "height", "width"], "dtype": "float32",
                   "meaning": "class logits at the input size; argmax over dim 1 = class id"},
        "normalisation": {"applied_inside_model": True, "mean": backbone.mean.flatten().tolist(),
                          "std": backbone.std.flatten().tolist(), "formula": "(images - mean) / std"},
        "input_scale": wrapper.input_scale,
        "input_scale_applied_inside_model": True,
        "test_scales": list(trained.get("test_scales", [1.0])),
        "test_flip": bool(trained.get("test_flip", False)),
        "test_protocol": "average softmax(logits) over the images resized by each test scale (and their "
                         "horizontal flips when test_flip), each pass's logits resized back to the image size",
        "model": meta["model"],
        "backbone": meta["backbone"],
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        **(extra or {}),
    }


def export(checkpoint: str | Path, fmt: str, out: str | Path, opset: int = 17) -> dict:
    """Write the model as ``fmt`` to ``out`` and its sidecar to ``out + '.json'`` (both
    atomically); return the sidecar."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    wrapper, meta = build_export_module(checkpoint)
    example = torch.rand(1, 3, *EXAMPLE_SIZE, generator=torch.Generator().manual_seed(0))
    extra: dict = {}
    with warnings.catch_warnings():
        # the tracer warns about every shape value it sees; the check below is what counts
        warnings.simplefilter("ignore")
        with atomic_path(out) as tmp, torch.no_grad():
            if fmt == "onnx":
                torch.onnx.export(
                    wrapper, (example,), str(tmp), dynamo=False, opset_version=int(opset),
                    input_names=["images"], output_names=["logits"],
                    dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                  "logits": {0: "batch", 2: "height", 3: "width"}})
                extra["opset"] = int(opset)
            else:
                traced = torch.jit.trace(wrapper, (example,), check_trace=False)
                check = torch.rand(2, 3, EXAMPLE_SIZE[0] + 10, EXAMPLE_SIZE[1] - 17)
                diff = (traced(check) - wrapper(check)).abs().max().item()
                if diff > 1e-4:
                    raise RuntimeError(f"traced model differs from the model at another input size (max {diff:.3g})")
                torch.jit.save(traced, str(tmp))
    info = sidecar(meta, checkpoint, fmt, wrapper, extra)
    with atomic_path(out.with_name(out.name + ".json")) as tmp:
        tmp.write_text(json.dumps(info, indent=1) + "\n")
    LOG.info("wrote %s (%s, %d classes, input scale %.2f) and %s.json", out, fmt, len(info["class_names"]),
             wrapper.input_scale, out.name)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.export"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model.pt written by train_deeplab")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="output file (.onnx / .pt); the sidecar is FILE.json")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    args = parser.parse_args(argv)
    try:
        export(args.model, args.format, args.out, args.opset)
    except (CheckpointError, ValueError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
