"""Interruptions and determinism through real `snakemake` processes (issue: reliability)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from smk import ENV, TINY, run_snakemake, snakemake_cmd

# the tiny config with more ICD epochs, so that a kill lands between two epochs
LONGER = "icd={epochs: 6}"
# the stage target the comparisons need (DeepLab downstream adds time, not coverage)
TARGET = "pseudo_masks"


def _kill_when(work: Path, marker, timeout: float = 300, extra: tuple[str, ...] = ()) -> None:
    """Start the DAG (with ``extra`` arguments), SIGKILL snakemake and its jobs once ``marker``
    (a path, or a callable returning a truthy value) exists."""
    exists = marker if callable(marker) else marker.exists
    proc = subprocess.Popen(snakemake_cmd(work, "--cores", "2", f"--configfile={TINY}", TARGET, *extra,
                                          "--config", LONGER),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.monotonic()
    try:
        while not exists():
            if proc.poll() is not None:
                pytest.fail(f"snakemake ended (rc {proc.returncode}) before {marker} appeared")
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"{marker} did not appear in {timeout} s")
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # a killed Snakemake leaves its lock behind; --unlock removes it (README: after a kill)
    run_snakemake(work, "--unlock", f"--configfile={TINY}")


def _pseudo_masks(work: Path) -> dict[str, bytes]:
    root = work / "results" / "tiny" / "default" / "pseudo_masks" / "masks"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    work = tmp_path_factory.mktemp("uninterrupted")
    run_snakemake(work, "--cores", "2", f"--configfile={TINY}", TARGET, "--config", LONGER)
    return work


def _icd_folder(work: Path) -> Path:
    """The ICD model's folder (shared, named by its settings' key): the one under results/tiny/icd/."""
    (folder,) = [p for p in (work / "results" / "tiny" / "icd").iterdir() if p.is_dir()]
    return folder


def test_kill_during_icd_training_resumes_and_matches(uninterrupted, tmp_path):
    shared = tmp_path / "results" / "tiny"
    _kill_when(tmp_path, lambda: list(shared.glob("icd/*/checkpoints/last.pt")))
    icd = _icd_folder(tmp_path)
    # nothing Snakemake would take as complete was left behind
    assert not (icd / "model.pt").exists() and not (icd / "metrics.csv").exists()
    assert (icd / "checkpoints" / "metrics.csv").exists()  # progress is kept beside the checkpoint
    run_snakemake(tmp_path, "--cores", "2", f"--configfile={TINY}", TARGET, "--config", LONGER)
    (log,) = shared.glob("logs/train_icd_*.log")
    assert "resuming from" in log.read_text()
    metrics = pd.read_csv(icd / "metrics.csv")
    reference = pd.read_csv(_icd_folder(uninterrupted) / "metrics.csv")
    assert list(metrics.epoch) == list(reference.epoch)  # the curve is continuous
    pd.testing.assert_series_equal(metrics.loss_cls, reference.loss_cls, rtol=1e-4)
    assert _pseudo_masks(tmp_path) == _pseudo_masks(uninterrupted)


def test_kill_during_pseudo_masks_leaves_nothing_partial(uninterrupted, tmp_path):
    # the uninterrupted run copied (mtimes and Snakemake's metadata kept): only the pseudo-mask
    # stage reruns (-R), and is killed while it writes into its temporary folder
    work = tmp_path / "run"
    shutil.copytree(uninterrupted, work, symlinks=True)
    res = work / "results" / "tiny" / "default"
    _kill_when(work, lambda: list((res / "pseudo_masks").glob(".masks.*.tmp/icd_crf/*.png")),
               extra=("-R", "make_pseudo_masks"))
    assert not (res / "pseudo_masks" / "masks").exists()
    # the command that was killed, again (its -R: the old downstream files are still there)
    proc = run_snakemake(work, "--cores", "2", f"--configfile={TINY}", TARGET, "-R", "make_pseudo_masks",
                         "--config", LONGER)
    assert "rule train_icd:" not in proc.stdout + proc.stderr  # the rerun starts at the killed stage
    assert _pseudo_masks(work) == _pseudo_masks(uninterrupted), (proc.stdout + proc.stderr)[-3000:]


def test_same_seed_gives_same_pseudo_masks(uninterrupted, tiny_run):
    """Determinism on CPU: two independent runs with the same seed (the kill tests above also
    compare against `uninterrupted`); here the session's tiny run is rerun from scratch."""
    assert _pseudo_masks(tiny_run)  # non-empty
    again = uninterrupted.parent / "again"
    again.mkdir()
    run_snakemake(again, "--cores", "2", f"--configfile={TINY}", "pseudo_masks")
    assert _pseudo_masks(again) == _pseudo_masks(tiny_run)
