"""The workflow as users drive it, through real `snakemake` processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny_config.yaml"
BIN = Path(sys.executable).parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def run_snakemake(workdir: Path, *args: str, snakefile: Path = ROOT / "Snakefile", check: bool = True,
                  timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [*SNAKEMAKE, "--snakefile", str(snakefile), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def jobs_in_dry_run(proc: subprocess.CompletedProcess) -> set[str]:
    """Rule names scheduled by a dry run (its 'Job stats' table)."""
    out = proc.stdout + proc.stderr
    names = set()
    in_table = False
    for line in out.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0] == "total":
                in_table = False
                continue
            if parts[0].startswith("-"):
                continue
            names.add(parts[0])
    return names


def test_dry_run_default_config(tmp_path):
    proc = run_snakemake(tmp_path, "-n", "all")
    jobs = jobs_in_dry_run(proc)
    assert {"make_embedded_dataset", "superpixels", "train_icd", "extract_maps", "make_pseudo_masks",
            "eval_pseudo_masks", "train_deeplab", "infer_deeplab", "summarize", "all"} <= jobs
    assert not any(tmp_path.iterdir()) or {p.name for p in tmp_path.iterdir()} <= {".snakemake"}


@pytest.mark.parametrize("target", ["data", "icd", "maps", "pseudo_masks", "deeplab", "report"])
def test_stage_targets_exist(tmp_path, target):
    run_snakemake(tmp_path, "-n", target)


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
    fmt = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow"], cwd=ROOT,
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
