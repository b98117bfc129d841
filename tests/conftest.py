import pytest

from smk import TINY, run_snakemake


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole DAG on the tiny config, once per test session."""
    work = tmp_path_factory.mktemp("tiny_run")
    run_snakemake(work, "--cores", "2", f"--configfile={TINY}", "all")
    return work
