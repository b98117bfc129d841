"""The saliency stage in the workflow: a tiny ONNX model built here, through the stage, the
image+saliency seeds and the DAG (the real ISNet is never needed)."""

from __future__ import annotations

import shutil

import pandas as pd
from saliency_onnx import export_tiny
from smk import ENV, TINY, jobs_in_dry_run, run_snakemake


def _folder_dataset(tiny_run, tmp_path):
    """The tiny run's generated data as a user's folder, without the generator's synthetic
    Saliency/ (a real dataset has none: the saliency stage makes the maps)."""
    root = tmp_path / "voc"
    shutil.copytree(tiny_run / "results" / "tiny" / "data", root)
    shutil.rmtree(root / "Saliency")
    (root / "manifest.json").unlink()
    return root


def test_saliency_stage_feeds_the_seeds_and_deeplab(tiny_run, tmp_path):
    """The tiny run without the generator's synthetic saliency: the stage makes the maps with a
    tiny ONNX model, the pseudo-mask stage reads them, DeepLab would train on the chosen masks.
    (--rerun-triggers mtime keeps the tiny run's data and ICD: only the saliency setting moves.)"""
    work = tmp_path / "run"
    shutil.copytree(tiny_run, work, symlinks=True)  # keeps mtimes and Snakemake's metadata
    model = tmp_path / "tiny_saliency.onnx"
    export_tiny(model, size=32)
    config = ["--config", "dataset={synthetic: {saliency: {enabled: false}}}",
              "seeds={background: saliency, saliency_assign: all, saliency_crf: true, saliency_classes: cam}",
              f"saliency={{model: {model}, input_size: 64, batch_size: 2}}"]
    proc = run_snakemake(work, "--cores", "2", "-p", f"--configfile={TINY}", "pseudo_masks", "--rerun-triggers",
                         "mtime", *config)
    out = proc.stdout + proc.stderr
    assert "rule saliency:" in out and "rule train_icd:" not in out
    [maps] = (work / "results" / "tiny" / "saliency").iterdir()
    assert maps.name.startswith("tiny_saliency-")
    assert len(list((maps / "train").glob("*.png"))) == 16 and (maps / "train" / "manifest.json").is_file()
    assert f"--saliency-dir {maps.relative_to(work)}/train" in out
    table = pd.read_csv(work / "results" / "tiny" / "default" / "pseudo_masks" / "table.csv")
    assert list(table.method) == ["CAM", "CAM+CRF", "ICD", "ICD+CRF", "CAM+saliency", "CAM+saliency+CRF",
                                  "ICD+saliency", "ICD+saliency+CRF"]
    assert table.miou.between(0, 1).all()
    # DeepLab trains on the chosen classifier's CRF-refined image+saliency masks; the report says so
    # (-R resolved_config: under mtime triggers its changed params alone would not rewrite outputs.json)
    proc = run_snakemake(work, "-n", "-p", f"--configfile={TINY}", "all", "--rerun-triggers", "mtime",
                         "-R", "resolved_config", *config)
    assert "pseudo_masks/masks/cam_sal_crf --out-dir results/tiny/default/deeplab/pseudo" in proc.stdout
    assert "\"deeplab_masks\":\"cam_sal_crf\"" in proc.stdout  # outputs.json: what the report names
    assert "saliency" not in jobs_in_dry_run(proc)  # the maps are there: nothing to redo
    # another setting of the stage gets its own folder, shared by the dataset's experiments
    proc = run_snakemake(work, "-n", f"--configfile={TINY}", "pseudo_masks", "--rerun-triggers", "mtime",
                         *config[:-1], f"saliency={{model: {model}, input_size: 32}}", "experiment=other")
    assert {"saliency", "make_pseudo_masks"} <= jobs_in_dry_run(proc)


def test_missing_model_stops_the_dag_with_the_fetch_command(tiny_run, tmp_path, monkeypatch):
    root = _folder_dataset(tiny_run, tmp_path)
    env_cache = tmp_path / "empty-cache"
    monkeypatch.setitem(ENV, "ICD_PIPELINE_CACHE", str(env_cache))
    proc = run_snakemake(tmp_path, "-n", f"--configfile={TINY}", "pseudo_masks", "--config",
                         f"dataset={{source: folder, root: {root}, name: mine}}", "seeds={background: saliency}",
                         check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "make saliency-model" in out and str(env_cache / "saliency" / "isnet-medium.onnx") in out
    # with the image labels only, the model is not needed
    proc = run_snakemake(tmp_path, "-n", f"--configfile={TINY}", "pseudo_masks", "--config",
                         f"dataset={{source: folder, root: {root}, name: mine}}")
    assert "saliency" not in jobs_in_dry_run(proc)
