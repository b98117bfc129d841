"""The workflow as users drive it, through real `snakemake` processes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from smk import BIN, ROOT, TINY, job_events, jobs_in_dry_run, nothing_to_do, run_snakemake

from icd_pipeline.summary import MASK_NAMES


def test_dry_run_default_config(tmp_path):
    proc = run_snakemake(tmp_path, "-n", "all")
    jobs = jobs_in_dry_run(proc)
    assert {"make_embedded_dataset", "superpixels", "train_icd", "extract_maps", "make_pseudo_masks",
            "eval_pseudo_masks", "train_deeplab", "infer_deeplab", "summarize", "all"} <= jobs
    assert not any(tmp_path.iterdir()) or {p.name for p in tmp_path.iterdir()} <= {".snakemake"}


STAGE_TARGETS = ("data", "icd", "maps", "pseudo_masks", "deeplab", "report")


def test_stage_targets_exist(tmp_path):
    # one dry run for all six (Snakemake's start-up dominates): an unknown target fails it;
    # the same run checks that deeplab.pseudo_masks picks the folder the pseudo DeepLab trains on
    proc = run_snakemake(tmp_path, "-n", "-p", *STAGE_TARGETS, "--config", "deeplab={pseudo_masks: icd_seed}")
    assert set(STAGE_TARGETS) <= jobs_in_dry_run(proc)
    assert "pseudo_masks/masks/icd_seed --out-dir results/embedded/default/deeplab/pseudo" in proc.stdout
    assert '"deeplab_masks":"icd_seed"' in proc.stdout  # outputs.json: what the report names


def test_bad_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("icd:\n  epochs: ten\n")
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "epochs" in proc.stdout + proc.stderr
    bad.write_text("icd:\n  learnig_rate: 0.1\n")
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0 and "learnig_rate" in proc.stdout + proc.stderr


def test_lint_and_format_are_clean(tmp_path):
    proc = run_snakemake(ROOT, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fmt = subprocess.run([str(BIN / "snakefmt"), "--check", "workflow"], cwd=ROOT,
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


# --------------------------------------------------------------------------- end to end

PKG_FILES = ("config.yaml", "workflow", "icd_pipeline")


def test_tiny_run_produces_every_output(tiny_run):
    res = tiny_run / "results" / "tiny" / "default"
    table = pd.read_csv(res / "pseudo_masks" / "table.csv")
    assert list(table.method[:4]) == ["CAM", "CAM+CRF", "ICD", "ICD+CRF"]
    assert "ICD+saliency" in set(table.method)  # the embedded dataset ships saliency maps
    assert table.miou.between(0, 1).all()
    outputs = json.loads((res / "outputs.json").read_text())
    shared = res.parent
    assert outputs["missing"] == []
    for folder in (res / "deeplab" / "pseudo", shared / outputs["deeplab_full"]):
        summary = json.loads((folder / "summary.json").read_text())
        assert 0 <= summary["miou"] <= 1
        assert (folder / "loss_curve.png").stat().st_size > 0
    assert (shared / outputs["icd"] / "loss_curve.png").stat().st_size > 1000
    assert (shared / outputs["maps"] / "train.h5").stat().st_size > 0
    for name in ("pseudo_masks/grid.png", "deeplab/grid.png", "deeplab/per_class_iou.png"):
        assert (res / name).stat().st_size > 1000, name
    # the report: one self-contained page with the summary table inline and the pictures embedded
    html = (res / "report.html").read_text()
    assert "<table>" in html and "fully supervised" in html and html.count("data:image/png;base64,") >= 5
    md = (res / "report" / "summary.md").read_text()
    masks = yaml.safe_load((ROOT / "config.yaml").read_text())["deeplab"].get("pseudo_masks", "icd_crf")
    assert "ICD+CRF" in md and "fully supervised" in md and f"trained on {MASK_NAMES[masks]}" in md
    # every rule leaves a log and a benchmark (the dataset's shared stages one folder up, named by
    # their settings' key), and the report lists the stage times of exactly this run's jobs
    assert len(list((res / "benchmarks").glob("*.tsv"))) >= 7
    shared_stages = {p.stem for p in (res.parent / "benchmarks").glob("*.tsv")}
    assert "make_embedded_dataset" in shared_stages
    assert any(s.startswith("train_icd_tiny-") for s in shared_stages)
    assert len(outputs["benchmarks"]) == 12 and all((shared / b).is_file() for b in outputs["benchmarks"])
    # nothing is written outside results/ and .snakemake/
    assert {p.name for p in tiny_run.iterdir()} <= {"results", ".snakemake"}


def test_deeplab_trainings_run_side_by_side_after_the_icd_chain(tiny_run):
    """At --cores 2 each DeepLab job gets one thread (deeplab_threads) and the two trainings
    overlap; the chain to the pseudo-masks (priority 2) runs first, so DeepLab on ground truth
    never holds the core that the chain's two-thread jobs wait for, and both trainings
    (priority 1) start before the short evaluation job."""
    first_log = sorted((tiny_run / ".snakemake" / "log").glob("*.snakemake.log"))[0]
    events, jobs = job_events(first_log.read_text())
    order = {event: i for i, event in enumerate(events)}
    by_name = {(j["rule"], j["wildcards"]): jobid for jobid, j in jobs.items()}
    full, pseudo = by_name[("train_deeplab_full", "")], by_name[("train_deeplab", "target=pseudo")]
    assert jobs[full]["threads"] == jobs[pseudo]["threads"] == 1
    assert order[("start", full)] < order[("end", pseudo)] and order[("start", pseudo)] < order[("end", full)]
    chain = [jobid for jobid, j in jobs.items() if j["rule"] in ("train_icd", "make_pseudo_masks")]
    assert len(chain) == 2 and all(order[("end", j)] < order[("start", full)] for j in chain)
    evaluation = by_name[("eval_pseudo_masks", "")]
    assert max(order[("start", full)], order[("start", pseudo)]) < order[("start", evaluation)]


def test_pseudo_target_trains_on_the_chosen_pseudo_mask_folder(tiny_run):
    """deeplab.pseudo_masks picks the folder of the "pseudo" DeepLab: the ICD+CRF masks by
    default, the CAM baseline's on request (a DeepLab from CAM pseudo-masks to compare with)."""
    for folder in ("cam_crf", "icd_seed"):
        proc = run_snakemake(tiny_run, "-n", "-p", f"--configfile={TINY}", "results/tiny/default/deeplab/pseudo/model.pt",
                             "--config", f"deeplab={{pseudo_masks: {folder}}}")
        assert f"--mask-dir results/tiny/default/pseudo_masks/masks/{folder}" in proc.stdout
        assert "pseudo_masks/masks/icd_crf" not in proc.stdout


