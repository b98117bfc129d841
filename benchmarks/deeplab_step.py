#!/usr/bin/env python
"""Seconds per DeepLab training step (forward + backward + SGD update) of a preset's model.

    .venv/bin/python benchmarks/deeplab_step.py                       # the embedded default (config.yaml)
    .venv/bin/python benchmarks/deeplab_step.py --compare-library-dw  # also with the library's dilated convs (interleaved)

Random images and masks of the preset's crop size go through ``train_deeplab.train_one_epoch``
exactly as in training (channels-last, the loss at ``loss_stride``, poly lr); the weights are
random (``pretrained: false``), which does not change the arithmetic. ``--compare-library-dw``
times the same steps with efficientnet_lite0's dilated depthwise convs put back to the
library's ``Conv2dDynamicSamePadding`` (oneDNN's backward), interleaved with ours so that a
drifting machine speed hits both. Prints one JSON line and writes it to
``results/benchmark/deeplab_step_<backbone>_b<batch>.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icd_pipeline.config import load_config  # noqa: E402
from icd_pipeline.misc.runtime import select_device, set_threads  # noqa: E402
from icd_pipeline.models import backbones as B  # noqa: E402
from icd_pipeline.models.deeplab import build_from_config  # noqa: E402
from icd_pipeline.stages.train_deeplab import make_optimizer, train_one_epoch  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from icd_step import report  # noqa: E402


def with_library_dw(model: torch.nn.Module) -> int:
    """Put the library's TF-SAME conv back in place of each FastGradDepthwiseConv2d (same weight)."""
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    n = 0
    for block in getattr(model.backbone, "blocks", []):
        conv = block._depthwise_conv
        if isinstance(conv, B.FastGradDepthwiseConv2d):
            lib = Conv2dDynamicSamePadding(conv.in_channels, conv.out_channels, conv.kernel_size[0], stride=1,
                                           dilation=conv.dilation[0], groups=conv.groups, bias=conv.bias is not None)
            lib.weight = conv.weight
            block._depthwise_conv = lib
            n += 1
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=str(ROOT / "config.yaml"))
    parser.add_argument("--batch", type=int, default=None, help="default: the preset's deeplab.batch_size")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--compare-library-dw", action="store_true")
    args = parser.parse_args()
    files = [ROOT / "config.yaml"] + ([Path(args.preset)] if Path(args.preset).name != "config.yaml" else [])
    section = load_config(files)["deeplab"]
    set_threads()
    device = select_device("auto")
    batch = args.batch or int(section["batch_size"])
    size = int(section["crop_size"])
    torch.manual_seed(0)
    images = torch.rand(batch, 3, size, size)
    masks = torch.randint(0, args.classes, (batch, size, size))
    loader = [{"image": images, "mask": masks}] * args.steps

    def build(library_dw: bool):
        model = build_from_config(section, args.classes, pretrained=False)
        if library_dw:
            with_library_dw(model)
        model = model.to(device).to(memory_format=torch.channels_last)
        return model, make_optimizer(model, section)

    variants = {"ours": build(False)}
    if args.compare_library_dw:
        variants["library_dw"] = build(True)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.repeats + 1):  # the first pass warms up
        for name, (model, opt) in variants.items():
            res = train_one_epoch(model, loader, opt, device, None, 0, 10 ** 6, progress=False,
                                  loss_stride=section.get("loss_stride"))
            if r:
                times[name].append(res["seconds"] / args.steps)
    out = {"backbone": section["backbone"], "crop_size": size, "batch": batch, "device": str(device),
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    for name, ts in times.items():
        out[f"seconds_per_step_{name}"] = round(statistics.median(ts), 4)
        out[f"seconds_per_step_{name}_all"] = [round(t, 4) for t in ts]
    report(out, f"deeplab_step_{section['backbone']}_b{batch}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
