"""Saliency foreground IoU and speed of a saliency model at several input sizes.

    python benchmarks/saliency_size.py --data-root DIR --split train_small --sizes 1024 512 384 320 256 \
        [--model isnet-medium] [--limit N] [--out results/benchmark/saliency_size_<split>.csv]

For every image of the split: the model's map at each size, foreground = map > 0.5, against
the ground-truth foreground (classes 1..20; 255 left out). Prints, per size, the mean of the
per-image IoU, the IoU pooled over all pixels, and the seconds per image of the network pass
(preprocessing and resize back included). Choose the size on a training split.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from icd_pipeline.data.voc import VOCLayout, read_image, read_mask
from icd_pipeline.models.saliency import SaliencyRunner, default_threads, foreground_iou, to_uint8


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--split", default="train_small")
    p.add_argument("--model", default="isnet-medium")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 512, 384, 320, 256])
    p.add_argument("--limit", type=int, default=None, help="first N ids of the split")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--save-dir", default=None, help="also write the maps, <dir>/<size>/<id>.png (as the stage)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9],
                   help="also print the pooled IoU at these thresholds")
    args = p.parse_args(argv)
    layout = VOCLayout.open(args.data_root)
    ids = layout.ids(args.split)[: args.limit]
    threads = args.threads or default_threads()
    rows = []
    for size in args.sizes:
        runner = SaliencyRunner(args.model, size, threads=threads, batch_size=args.batch_size)
        per_image, inter, union, seconds = [], 0, 0, 0.0
        pooled = {t: [0, 0] for t in args.thresholds}
        save = Path(args.save_dir) / str(size) if args.save_dir else None
        if save:
            save.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(ids), args.batch_size):
            chunk = ids[start:start + args.batch_size]
            images = [read_image(layout.image_path(i)) for i in chunk]
            t0 = time.perf_counter()
            maps = runner(images)
            seconds += time.perf_counter() - t0
            for i, smap in zip(chunk, maps):
                mask = read_mask(layout.mask_path(i), layout.num_classes)
                a, b = foreground_iou(smap, mask, args.threshold)
                inter, union = inter + a, union + b
                per_image.append(a / b if b else 1.0)
                for t in args.thresholds:
                    a, b = foreground_iou(smap, mask, t)
                    pooled[t][0] += a
                    pooled[t][1] += b
                if save:
                    Image.fromarray(to_uint8(smap), mode="L").save(save / f"{i}.png")
        row = {"model": args.model, "size": size, "split": args.split, "images": len(ids),
               "mean_iou": float(np.mean(per_image)), "pooled_iou": inter / max(union, 1),
               "s_per_image": seconds / len(ids), "threads": threads, "batch_size": args.batch_size,
               "load": os.getloadavg()[0],
               **{f"pooled_iou_at_{t:g}": a / max(b, 1) for t, (a, b) in pooled.items()}}
        rows.append(row)
        print(f"{args.model} size {size}: mean IoU {row['mean_iou']:.4f} pooled {row['pooled_iou']:.4f} "
              f"{row['s_per_image']:.3f} s/image ({len(ids)} images, {threads} threads, load {row['load']:.1f})",
              flush=True)
        print("    pooled IoU by threshold: " + ", ".join(f"{t:g}: {a / max(b, 1):.4f}" for t, (a, b) in pooled.items()),
              flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