def test_rerun_does_nothing(tiny_run):
    assert nothing_to_do(run_snakemake(tiny_run, "-n", f"--configfile={TINY}", "all"))


def test_config_section_change_reruns_stage_and_downstream_only(tiny_run):
    proc = run_snakemake(tiny_run, "-n", f"--configfile={TINY}", "all", "--config",
                         "pseudo_masks={cam_bg_threshold: 0.5}")
    jobs = jobs_in_dry_run(proc)
    assert {"make_pseudo_masks", "eval_pseudo_masks", "train_deeplab", "summarize"} <= jobs
    assert not jobs & {"make_embedded_dataset", "superpixels", "train_icd", "extract_maps"}
    proc = run_snakemake(tiny_run, "-n", f"--configfile={TINY}", "all", "--config", "maps={batch_size: 3}")
    jobs = jobs_in_dry_run(proc)
    assert "extract_maps" in jobs and "train_icd" not in jobs


AFTER_PSEUDO_MASKS = {"make_pseudo_masks", "eval_pseudo_masks", "pseudo_mask_pictures", "train_deeplab",
                      "infer_deeplab", "deeplab_pictures", "resolved_config", "summarize", "all"}


def test_experiments_share_what_does_not_depend_on_their_settings(tiny_run):
    """A second experiment that changes only seeds or pseudo_masks runs only the jobs from
    make_pseudo_masks on: data, superpixels, ICD, maps and the fully supervised DeepLab are
    shared (settings-keyed folders); one that changes the ICD settings retrains ICD but still
    shares the data, superpixels and the fully supervised DeepLab; other superpixel settings
    get their own superpixels, still on the same data."""
    for change in ("seeds={icd_bg_threshold: 0.00001}", "pseudo_masks={cam_bg_threshold: 0.5}"):
        proc = run_snakemake(tiny_run, "-n", "-p", f"--configfile={TINY}", "all", "--config", "experiment=other",
                             change)
        assert jobs_in_dry_run(proc) == AFTER_PSEUDO_MASKS, change
        assert "--out-dir results/tiny/other/pseudo_masks/masks" in proc.stdout
    jobs = jobs_in_dry_run(run_snakemake(tiny_run, "-n", f"--configfile={TINY}", "all", "--config",
                                         "experiment=other", "icd={lr: 0.02}"))
    assert {"train_icd", "extract_maps"} <= jobs and not jobs & {"make_embedded_dataset", "superpixels",
                                                                  "train_deeplab_full", "infer_deeplab_full"}
    jobs = jobs_in_dry_run(run_snakemake(tiny_run, "-n", f"--configfile={TINY}", "all", "--config",
                                         "experiment=other", "superpixels={max_regions: 5}"))
    assert "superpixels" in jobs and "make_embedded_dataset" not in jobs
    # the experiment's resolved config lies beside its results, with the origin of each value
    resolved = (tiny_run / "results" / "tiny" / "default" / "resolved_config.yaml").read_text()
    assert yaml.safe_load(resolved)["icd"]["backbone"] == "tiny"
    assert f"# {TINY}" in resolved and "# config.yaml" in resolved
    # compare: the finished default experiment needs nothing else
    assert jobs_in_dry_run(run_snakemake(tiny_run, "-n", f"--configfile={TINY}", "compare")) == {"compare"}


