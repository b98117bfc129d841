"""Both training stages stop at the first non-finite loss (message, exit status, no outputs, the
last finite epoch's checkpoint kept) and clip gradients when asked; run through their main()
on tests/data/tiny_config.yaml (the `tiny` backbone, 16 images of 64 px, 2 iterations an epoch)."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest
import torch

from icd_pipeline.stages import train_deeplab, train_icd

from smk import TINY
from test_train_icd import make_voc

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the AMP path)")


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_voc(tmp_path_factory.mktemp("diverge") / "data", n=16)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def run_icd(voc: Path, out: Path, **icd) -> int:
    over = {"icd": icd}
    if icd.pop("device", None):
        over["device"] = "cuda"
    return train_icd.main(["--config", str(TINY), "--config-json", json.dumps(over), "--data-root", str(voc),
                           "--split", "train", "--grid-superpixels", "8", "--out-dir", str(out)])


def run_deeplab(voc: Path, out: Path, **deeplab) -> int:
    return train_deeplab.main(["--config", str(TINY), "--config-json", json.dumps({"deeplab": deeplab}),
                               "--data-root", str(voc), "--split", "train", "--out-dir", str(out), "--no-progress"])


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_no_outputs(out: Path) -> None:
    assert not (out / "model.pt").exists() and not (out / "metrics.csv").exists()
    assert not (out / "loss_curve.png").exists()


def test_icd_absurd_lr_stops_inside_epoch_1(voc, tmp_path, capsys):
    out = tmp_path / "icd"
    assert run_icd(voc, out, lr=1e12) == 1
    err = capsys.readouterr().err
    # the first step (lr 1e12) wrecks the weights: the second iteration's loss is NaN/inf
    assert re.search(r"error: train_icd: non-finite loss at epoch 1/2, iteration 2/2: loss_cls = (nan|-?inf)", err)
    assert "learning rate 1e+12 (icd.lr 1e+12 after the poly schedule" in err
    assert "To fix: lower icd.lr (now 1e+12) or set icd.grad_clip" in err
    assert_no_outputs(out)
    assert not (out / "checkpoints" / "last.pt").exists()  # no epoch finished


def test_icd_keeps_the_last_finite_epoch_and_resumes(voc, tmp_path, capsys, monkeypatch):
    out = tmp_path / "icd"
    real_step = train_icd.train_step
    calls = []

    def nan_td_in_epoch_2(*args, **kwargs):
        calls.append(1)
        res = real_step(*args, **kwargs)
        if len(calls) == 3:  # epoch 2, iteration 1; the total "loss" stays finite
            res["loss_td"] = res["loss_td"] * float("nan")
        return res

    monkeypatch.setattr(train_icd, "train_step", nan_td_in_epoch_2)
    assert run_icd(voc, out) == 1
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 2/2, iteration 1/2: loss_td = nan; learning rate" in err
    assert f"{out / 'checkpoints' / 'last.pt'} (after epoch 1) is kept" in err
    assert_no_outputs(out)
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 0  # 0-based: epoch 1
    assert len(rows(out / "checkpoints" / "metrics.csv")) == 1

    calls.clear()
    monkeypatch.setattr(train_icd, "train_step", lambda *a, **k: calls.append(1) or real_step(*a, **k))
    assert run_icd(voc, out) == 0  # the same config resumes at epoch 2
    assert len(calls) == 2 and [r["epoch"] for r in rows(out / "metrics.csv")] == ["1", "2"]


def test_deeplab_absurd_lr_stops_inside_epoch_1(voc, tmp_path, capsys):
    out = tmp_path / "deeplab"
    assert run_deeplab(voc, out, lr=1e12, epochs=2) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: train_deeplab: non-finite loss at epoch 1/2, iteration 2/2: loss = (nan|-?inf); "
                     r"learning rate [0-9.e+]+ \(deeplab.lr 1e\+12 after the poly schedule", err)
    assert "To fix: lower deeplab.lr (now 1e+12) or set deeplab.grad_clip" in err
    assert_no_outputs(out)
    assert not (out / "checkpoints" / "last.pt").exists()


def test_deeplab_keeps_the_last_finite_epoch(voc, tmp_path, capsys, monkeypatch):
    out = tmp_path / "deeplab"
    real_loss = train_deeplab.segmentation_loss
    calls = []

    def inf_in_epoch_2(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss + float("inf") if len(calls) == 3 else loss

    monkeypatch.setattr(train_deeplab, "segmentation_loss", inf_in_epoch_2)
    assert run_deeplab(voc, out, epochs=2) == 1
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 2/2, iteration 1/2: loss = inf" in err
    assert_no_outputs(out)
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def log_lines():
    handler = Lines()
    loggers = [logging.getLogger(n) for n in ("train_icd", "train_deeplab")]
    for lg in loggers:
        lg.addHandler(handler)
    yield handler.lines
    for lg in loggers:
        lg.removeHandler(handler)


def test_grad_clip_is_logged_and_counted(voc, tmp_path, log_lines):
    assert run_icd(voc, tmp_path / "icd", epochs=1, grad_clip=1e-6) == 0
    (row,) = rows(tmp_path / "icd" / "metrics.csv")
    assert row["clipped_steps"] == "2" and float(row["grad_norm"]) > 1e-6
    assert any("clipped to 1e-06 in 2/2 steps" in line for line in log_lines)

    assert run_deeplab(voc, tmp_path / "dl", grad_clip=1e-6) == 0
    (row,) = rows(tmp_path / "dl" / "metrics.csv")
    assert row["clipped_steps"] == "2" and float(row["grad_norm"]) > 1e-6
    assert any("epoch 1/1" in line and "clipped to 1e-06 in 2/2 steps" in line for line in log_lines)

    log_lines.clear()  # off by default: no clipping, nothing logged
    assert run_deeplab(voc, tmp_path / "dl_off") == 0
    (row,) = rows(tmp_path / "dl_off" / "metrics.csv")
    assert row["clipped_steps"] == "0" and row["grad_norm"] == ""
    assert not any("clipped" in line for line in log_lines)


@cuda
def test_amp_training_stops_on_a_non_finite_loss_and_clips(voc, tmp_path, capsys, log_lines):
    out = tmp_path / "icd"
    assert run_icd(voc, out, lr=1e12, device="cuda") == 1
    err = capsys.readouterr().err
    # the stage's log names the AMP run (its handler is not capsys's stream); the error is printed
    assert any("device cuda (AMP)" in line for line in log_lines)
    assert "error: train_icd: non-finite loss at epoch 1/2" in err
    assert_no_outputs(out)
    assert run_icd(voc, tmp_path / "clip", epochs=1, grad_clip=1e-6, device="cuda") == 0
    (row,) = rows(tmp_path / "clip" / "metrics.csv")
    # GradScaler's first steps may overflow and be skipped (not clipped, not an error)
    assert 1 <= int(row["clipped_steps"]) <= 2
