"""VOC-protocol segmentation evaluation.

A confusion matrix is accumulated over the whole split (never averaged per image); ground
truth 255 is ignored. Predicted 255 (pseudo-masks have them) counts as background by
default; with ``ignore_pred_void`` (the ICD authors' ``compute_iou.py`` protocol) those
pixels are left out, and the fraction left out is reported.
``stages.score`` scores any folder of masks with it from the command line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .data.voc import VOID, DataError, VOCLayout, read_mask
from .misc.io import atomic_path
from .misc.progress import progress as progress_bar


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                     ignore_pred_void: bool = False) -> tuple[np.ndarray, int, int]:
    """Return (matrix[gt, pred] of pixel counts, pixels counted, pixels left out for pred 255).

    Pixels with gt 255 are ignored. Predicted 255 is background unless ``ignore_pred_void``.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: gt {gt.shape} vs prediction {pred.shape}")
    gt = gt.astype(np.int64).ravel()
    pred = pred.astype(np.int64).ravel()
    valid = gt != VOID
    if np.any((gt[valid] < 0) | (gt[valid] >= num_classes)):
        raise ValueError(f"ground truth values outside 0..{num_classes - 1} and {VOID}")
    void_pred = valid & (pred == VOID)
    left_out = int(void_pred.sum()) if ignore_pred_void else 0
    if ignore_pred_void:
        valid &= pred != VOID
    else:
        pred = np.where(pred == VOID, 0, pred)
    if np.any((pred[valid] < 0) | (pred[valid] >= num_classes)):
        raise ValueError(f"prediction values outside 0..{num_classes - 1} and {VOID}")
    cm = np.bincount(gt[valid] * num_classes + pred[valid], minlength=num_classes ** 2)
    return cm.reshape(num_classes, num_classes), int(valid.sum()), left_out


def scores(cm: np.ndarray) -> dict:
    """Per-class IoU and accuracy, mIoU (mean over classes present in gt or prediction),
    pixel accuracy and mean class accuracy from a confusion matrix."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    gt_count = cm.sum(1)
    pred_count = cm.sum(0)
    union = gt_count + pred_count - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_count > 0, tp / gt_count, np.nan)
    total = cm.sum()
    return {
        "iou": iou,
        "class_acc": acc,
        "miou": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total else float("nan"),
        "mean_acc": float(np.nanmean(acc)) if np.any(~np.isnan(acc)) else float("nan"),
    }


class Evaluator:
    """Streams (gt, pred) pairs into one confusion matrix: memory does not grow with the split."""

    def __init__(self, num_classes: int, ignore_pred_void: bool = False):
        self.num_classes = num_classes
        self.ignore_pred_void = ignore_pred_void
        self.cm = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.counted = 0
        self.left_out = 0
        self.images = 0

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        cm, counted, left_out = confusion_matrix(gt, pred, self.num_classes, self.ignore_pred_void)
        self.cm += cm
        self.counted += counted
        self.left_out += left_out
        self.images += 1

    def summary(self) -> dict:
        s = scores(self.cm)
        considered = self.counted + self.left_out
        return {
            "miou": s["miou"],
            "pixel_acc": s["pixel_acc"],
            "mean_acc": s["mean_acc"],
            "left_out_fraction": self.left_out / considered if considered else 0.0,
            "images": self.images,
            "protocol": "pred255_excluded" if self.ignore_pred_void else "pred255_as_background",
        }

    def per_class(self, class_names: Sequence[str]) -> pd.DataFrame:
        s = scores(self.cm)
        return pd.DataFrame({
            "class": list(class_names),
            "iou": s["iou"],
            "accuracy": s["class_acc"],
            "gt_pixels": self.cm.sum(1),
            "pred_pixels": self.cm.sum(0),
        })


def evaluate_dirs(layout: VOCLayout, ids: Iterable[str], pred_dir: str | Path,
                  ignore_pred_void: bool = False, gt_dir: str | Path | None = None,
                  progress: bool = True) -> Evaluator:
    """Evaluate palette-PNG predictions in ``pred_dir`` against the layout's masks."""
    pred_dir = Path(pred_dir)
    ev = Evaluator(layout.num_classes, ignore_pred_void)
    ids = list(ids)
    for image_id in progress_bar(ids, desc="evaluate", disable=not progress, file=sys.stderr):
        gt_path = Path(gt_dir) / f"{image_id}.png" if gt_dir else layout.mask_path(image_id)
        gt = read_mask(gt_path, layout.num_classes)
        pred_path = pred_dir / f"{image_id}.png"
        pred = read_mask(pred_path, layout.num_classes)
        if pred.shape != gt.shape:
            raise DataError(f"{pred_path}: prediction size {pred.shape} differs from ground truth {gt.shape}")
        ev.add(gt, pred)
    return ev


def write_results(ev: Evaluator, class_names: Sequence[str], out_csv: str | Path,
                  out_json: str | Path, extra: dict | None = None) -> dict:
    summary = {**ev.summary(), **(extra or {})}
    with atomic_path(out_csv) as tmp:
        ev.per_class(class_names).to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(summary) + "\n")
    return summary



def write_unscored(class_names: Sequence[str], out_csv: str | Path, out_json: str | Path, extra: dict) -> dict:
    """The files of ``write_results`` for predictions that cannot be scored (no ground truth):
    every figure null, ``extra["reason"]`` saying why."""
    summary = {"miou": None, "pixel_acc": None, "mean_acc": None, "images": 0, **extra}
    with atomic_path(out_csv) as tmp:
        pd.DataFrame({"class": list(class_names), "iou": [float("nan")] * len(class_names)}).to_csv(tmp, index=False)
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(summary) + "\n")
    return summary


def class_average_precision(scores: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Per class with at least one positive (column index -> AP): non-interpolated AP, the
    mean precision at the ranks of the positives."""
    aps = {}
    for c in range(labels.shape[1]):
        y = labels[:, c]
        if y.sum() == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = y[order]
        prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps[c] = float((prec * hits).sum() / hits.sum())
    return aps


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes with at least one positive of the (non-interpolated) AP."""
    aps = class_average_precision(scores, labels)
    return float(np.mean(list(aps.values()))) if aps else float("nan")
