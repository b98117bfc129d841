"""Pseudo-mask table on hand-made masks, checked against hand-computed numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from icd_pipeline.data.voc import write_palette_png
from icd_pipeline.stages.eval_pseudo_masks import main

CLASSES = ["background", "cat", "dog"]
V = 255
GT = {
    "A": np.array([[0, 0, 1, 1], [0, 0, 1, 1]]),
    "B": np.array([[2, 2, 0, V]]),
}
PRED = {
    "cam": {"A": GT["A"], "B": np.array([[2, 2, 0, 0]])},                        # perfect
    "cam_crf": {"A": np.zeros((2, 4), int), "B": np.zeros((1, 4), int)},         # all background
    "icd_seed": {"A": np.array([[0, V, 1, 1], [V, V, 1, 0]]), "B": np.array([[2, V, 0, 0]])},
    "icd_crf": {"A": np.array([[0, 0, 1, 1], [0, 0, 1, 2]]), "B": np.array([[2, 2, 0, 1]])},
}


def make_data(root: Path) -> tuple[Path, Path]:
    data = root / "data"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (data / d).mkdir(parents=True)
    for image_id, gt in GT.items():
        Image.fromarray(np.zeros((*gt.shape, 3), np.uint8)).save(data / "JPEGImages" / f"{image_id}.jpg")
        write_palette_png(data / "SegmentationClass" / f"{image_id}.png", gt.astype(np.uint8))
    (data / "ImageSets/Segmentation/train.txt").write_text("A\nB\n")
    (data / "dataset.json").write_text(json.dumps({"class_names": CLASSES}))
    masks = root / "masks"
    for sub, preds in PRED.items():
        (masks / sub).mkdir(parents=True)
        for image_id, pred in preds.items():
            write_palette_png(masks / sub / f"{image_id}.png", pred.astype(np.uint8))
    return data, masks


def run(tmp_path, data, masks):
    table, per_class = tmp_path / "out" / "table.csv", tmp_path / "out" / "per_class.csv"
    rc = main(["--data-root", str(data), "--split", "train", "--masks-dir", str(masks), "--out-table", str(table),
               "--out-per-class", str(per_class), "--no-progress"])
    return rc, table, per_class


def test_hand_computed_table(tmp_path):
    data, masks = make_data(tmp_path)
    rc, table_path, per_class_path = run(tmp_path, data, masks)
    assert rc == 0
    table = pd.read_csv(table_path).set_index("method")
    assert list(table.index) == ["CAM", "CAM+CRF", "ICD", "ICD+CRF"]
    assert {"miou", "miou_authors", "left_out_fraction", "pixel_acc"} <= set(table.columns)
    # 11 labelled pixels (B's last pixel is void in the ground truth)
    expected = {
        # method: (miou, miou_authors, left_out_fraction, pixel_acc)
        "CAM": (1.0, 1.0, 0.0, 1.0),
        # cm[0,0]=5, cm[1,0]=4, cm[2,0]=2 -> IoU 5/11, 0, 0
        "CAM+CRF": (5 / 33, 5 / 33, 0.0, 5 / 11),
        # 255 as background: cm[0,0]=5 cm[1,1]=3 cm[1,0]=1 cm[2,2]=1 cm[2,0]=1 -> 5/7, 3/4, 1/2
        # 255 left out (4 of 11): cm[0,0]=2 cm[1,1]=3 cm[1,0]=1 cm[2,2]=1 -> 2/3, 3/4, 1
        "ICD": ((5 / 7 + 3 / 4 + 1 / 2) / 3, (2 / 3 + 3 / 4 + 1) / 3, 4 / 11, 9 / 11),
        # one error, A (1,3): gt 1 -> 2 (B's last pixel, predicted 1, is void in the gt)
        "ICD+CRF": ((1 + 3 / 4 + 2 / 3) / 3, (1 + 3 / 4 + 2 / 3) / 3, 0.0, 10 / 11),
    }
    for method, (miou, miou_a, left, acc) in expected.items():
        row = table.loc[method]
        assert row["miou"] == pytest.approx(miou, abs=1e-6), method
        assert row["miou_authors"] == pytest.approx(miou_a, abs=1e-6), method
        assert row["left_out_fraction"] == pytest.approx(left, abs=1e-6), method
        assert row["pixel_acc"] == pytest.approx(acc, abs=1e-6), method
    assert table.loc["ICD", "pixel_acc_authors"] == pytest.approx(6 / 7, abs=1e-6)
    per_class = pd.read_csv(per_class_path)
    assert list(per_class.columns[:3]) == ["method", "class", "iou"] and len(per_class) == 4 * 3
    icd = per_class[per_class.method == "ICD"].set_index("class")
    np.testing.assert_allclose(icd.loc[CLASSES, "iou"], [5 / 7, 3 / 4, 1 / 2], atol=1e-6)
    np.testing.assert_allclose(icd.loc[CLASSES, "iou_authors"], [2 / 3, 3 / 4, 1.0], atol=1e-6)


def test_missing_method_folder_is_an_error(tmp_path, capsys):
    data, masks = make_data(tmp_path)
    (masks / "icd_crf" / "A.png").unlink()
    rc, table, _ = run(tmp_path, data, masks)
    assert rc == 1 and "A.png" in capsys.readouterr().err and not table.exists()
    for p in (masks / "icd_crf").iterdir():
        p.unlink()
    (masks / "icd_crf").rmdir()
    rc, table, _ = run(tmp_path, data, masks)
    assert rc == 1 and "icd_crf" in capsys.readouterr().err and not table.exists()
