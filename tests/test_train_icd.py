"""ICD training entry point: a short run lowers the classification loss, writes its outputs,
and a rerun resumes from the checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icd_pipeline.stages import train_icd
from icd_pipeline.data.voc import write_palette_png
from icd_pipeline.models.icd import load_icd_model

CLASSES = ["background", "square", "disc"]


def make_voc(root: Path, n: int = 16, size: int = 64, seed: int = 0) -> Path:
    """Tiny VOC-layout dataset: a red square and/or a blue disc on a grey noisy background."""
    rng = np.random.default_rng(seed)
    for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    ids = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        image_id = f"img{i:03d}"
        img = np.clip(rng.normal(120, 20, (size, size, 3)), 0, 255)
        mask = np.zeros((size, size), np.uint8)
        present = [[1], [2], [1, 2]][i % 3]
        for c in present:
            r = size // 6
            cy, cx = rng.integers(r, size - r, 2)
            if c == 1:
                region = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
                img[region] = (220, 30, 30)
            else:
                region = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                img[region] = (30, 30, 220)
            mask[region] = c
        Image.fromarray(img.astype(np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        write_palette_png(root / "SegmentationClass" / f"{image_id}.png", mask)
        objs = "".join(f"<object><name>{CLASSES[c]}</name><difficult>0</difficult></object>" for c in present)
        (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objs}</annotation>")
        ids.append(image_id)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    (root / "dataset.json").write_text(json.dumps({"class_names": CLASSES}))
    return root


def icd_config(**over) -> dict:
    icd = {"backbone": "tiny", "pretrained": False, "output_stride": 8, "input_scale": 1.0, "crop_size": 64,
           "scales": [1.0], "batch_size": 8, "epochs": 3, "lr": 0.05, "warmup_epochs": 1.0, "num_workers": 0,
           "head_channels": 32}
    icd.update(over)
    return {"seed": 0, "device": "cpu", "icd": icd}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_voc(tmp_path_factory.mktemp("voc") / "data")


def run(voc: Path, out: Path, config: dict) -> int:
    return train_icd.main(["--config-json", json.dumps(config), "--data-root", str(voc), "--split", "train",
                           "--grid-superpixels", "8", "--out-dir", str(out)])


def test_training_lowers_cls_loss_and_writes_outputs(voc, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "icd"
    assert run(voc, out, icd_config(epochs=6)) == 0
    rows = read_rows(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert float(rows[-1]["loss_cls"]) < float(rows[0]["loss_cls"])
    assert float(rows[0]["warmup"]) < 0.01 and float(rows[-1]["warmup"]) == 1.0
    assert (out / "loss_curve.png").stat().st_size > 0
    assert (out / "checkpoints" / "last.pt").is_file()
    model, meta = load_icd_model(out / "model.pt")
    assert meta["class_names"] == CLASSES[1:] and meta["backbone"] == "tiny" and meta["num_classes"] == 2
    cam, td = model.predict(torch.rand(1, 3, 64, 64))
    assert cam.shape == td.shape == (1, 2, 8, 8)


def test_resume_continues_at_next_epoch(voc, tmp_path, monkeypatch):
    config = icd_config(epochs=3)
    assert run(voc, tmp_path / "ref", config) == 0  # uninterrupted reference
    ref = read_rows(tmp_path / "ref" / "metrics.csv")

    out = tmp_path / "icd"
    real_poly = train_icd.poly_lr

    def crash_at_third_epoch(base, epoch, epochs, power=0.9):
        if epoch == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real_poly(base, epoch, epochs, power)

    monkeypatch.setattr(train_icd, "poly_lr", crash_at_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(voc, out, config)
    assert not (out / "model.pt").exists()
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["iteration"] == 4 and len(ckpt["metrics"]) == 2

    steps = []
    real_step = train_icd.train_step
    monkeypatch.setattr(train_icd, "poly_lr", real_poly)
    monkeypatch.setattr(train_icd, "train_step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    assert run(voc, out, config) == 0
    assert len(steps) == 2  # only the third epoch ran (2 iterations of batch 8)
    rows = read_rows(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for col in ("loss_cls", "loss_td", "lr"):  # same seed + restored RNG: same numbers
        assert float(rows[2][col]) == pytest.approx(float(ref[2][col]), rel=1e-4)

    # another config does not resume from this checkpoint
    steps.clear()
    assert run(voc, out, icd_config(epochs=3, lr=0.01)) == 0
    assert len(steps) == 6


def test_bad_inputs_fail_cleanly(voc, tmp_path, capsys):
    assert run(voc, tmp_path / "x", icd_config(batch_size=64)) == 1
    assert "fewer than icd.batch_size" in capsys.readouterr().err
    assert run(voc, tmp_path / "z", icd_config(directions=3, direction_return_above=0.2)) == 1
    assert "icd.direction_switch_below is null" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()
    assert train_icd.main(["--config-json", json.dumps(icd_config()), "--data-root", str(tmp_path / "none"),
                           "--grid-superpixels", "8", "--out-dir", str(tmp_path / "y")]) == 1
