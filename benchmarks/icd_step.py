#!/usr/bin/env python
"""Seconds per ICD training step (forward + backward + SGD update) of a preset's model.

    .venv/bin/python benchmarks/icd_step.py                                   # VOC preset: VGG16, 321 crops
    .venv/bin/python benchmarks/icd_step.py --batch 2 --repeats 3
    .venv/bin/python benchmarks/icd_step.py --preset config.yaml --batch 16   # the embedded default

Random images, labels and superpixels of the preset's crop size go through
``train_icd.train_step`` exactly as in training (losses, sign update, superpixel refinement);
the weights are random (``pretrained: false``), which does not change the arithmetic. Prints one
JSON line and writes it to ``results/benchmark/icd_step_<backbone>_b<batch>.json``. On CUDA
the step runs under AMP and the figure is also given as images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icd_pipeline.config import load_config  # noqa: E402
from icd_pipeline.losses import param_groups  # noqa: E402
from icd_pipeline.misc.runtime import select_device  # noqa: E402
from icd_pipeline.models.icd import build_icd_model  # noqa: E402
from icd_pipeline.stages.train_icd import train_step  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=str(ROOT / "workflow" / "presets" / "voc2012.yaml"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=20)
    args = parser.parse_args()
    files = [ROOT / "config.yaml"] + ([Path(args.preset)] if Path(args.preset).name != "config.yaml" else [])
    cfg = load_config(files)["icd"]
    device = select_device("auto")
    amp = device.type == "cuda"
    torch.manual_seed(0)
    model = build_icd_model(cfg, args.classes, pretrained=False).to(device).train()
    opt = torch.optim.SGD(param_groups(model, cfg["lr"], cfg["weight_decay"]), lr=cfg["lr"], momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    size = int(cfg["crop_size"])
    images = torch.randn(args.batch, 3, size, size, device=device)
    y = torch.zeros(args.batch, args.classes, device=device)
    y[torch.arange(args.batch), torch.arange(args.batch) % args.classes] = 1
    sp = (torch.arange(size, device=device)[:, None] // 16 * 100 + torch.arange(size, device=device)[None] // 16)
    sp = sp.expand(args.batch, size, size).contiguous()

    def step() -> float:
        if amp:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = train_step(model, images, y, sp, cfg, 1.0, amp)
        opt.zero_grad(set_to_none=True)
        scaler.scale(res["loss"]).backward()
        scaler.step(opt)
        scaler.update()
        if amp:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    step()  # warm-up
    times = [step() for _ in range(args.repeats)]
    sec = statistics.median(times)
    out = {"backbone": cfg["backbone"], "crop_size": size, "batch": args.batch, "device": str(device),
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "amp": amp,
           "seconds_per_step_median": round(sec, 4), "seconds_per_step_all": [round(t, 4) for t in times],
           "images_per_s": round(args.batch / sec, 3)}
    report(out, f"icd_step_{cfg['backbone']}_b{args.batch}.json")
    return 0


def report(out: dict, name: str) -> None:
    """Print the figures as one JSON line and write them to results/benchmark/<name>."""
    print(json.dumps(out))
    dest = ROOT / "results" / "benchmark" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
