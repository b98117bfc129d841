import os

import pytest

from smk import ENV, TINY, run_snakemake

# every process the tests start, snakemake's command-line parsing included (config show), gets
# the fast-failing scontrol of tests/bin (tests/smk.py says why); test_slurm uses SLURM_ENV
os.environ["PATH"] = ENV["PATH"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole DAG on the tiny config, once per test session."""
    work = tmp_path_factory.mktemp("tiny_run")
    run_snakemake(work, "--cores", "2", f"--configfile={TINY}", "all")
    return work
