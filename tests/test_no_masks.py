"""Image labels only is a first-class dataset: a user's folder without ground-truth masks runs
`all` to the end (pseudo-masks, their pictures, DeepLab trained on them, its predictions on the
eval split, the report), and the figures that need masks are left out with the reason; with
masks on some images only, those are scored and the count is said."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pandas as pd
import pytest

from own_data import make_plain_folder
from smk import ENV, TINY, jobs_in_dry_run, run_snakemake, snakemake_cmd

from icd_pipeline.data.synthetic import generate

NEEDS_MASKS = {"eval_pseudo_masks", "train_deeplab_full", "infer_deeplab_full"}


def voc_folder(path, masks: str = "none"):
    """A small VOC-layout folder of embedded-dataset photos (labels in Annotations/*.xml):
    masks 'none', 'some' (every other image) or 'all'."""
    generate(path, {"num_classes": 3, "image_size": 64, "num_train": 16, "num_val": 6,
                    "saliency": {"enabled": False}}, seed=3, progress=False)
    (path / "manifest.json").unlink()
    masks_dir = path / "SegmentationClass"
    if masks == "none":
        shutil.rmtree(masks_dir)
    elif masks == "some":
        for i, png in enumerate(sorted(masks_dir.glob("*.png"))):
            if i % 2:
                png.unlink()
    return path


def folder_config(root, name):
    return ["--config", f"dataset={{source: folder, root: {root}, name: {name}}}"]


def _check_run_without_masks(work, name, train_ids, val_ids):
    res = work / "results" / name / "default"
    for method in ("cam", "cam_crf", "icd_seed", "icd_crf"):
        assert sorted(p.stem for p in (res / "pseudo_masks" / "masks" / method).glob("*.png")) == sorted(train_ids)
    assert (res / "pseudo_masks" / "grid.png").stat().st_size > 1000
    assert (res / "deeplab" / "pseudo" / "model.pt").is_file()
    assert sorted(p.stem for p in (res / "deeplab" / "pseudo" / "predictions").glob("*.png")) == sorted(val_ids)
    summary = json.loads((res / "deeplab" / "pseudo" / "summary.json").read_text())
    assert summary["miou"] is None and summary["predicted_images"] == len(val_ids)
    assert "has a ground-truth mask" in summary["reason"]
    assert (res / "deeplab" / "grid.png").stat().st_size > 1000
    assert not (res / "pseudo_masks" / "table.csv").exists()
    assert not (work / "results" / name / "deeplab_full").exists()
    outputs = json.loads((res / "outputs.json").read_text())
    assert outputs["deeplab_full"] is None and len(outputs["missing"]) == 3
    md = (res / "report" / "summary.md").read_text()
    html = (res / "report.html").read_text()
    for text in (md, html):
        assert f"none of the {len(train_ids)} images of split train has a mask" in text
        assert f"none of the {len(val_ids)} images of split val has a mask" in text
        assert "fully supervised DeepLab: not trained" in text
    return res


@pytest.mark.slow
def test_photos_without_masks_run_all_to_the_end(tmp_path):
    """A 40-image plain folder with labels.csv (sub-folders, five extensions) and a VOC-layout
    folder, neither with a mask: `all` exits 0 on both (the two runs side by side, one core each)."""
    plain = make_plain_folder(tmp_path / "my photos", n_images=40, classes=3)
    voc = voc_folder(tmp_path / "VOC")
    runs = {"plain": (plain, tmp_path / "work_plain"), "voc": (voc, tmp_path / "work_voc")}
    for name, (root, work) in runs.items():
        jobs = jobs_in_dry_run(run_snakemake(work, "-n", "all", f"--configfile={TINY}", *folder_config(root, name)))
        assert {"make_pseudo_masks", "pseudo_mask_pictures", "train_deeplab", "infer_deeplab", "deeplab_pictures",
                "summarize"} <= jobs and not jobs & NEEDS_MASKS, name
    procs = {name: subprocess.Popen(snakemake_cmd(work, "--cores", "1", "all", f"--configfile={TINY}",
                                                  *folder_config(root, name)),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
             for name, (root, work) in runs.items()}
    outs = {name: proc.communicate(timeout=1500)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, outs[name][-6000:]
    # the plain folder: ids from the paths, the eval split held out by dataset.val_fraction
    lists = runs["plain"][1] / "results" / "plain" / "data" / "ImageSets" / "Segmentation"
    train_ids, val_ids = lists.joinpath("train.txt").read_text().split(), lists.joinpath("val.txt").read_text().split()
    assert len(train_ids) + len(val_ids) == 40 and len(val_ids) == 4
    _check_run_without_masks(runs["plain"][1], "plain", train_ids, val_ids)
    lists = voc / "ImageSets" / "Segmentation"
    work = _check_run_without_masks(runs["voc"][1], "voc", lists.joinpath("train.txt").read_text().split(),
                                    lists.joinpath("val.txt").read_text().split())
    # asking for the fully supervised model itself says why it cannot be built
    proc = run_snakemake(runs["voc"][1], "-n", "train_deeplab_full", f"--configfile={TINY}",
                         *folder_config(voc, "voc"), check=False)
    assert proc.returncode != 0 and work.is_dir()
    assert "needs a mask for every image of split train" in proc.stdout + proc.stderr


def test_a_folder_that_would_fail_later_is_refused_before_any_job(tmp_path):
    """Checked when the workflow is parsed: a training split smaller than a batch, named with
    the key and both numbers, on the terminal; nothing runs."""
    root = make_plain_folder(tmp_path / "few", n_images=8, classes=2)
    work = tmp_path / "work"
    proc = run_snakemake(work, "-n", "all", f"--configfile={TINY}", *folder_config(root, "few"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(r"labels.csv: the training split 'train' has [0-7] images, fewer than icd.batch_size = 8", out)
    assert not (work / "results").exists()


def test_masks_on_some_images_are_scored_over_those(tmp_path):
    root = voc_folder(tmp_path / "photos", masks="some")
    work = tmp_path / "work"
    dry = run_snakemake(work, "-n", "all", f"--configfile={TINY}", *folder_config(root, "some"))
    jobs = jobs_in_dry_run(dry)
    # pseudo-masks and val are scored over the images with a mask; full supervision needs all
    assert "eval_pseudo_masks" in jobs and not jobs & {"train_deeplab_full", "infer_deeplab_full"}
    from icd_pipeline.data.voc import VOCLayout
    from icd_pipeline.stages import eval_pseudo_masks

    layout = VOCLayout.open(root)
    ids = layout.ids("train")
    scored = layout.ids_with_masks(ids)
    assert 0 < len(scored) < len(ids)
    masks = tmp_path / "pm"
    for method in ("cam", "cam_crf", "icd_seed", "icd_crf"):
        (masks / method).mkdir(parents=True)
        for image_id in ids:  # ground truth where it exists, background elsewhere
            src = root / "SegmentationClass" / f"{image_id}.png"
            if src.is_file():
                shutil.copy(src, masks / method / f"{image_id}.png")
    assert eval_pseudo_masks.main(["--data-root", str(root), "--split", "train", "--masks-dir", str(masks),
                                   "--out-table", str(tmp_path / "t.csv"), "--out-per-class", str(tmp_path / "p.csv"),
                                   "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "t.csv")
    assert (table.images == len(scored)).all() and (table.split_images == len(ids)).all()
    assert (table.miou == 1.0).all()
