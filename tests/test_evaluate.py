import json

import numpy as np
import pytest

from icd_pipeline.data.voc import VOCLayout, write_palette_png
from icd_pipeline.evaluate import Evaluator, confusion_matrix, evaluate_dirs, scores
from icd_pipeline.stages.score import main


def test_confusion_matrix_hand_computed_with_void_in_gt_and_pred():
    gt = np.array([[0, 0, 1, 1], [0, 255, 1, 2]])
    pred = np.array([[0, 1, 1, 255], [0, 0, 255, 2]])
    cm, counted, left = confusion_matrix(gt, pred, 3)
    # pred 255 -> background; gt 255 ignored: 7 pixels counted
    expected = np.zeros((3, 3), int)
    expected[0, 0] = 2  # (0,0) (1,0)
    expected[0, 1] = 1  # (0,1)
    expected[1, 1] = 1  # (0,2)
    expected[1, 0] = 2  # (0,3) pred 255, (1,2) pred 255
    expected[2, 2] = 1
    assert counted == 7 and left == 0
    np.testing.assert_array_equal(cm, expected)
    s = scores(cm)
    # IoU_0 = 2 / (3 + 4 - 2) = 0.4 ; IoU_1 = 1 / (3 + 2 - 1) = 0.25 ; IoU_2 = 1
    np.testing.assert_allclose(s["iou"], [0.4, 0.25, 1.0])
    assert s["miou"] == pytest.approx((0.4 + 0.25 + 1.0) / 3)
    assert s["pixel_acc"] == pytest.approx(4 / 7)


def test_authors_protocol_leaves_out_predicted_void():
    gt = np.array([[0, 0, 1, 1], [0, 255, 1, 2]])
    pred = np.array([[0, 1, 1, 255], [0, 0, 255, 2]])
    cm, counted, left = confusion_matrix(gt, pred, 3, ignore_pred_void=True)
    assert counted == 5 and left == 2
    expected = np.zeros((3, 3), int)
    expected[0, 0] = 2
    expected[0, 1] = 1
    expected[1, 1] = 1
    expected[2, 2] = 1
    np.testing.assert_array_equal(cm, expected)
    ev = Evaluator(3, ignore_pred_void=True)
    ev.add(gt, pred)
    assert ev.summary()["left_out_fraction"] == pytest.approx(2 / 7)


def test_class_absent_everywhere_is_not_averaged():
    gt = np.array([[0, 1]])
    pred = np.array([[0, 1]])
    s = scores(confusion_matrix(gt, pred, 4)[0])
    assert np.isnan(s["iou"][2]) and np.isnan(s["iou"][3])
    assert s["miou"] == 1.0


def test_out_of_range_values_are_errors():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([[5]]), np.array([[0]]), 3)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([[0]]), np.array([[7]]), 3)
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)


def _tiny_layout(tmp_path, masks):
    from PIL import Image

    root = tmp_path / "ds"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    ids = []
    for i, m in enumerate(masks):
        image_id = f"img{i}"
        ids.append(image_id)
        Image.fromarray(np.zeros(m.shape + (3,), np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        write_palette_png(root / "SegmentationClass" / f"{image_id}.png", m)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    return root, ids


def test_ground_truth_against_itself_and_all_background(tmp_path):
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(3):
        m = rng.integers(0, 4, size=(10, 12)).astype(np.uint8)
        m[0, :] = 255
        masks.append(m)
    root, ids = _tiny_layout(tmp_path, masks)
    layout = VOCLayout.open(root, label_source="mask")
    ev = evaluate_dirs(layout, ids, root / "SegmentationClass", progress=False)
    s = scores(ev.cm)
    assert s["miou"] == pytest.approx(1.0)
    # all-background predictions: IoU_bg = bg pixels / all valid pixels, others 0
    pred_dir = tmp_path / "bg"
    pred_dir.mkdir()
    for image_id, m in zip(ids, masks):
        write_palette_png(pred_dir / f"{image_id}.png", np.zeros_like(m))
    ev = evaluate_dirs(layout, ids, pred_dir, progress=False)
    valid = np.concatenate([m[m != 255] for m in masks])
    s = scores(ev.cm)
    assert s["iou"][0] == pytest.approx((valid == 0).sum() / valid.size)
    np.testing.assert_allclose(s["iou"][1:4], 0.0)


def test_entry_point_writes_csv_and_json(tmp_path):
    masks = [np.array([[0, 1], [1, 255]], np.uint8)]
    root, ids = _tiny_layout(tmp_path, masks)
    out_csv, out_json = tmp_path / "pc.csv", tmp_path / "s.json"
    # images use VOC's 21 classes by default; the masks use 0/1 only
    rc = main(["--data-root", str(root), "--split", "train", "--pred-dir", str(root / "SegmentationClass"),
               "--out-csv", str(out_csv), "--out-json", str(out_json)])
    assert rc == 0
    summary = json.loads(out_json.read_text())
    assert summary["miou"] == pytest.approx(1.0)
    assert out_csv.read_text().startswith("class,iou")
    # a missing prediction file is a clear error, and nothing is written
    (root / "SegmentationClass" / "img0.png").rename(tmp_path / "moved.png")
    rc = main(["--data-root", str(root), "--split", "train", "--pred-dir", str(tmp_path / "nope"),
               "--out-csv", str(tmp_path / "x.csv"), "--out-json", str(tmp_path / "x.json")])
    assert rc == 1 and not (tmp_path / "x.csv").exists()
