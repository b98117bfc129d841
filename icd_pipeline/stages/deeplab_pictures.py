"""Pictures of the DeepLab stage: a prediction grid and a per-class IoU bar chart.

Entry point::

    python -m icd_pipeline.stages.deeplab_pictures --data-root DIR --split val \
        --pred-pseudo results/<ds>/<exp>/deeplab/pseudo/predictions \
        --per-class-pseudo .../pseudo/per_class.csv \
        [--pred-full results/<ds>/deeplab_full/<key>/predictions --per-class-full .../per_class.csv] \
        --out-grid grid.png --out-bars per_class_iou.png [--num 6]

Grid: one row per image, columns image, ground truth (blank where the image has no mask), the
prediction of the DeepLab trained on the pseudo-masks and, when given, that of the DeepLab
trained on the ground truth (the upper bound), in the VOC palette. The images are a fixed,
deterministic choice: ``--num`` ids evenly spaced through the split's sorted id list. Bars:
per-class IoU (background included) of the networks side by side, with their mIoU in the
legend ("not scored" when the split has no mask). Both PNGs are written atomically.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.voc import DataError, VOCLayout, palette_array, read_image, read_mask
from ..misc.commands import command_name
from ..misc.runtime import get_logger
from ..viz import pyplot, save_png

LOG = get_logger("deeplab_pictures")
COLUMNS = ("image", "ground truth", "DeepLab on pseudo-masks", "DeepLab on ground truth")
NO_MASK = 255  # shown as the void colour where an image has no ground truth


def choose_ids(ids: Sequence[str], num: int) -> list[str]:
    """``num`` ids evenly spaced through the sorted list (all of them when there are fewer)."""
    ids = sorted(ids)
    if num >= len(ids):
        return ids
    return [ids[(i * len(ids)) // num] for i in range(num)]


def colorize(mask: np.ndarray) -> np.ndarray:
    return palette_array()[mask]


def prediction_grid(layout: VOCLayout, split: str, pred_dirs: Sequence[str | Path], out_png: str | Path,
                    num: int = 6) -> list[str]:
    ids = choose_ids(layout.ids(split), num)
    plt = pyplot()
    columns = COLUMNS[:2 + len(pred_dirs)]
    fig, axes = plt.subplots(len(ids), len(columns), figsize=(2.0 * len(columns), 2.0 * len(ids)),
                             squeeze=False)
    for r, image_id in enumerate(ids):
        image = read_image(layout.image_path(image_id))
        gt = (read_mask(layout.mask_path(image_id), layout.num_classes) if layout.has_mask(image_id)
              else np.full(image.shape[:2], NO_MASK, np.uint8))
        panels = [image, colorize(gt)]
        for d in pred_dirs:
            path = Path(d) / f"{image_id}.png"
            pred = read_mask(path, layout.num_classes)
            if pred.shape != image.shape[:2]:
                raise DataError(f"{path}: prediction size {pred.shape} differs from image size {image.shape[:2]}")
            panels.append(colorize(pred))
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(image_id, fontsize=7)
    save_png(fig, out_png)
    return ids


def read_per_class(path: str | Path) -> tuple[list[str], list[float]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: per-class CSV is missing")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "class" not in rows[0] or "iou" not in rows[0]:
        raise DataError(f"{path}: expected columns 'class' and 'iou'")
    return [r["class"] for r in rows], [float(r["iou"]) if r["iou"] not in ("", "nan") else float("nan")
                                        for r in rows]


def iou_bars(per_class: dict[str, str | Path], out_png: str | Path) -> None:
    """Grouped bars of per-class IoU, one group per class, one bar per labelled CSV."""
    series = {label: read_per_class(p) for label, p in per_class.items()}
    names = next(iter(series.values()))[0]
    for label, (n, _) in series.items():
        if n != names:
            raise DataError(f"{per_class[label]}: classes {n} differ from {names}")
    plt = pyplot()
    x = np.arange(len(names))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names) + 2), 3.6))
    for i, (label, (_, iou)) in enumerate(series.items()):
        vals = np.asarray(iou, dtype=float) * 100
        scored = np.any(~np.isnan(vals))
        miou = f"mIoU {np.nanmean(vals):.1f}" if scored else "not scored: no ground truth"
        ax.bar(x + (i - (len(series) - 1) / 2) * width, np.nan_to_num(vals), width, label=f"{label} ({miou})")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("DeepLab per-class IoU")
    save_png(fig, out_png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.deeplab_pictures"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--pred-pseudo", required=True, help="predictions of the DeepLab trained on pseudo-masks")
    parser.add_argument("--pred-full", help="predictions of the DeepLab trained on ground truth, if trained")
    parser.add_argument("--per-class-pseudo", required=True)
    parser.add_argument("--per-class-full")
    parser.add_argument("--out-grid", required=True)
    parser.add_argument("--out-bars", required=True)
    parser.add_argument("--num", type=int, default=6, help="images in the grid")
    args = parser.parse_args(argv)
    try:
        if args.num < 1:
            raise ValueError("--num must be >= 1")
        layout = VOCLayout.open(args.data_root)
        if (args.pred_full is None) != (args.per_class_full is None):
            raise ValueError("--pred-full and --per-class-full go together")
        pred_dirs = [args.pred_pseudo] + ([args.pred_full] if args.pred_full else [])
        ids = prediction_grid(layout, args.split, pred_dirs, args.out_grid, args.num)
        per_class = {"pseudo-masks": args.per_class_pseudo}
        if args.per_class_full:
            per_class["ground truth (upper bound)"] = args.per_class_full
        iou_bars(per_class, args.out_bars)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    LOG.info("wrote %s (%s) and %s", args.out_grid, ", ".join(ids), args.out_bars)
    return 0


if __name__ == "__main__":
    sys.exit(main())
