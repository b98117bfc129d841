"""Running real `snakemake` processes from tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny_config.yaml"
BIN = Path(sys.executable).parent
# The environment of the SLURM test: the venv's tools first, then the machine's (sbatch, squeue).
SLURM_ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
# Every other snakemake process: the SLURM executor plugin (the [slurm] extra) asks
# `scontrol show config` for MinJobAge whenever snakemake starts, and once test_slurm has
# installed SLURM's client tools without a controller running, that call waits ~9 s for its
# timeout (measured: a tiny dry run 11.4 s wall, 1.3 s CPU). tests/bin/scontrol fails at once.
ENV = dict(SLURM_ENV, PATH=f"{BIN}{os.pathsep}{ROOT / 'tests' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")


def snakemake_cmd(workdir: Path, *args: str, snakefile: Path = ROOT / "workflow" / "Snakefile") -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir), *args]


def run_snakemake(workdir: Path, *args: str, snakefile: Path = ROOT / "workflow" / "Snakefile", check: bool = True,
                  timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = snakemake_cmd(workdir, *args, snakefile=snakefile)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-8000:]}\n{proc.stderr[-8000:]}")
    return proc


def jobs_in_dry_run(proc: subprocess.CompletedProcess) -> set[str]:
    """Rule names scheduled by a dry run (its 'Job stats' table)."""
    names = set()
    in_table = False
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0] == "total":
                in_table = False
                continue
            if not parts[0].startswith("-"):
                names.add(parts[0])
    return names


def nothing_to_do(proc: subprocess.CompletedProcess) -> bool:
    return "Nothing to be done" in proc.stdout + proc.stderr


def job_events(log_text: str) -> tuple[list[tuple[str, int]], dict[int, dict]]:
    """A Snakemake run log as ("start" | "end", jobid) events in log order, and each job's rule,
    wildcards and threads (from the job's block)."""
    events, jobs, current = [], {}, None
    for line in log_text.splitlines():
        m = re.match(r"(?:local)?rule (\w+):$", line)
        if m:
            current = {"rule": m.group(1), "wildcards": "", "threads": 1}
            continue
        if current is not None:
            field = re.match(r"    (jobid|wildcards|threads): (.*)$", line)
            if field:
                key, value = field.groups()
                current[key] = int(value) if key in ("jobid", "threads") else value
                if key == "jobid":
                    jobs[current["jobid"]] = current
                    events.append(("start", current["jobid"]))
                continue
            if not line.startswith("    "):
                current = None
        m = re.match(r"Finished jobid: (\d+)", line)
        if m:
            events.append(("end", int(m.group(1))))
    return events, jobs