def test_module_edit_reruns_stage_and_downstream_only(tiny_run, tmp_path):
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in PKG_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, copy / name)
    # an identical copy of the code: nothing to do
    assert nothing_to_do(run_snakemake(tiny_run, "-n", f"--configfile={TINY}", "all",
                                       snakefile=copy / "workflow" / "Snakefile"))
    with open(copy / "icd_pipeline" / "seeds.py", "a") as fh:
        fh.write("\n# an edit\n")
    jobs = jobs_in_dry_run(run_snakemake(tiny_run, "-n", f"--configfile={TINY}", "all",
                                         snakefile=copy / "workflow" / "Snakefile"))
    assert {"make_pseudo_masks", "eval_pseudo_masks", "train_deeplab", "infer_deeplab"} <= jobs
    assert not jobs & {"make_embedded_dataset", "train_icd", "extract_maps"}
    with open(copy / "icd_pipeline" / "losses.py", "a") as fh:
        fh.write("\n# an edit\n")
    jobs = jobs_in_dry_run(run_snakemake(tiny_run, "-n", f"--configfile={TINY}", "all",
                                         snakefile=copy / "workflow" / "Snakefile"))
    assert "train_icd" in jobs and "make_embedded_dataset" not in jobs and "superpixels" not in jobs


def test_html_report(tiny_run):
    run_snakemake(tiny_run, f"--configfile={TINY}", "--report", "report.html")
    html = (tiny_run / "report.html").read_text(errors="ignore")
    assert len(html) > 10000 and "Pseudo-masks" in html
    (tiny_run / "report.html").unlink()


def test_saliency_background_end_to_end(tiny_run, tmp_path):
    """seeds.background: saliency reruns the pseudo-masks and DeepLab on the ICD+saliency seeds."""
    work = tmp_path / "run"
    shutil.copytree(tiny_run, work, symlinks=True)  # keeps mtimes and Snakemake's metadata
    proc = run_snakemake(work, "--cores", "2", "-p", f"--configfile={TINY}", "all", "--config",
                         "seeds={background: saliency}")
    out = proc.stdout + proc.stderr
    assert "masks/icd_sal" in out
    assert "rule train_icd:" not in out and "rule extract_maps:" not in out  # ICD and its maps are reused
    table = pd.read_csv(work / "results" / "tiny" / "default" / "pseudo_masks" / "table.csv")
    assert "ICD+saliency" in set(table.method)
    assert json.loads((work / "results" / "tiny" / "default" / "deeplab" / "pseudo" / "summary.json").read_text())["miou"] >= 0
