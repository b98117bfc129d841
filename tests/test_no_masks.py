"""Image labels only is a first-class dataset: a user's folder without ground-truth masks runs
`all` to the end (pseudo-masks, their pictures, DeepLab trained on them, its predictions on the
eval split, the report), and the figures that need masks are left out with the reason; with
masks on some images only, those are scored and the count is said."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from smk import TINY, jobs_in_dry_run, run_snakemake

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


@pytest.mark.slow
def test_voc_layout_without_masks_runs_all_to_the_end(tmp_path):
    root = voc_folder(tmp_path / "photos")
    work = tmp_path / "work"
    dry = run_snakemake(work, "-n", "all", f"--configfile={TINY}", *folder_config(root, "nomask"))
    jobs = jobs_in_dry_run(dry)
    assert {"make_pseudo_masks", "pseudo_mask_pictures", "train_deeplab", "infer_deeplab", "deeplab_pictures",
            "summarize"} <= jobs and not jobs & NEEDS_MASKS
    run_snakemake(work, "--cores", "2", "all", f"--configfile={TINY}", *folder_config(root, "nomask"))
    res = work / "results" / "nomask" / "default"
    train_ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    val_ids = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
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
    assert not (work / "results" / "nomask" / "deeplab_full").exists()
    outputs = json.loads((res / "outputs.json").read_text())
    assert outputs["deeplab_full"] is None and len(outputs["missing"]) == 3
    md = (res / "report" / "summary.md").read_text()
    html = (res / "report.html").read_text()
    for text in (md, html):
        assert "none of the 16 images of split train has a mask" in text
        assert "none of the 6 images of split val has a mask" in text
        assert "fully supervised DeepLab: not trained" in text
    # asking for the fully supervised model itself says why it cannot be built
    proc = run_snakemake(work, "-n", "train_deeplab_full", f"--configfile={TINY}", *folder_config(root, "nomask"),
                         check=False)
    assert proc.returncode != 0
    assert "needs a mask for every image of split train" in proc.stdout + proc.stderr


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
