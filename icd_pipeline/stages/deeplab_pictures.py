"""Pictures of the DeepLab stage: a prediction grid and a per-class IoU bar chart.

Entry point::

    python -m icd_pipeline.stages.deeplab_pictures --data-root DIR --split val \
        --pred-pseudo results/<ds>/deeplab/pseudo/predictions \
        --pred-full results/<ds>/deeplab/full/predictions \
        --per-class-pseudo .../pseudo/per_class.csv --per-class-full .../full/per_class.csv \
        --out-grid grid.png --out-bars per_class_iou.png [--num 6]

Grid: one row per image, columns image, ground truth, the prediction of the DeepLab trained
on the pseudo-masks and that of the DeepLab trained on the ground truth (the upper bound),
in the VOC palette. The images are a fixed, deterministic choice: ``--num`` ids evenly spaced
through the split's sorted id list. Bars: per-class IoU (background included) of the two
networks side by side, with their mIoU in the legend. Both PNGs are written atomically.
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
    fig, axes = plt.subplots(len(ids), len(COLUMNS), figsize=(2.0 * len(COLUMNS), 2.0 * len(ids)),
                             squeeze=False)
    for r, image_id in enumerate(ids):
        image = read_image(layout.image_path(image_id))
        panels = [image, colorize(read_mask(layout.mask_path(image_id), layout.num_classes))]
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
                ax.set_title(COLUMNS[c], fontsize=8)
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
        miou = np.nanmean(vals) if np.any(~np.isnan(vals)) else float("nan")
        ax.bar(x + (i - (len(series) - 1) / 2) * width, np.nan_to_num(vals), width,
               label=f"{label} (mIoU {miou:.1f})")
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
    parser.add_argument("--pred-full", required=True, help="predictions of the DeepLab trained on ground truth")
    parser.add_argument("--per-class-pseudo", required=True)
    parser.add_argument("--per-class-full", required=True)
    parser.add_argument("--out-grid", required=True)
    parser.add_argument("--out-bars", required=True)
    parser.add_argument("--num", type=int, default=6, help="images in the grid")
    args = parser.parse_args(argv)
    try:
        if args.num < 1:
            raise ValueError("--num must be >= 1")
        layout = VOCLayout.open(args.data_root)
        ids = prediction_grid(layout, args.split, [args.pred_pseudo, args.pred_full], args.out_grid, args.num)
        iou_bars({"pseudo-masks": args.per_class_pseudo, "ground truth (upper bound)": args.per_class_full},
                 args.out_bars)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    LOG.info("wrote %s (%s) and %s", args.out_grid, ", ".join(ids), args.out_bars)
    return 0


if __name__ == "__main__":
    sys.exit(main())
