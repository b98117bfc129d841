"""Pseudo-mask quality table: CAM, CAM+CRF, ICD, ICD+CRF against the ground truth (spec 5.5).

Entry point::

    python -m icd_pipeline.stages.eval_pseudo_masks --data-root DIR --split train \
        --masks-dir results/<ds>/<exp>/pseudo_masks/masks \
        --out-table results/<ds>/<exp>/pseudo_masks/table.csv \
        --out-per-class results/<ds>/<exp>/pseudo_masks/per_class.csv

``--masks-dir`` holds one folder of palette PNGs per method (cam, cam_crf, icd_seed, icd_crf, and
cam_sal, icd_sal [, cam_sal_crf, icd_sal_crf] when the seeds used saliency: the rows
CAM+saliency, ICD+saliency [+CRF]).
Each ground-truth mask is read once and scored under both protocols (icd_pipeline.evaluate):

- ``miou`` / ``pixel_acc``: pixels predicted 255 count as background (default protocol);
- ``miou_authors``: pixels predicted 255 are left out (the ICD authors' ``compute_iou.py``),
  ``left_out_fraction`` is the share of labelled pixels so left out.

The per-class CSV is long format: method, class, iou (default protocol), iou_authors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from ..data.voc import DataError, VOCLayout, read_mask
from ..evaluate import Evaluator, scores
from ..misc.commands import command_name
from ..misc.io import atomic_path
from ..misc.progress import progress as progress_bar
from ..misc.runtime import get_logger

log = get_logger("eval_pseudo_masks")

# (table label, sub-folder of --masks-dir)
METHODS: tuple[tuple[str, str], ...] = (
    ("CAM", "cam"),
    ("CAM+CRF", "cam_crf"),
    ("ICD", "icd_seed"),
    ("ICD+CRF", "icd_crf"),
)
# present only when the pseudo-masks were made with saliency maps (seeds.background: saliency,
# or a dataset that ships Saliency/); the +CRF ones with seeds.saliency_crf
SALIENCY_ROW = ("ICD+saliency", "icd_sal")
SALIENCY_ROWS: tuple[tuple[str, str], ...] = (
    ("CAM+saliency", "cam_sal"),
    ("CAM+saliency+CRF", "cam_sal_crf"),
    SALIENCY_ROW,
    ("ICD+saliency+CRF", "icd_sal_crf"),
)
# images: the images scored (those with a mask); split_images: the images of the split
TABLE_COLUMNS = ["method", "miou", "miou_authors", "left_out_fraction", "pixel_acc", "pixel_acc_authors",
                 "images"]


def evaluate_methods(layout: VOCLayout, ids: Iterable[str], masks_dir: str | Path,
                     methods: Sequence[tuple[str, str]] = METHODS,
                     progress: bool = True) -> dict[str, tuple[Evaluator, Evaluator]]:
    """{label: (default-protocol Evaluator, authors'-protocol Evaluator)}; every mask is read once."""
    masks_dir = Path(masks_dir)
    for _, sub in methods:
        if not (masks_dir / sub).is_dir():
            raise DataError(f"{masks_dir / sub}: pseudo-mask folder is missing")
    evs = {label: (Evaluator(layout.num_classes, False), Evaluator(layout.num_classes, True))
           for label, _ in methods}
    ids = list(ids)
    if not ids:
        raise DataError("no image ids to evaluate")
    for image_id in progress_bar(ids, desc="evaluate pseudo-masks", disable=not progress, file=sys.stderr):
        gt = read_mask(layout.mask_path(image_id), layout.num_classes)
        for label, sub in methods:
            path = masks_dir / sub / f"{image_id}.png"
            pred = read_mask(path, layout.num_classes)
            if pred.shape != gt.shape:
                raise DataError(f"{path}: pseudo-mask size {pred.shape} differs from ground truth {gt.shape}")
            for ev in evs[label]:
                ev.add(gt, pred)
    return evs


def tables(evs: dict[str, tuple[Evaluator, Evaluator]], class_names: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, per_class = [], []
    for label, (ev, ev_auth) in evs.items():
        s, sa = ev.summary(), ev_auth.summary()
        rows.append({"method": label, "miou": s["miou"], "miou_authors": sa["miou"],
                     "left_out_fraction": sa["left_out_fraction"], "pixel_acc": s["pixel_acc"],
                     "pixel_acc_authors": sa["pixel_acc"], "images": s["images"]})
        iou, iou_a = scores(ev.cm)["iou"], scores(ev_auth.cm)["iou"]
        for c, name in enumerate(class_names):
            per_class.append({"method": label, "class": name, "iou": iou[c], "iou_authors": iou_a[c]})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS), pd.DataFrame(per_class)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.eval_pseudo_masks"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="dataset folder in VOC layout")
    parser.add_argument("--split", required=True, help="split list name under ImageSets/Segmentation")
    parser.add_argument("--masks-dir", required=True, help="folder with cam/ cam_crf/ icd_seed/ icd_crf/")
    parser.add_argument("--out-table", required=True)
    parser.add_argument("--out-per-class", required=True)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        layout = VOCLayout.open(args.data_root)
        methods = METHODS + tuple(row for row in SALIENCY_ROWS if (Path(args.masks_dir) / row[1]).is_dir())
        split_ids = layout.ids(args.split)
        ids = layout.ids_with_masks(split_ids)  # a user's dataset may have masks for some images
        if not ids:
            raise DataError(f"{layout.root}: none of the {len(split_ids)} images of split {args.split} has a "
                            "ground-truth mask: pseudo-masks cannot be scored")
        if len(ids) < len(split_ids):
            log.info("scoring the %d of %d images of %s that have a mask", len(ids), len(split_ids), args.split)
        evs = evaluate_methods(layout, ids, args.masks_dir, methods, progress=not args.no_progress)
        table, per_class = tables(evs, layout.class_names)
        table["split_images"] = len(split_ids)
        with atomic_path(args.out_table) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6f")
        with atomic_path(args.out_per_class) as tmp:
            per_class.to_csv(tmp, index=False, float_format="%.6f")
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for row in table.itertuples():
        log.info("%-16s mIoU %.4f | 255 left out: mIoU %.4f (%.1f%% of pixels left out) | pixel acc %.4f",
                 row.method, row.miou, row.miou_authors, 100 * row.left_out_fraction, row.pixel_acc)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
