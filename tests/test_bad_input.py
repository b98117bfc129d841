"""Bad input through the real entry points: one clear message naming the file or key, a
non-zero exit, and no output left behind."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from icd_pipeline.stages import train_deeplab, train_icd
from icd_pipeline.data.voc import write_palette_png
from icd_pipeline.models.icd import build_icd_model, save_icd_checkpoint
from icd_pipeline.stages import validate_dataset

from test_train_icd import icd_config, make_voc


@pytest.fixture(scope="module")
def clean_voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("bad_input") / "clean", n=9)


@pytest.fixture
def voc(clean_voc, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(clean_voc, root)
    return root


def _truncate(root):
    path = root / "JPEGImages" / "img003.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "img003.jpg", "unreadable image"


def _mask_out_of_range(root):
    write_palette_png(root / "SegmentationClass" / "img004.png", np.full((64, 64), 9, np.uint8))
    return "img004.png", "mask value(s) [9] outside 0..2 and 255"


def _missing_image(root):
    (root / "JPEGImages" / "img005.jpg").unlink()
    return "img005.jpg", "is missing"


def _empty_split(root):
    (root / "ImageSets/Segmentation/train.txt").write_text("\n")
    return "train.txt", "empty"


def _xml_without_objects(root):
    (root / "Annotations" / "img006.xml").write_text("<annotation></annotation>")
    return "img006", "no image-level label"


@pytest.mark.parametrize("fault", [_truncate, _mask_out_of_range, _missing_image, _empty_split, _xml_without_objects])
def test_dataset_faults_fail_validation_naming_the_file(voc, tmp_path, capsys, fault):
    name, problem = fault(voc)
    out = tmp_path / "results" / "mine" / "data"
    cfg = json.dumps({"dataset": {"name": "mine", "source": "folder", "root": str(voc), "train_split": "train",
                                  "eval_split": "train"}})
    capsys.readouterr()
    assert validate_dataset.main(["--config-json", cfg, "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and name in err and problem in err, err
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])


def test_clean_dataset_validates(voc, tmp_path):
    out = tmp_path / "data"
    cfg = json.dumps({"dataset": {"name": "mine", "source": "folder", "root": str(voc), "train_split": "train",
                                  "eval_split": "train"}})
    assert validate_dataset.main(["--config-json", cfg, "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "manifest.json").read_text())["splits"] == {"train": 9}


def test_truncated_image_during_training_names_the_file(voc, tmp_path, capsys):
    """Even unvalidated, a broken image stops training with its name and leaves no model."""
    _truncate(voc)
    out = tmp_path / "icd"
    rc = train_icd.main(["--config-json", json.dumps(icd_config(epochs=1, batch_size=3)), "--data-root", str(voc),
                         "--split", "train", "--grid-superpixels", "8", "--out-dir", str(out)])
    assert rc == 1
    assert "img003.jpg" in capsys.readouterr().err
    assert not (out / "model.pt").exists() and not (out / "metrics.csv").exists()


@pytest.mark.parametrize("section, key, value", [("icd", "batch_size", "eight"), ("deeplab", "lr", [0.1]),
                                                 ("icd", "no_such_key", 1)])
def test_config_key_of_wrong_type_is_named(voc, tmp_path, capsys, section, key, value):
    main = train_icd.main if section == "icd" else train_deeplab.main
    args = ["--config-json", json.dumps({section: {key: value}}), "--data-root", str(voc), "--split", "train",
            "--out-dir", str(tmp_path / "out")]
    if section == "icd":
        args += ["--grid-superpixels", "8"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{section}.{key}" in err or (key in err and section in err), err
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_other_class_count_is_refused(voc, tmp_path, capsys):
    from icd_pipeline.stages.extract_maps import main as extract_main

    cfg = icd_config()
    save_icd_checkpoint(tmp_path / "model.pt", build_icd_model(cfg["icd"], 5), cfg["icd"],
                        [f"c{i}" for i in range(5)])
    out = tmp_path / "maps.h5"
    rc = extract_main(["--config-json", json.dumps({"maps": {"batch_size": 2, "num_workers": 0}}),
                       "--data-root", str(voc), "--split", "train", "--checkpoint", str(tmp_path / "model.pt"),
                       "--out", str(out), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "model.pt" in err, err
    assert not out.exists()


def test_resume_checkpoint_of_other_backbone_is_not_loaded(voc, tmp_path, caplog):
    """A checkpoints/last.pt left by a run with another backbone or class count is ignored with
    a warning (training starts afresh), never loaded into the wrong model."""
    out = tmp_path / "icd"
    (out / "checkpoints").mkdir(parents=True)
    other = build_icd_model({**icd_config()["icd"], "head_channels": 16}, 7)
    torch.save({"model": other.state_dict(), "identity": {"config": {"backbone": "vgg16"}}},
               out / "checkpoints" / "last.pt")
    rc = train_icd.main(["--config-json", json.dumps(icd_config(epochs=1, batch_size=3)), "--data-root", str(voc),
                         "--split", "train", "--grid-superpixels", "8", "--out-dir", str(out)])
    assert rc == 0 and (out / "model.pt").is_file()
    meta = torch.load(out / "model.pt", weights_only=True)["meta"]
    assert meta["num_classes"] == 2
