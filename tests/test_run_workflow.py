"""A config file with a YAML syntax error given to Snakemake: what Snakemake 9 says by itself
(README: only with --verbose does the position show), the wrapper that names FILE:LINE:COLUMN
before Snakemake starts, and the Snakefile's own check of the default config.yaml (real
`snakemake -n` runs)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from icd_pipeline.cli import check_configfiles, configfiles

from smk import ENV, ROOT, TINY, jobs_in_dry_run, snakemake_cmd

BROKEN_YAML = "icd:\n  lr: 0.1\n  scales: [1, 2\nmaps: {}\n"


def wrapper_cmd(workdir, *args) -> list[str]:
    return [sys.executable, "-m", "icd_pipeline", "run", *snakemake_cmd(workdir, *args)[3:]]


def run(cmd, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def test_configfiles_are_found_as_snakemake_parses_them():
    assert configfiles(["--cores", "2", "all", "--configfile", "a.yaml", "b.yaml", "-n", "--configfiles=c.yaml",
                        "--config", "icd={epochs: 1}", "--configfiles", "d.yaml"]) == ["a.yaml", "b.yaml", "c.yaml",
                                                                                          "d.yaml"]
    assert configfiles(["--cores", "2", "all"]) == []


def test_check_configfiles(tmp_path):
    good, broken = tmp_path / "good.yaml", tmp_path / "broken.yaml"
    good.write_text("icd: {epochs: 1}\n")
    broken.write_text(BROKEN_YAML)
    assert check_configfiles(["--configfile", str(good)]) == []
    assert check_configfiles(["--configfile", str(good), str(broken), str(tmp_path / "none.yaml")]) == [
        f"{broken}:4:5: YAML syntax error: expected ',' or ']', but got ':' (while parsing a flow sequence at "
        "line 3, column 11)", f"{tmp_path / 'none.yaml'}: config file not found"]


def test_snakemake_with_a_broken_configfile(tmp_path):
    (tmp_path / "broken.yaml").write_text(BROKEN_YAML)
    # Snakemake alone fails with "not valid JSON or YAML", no file, no line; --verbose adds the
    # parser's traceback, which has the position (README, Configuration)
    plain = run(snakemake_cmd(tmp_path, "-n", "--verbose", "--configfile", "broken.yaml"), tmp_path)
    out = plain.stdout + plain.stderr
    assert plain.returncode != 0 and "Config file is not valid JSON or YAML" in out
    assert 'in "broken.yaml", line 4, column 5' in out

    # the wrapper: FILE:LINE:COLUMN, and Snakemake is not started
    wrapped = run(wrapper_cmd(tmp_path, "-n", "--configfile", "broken.yaml"), tmp_path)
    assert wrapped.returncode == 1
    assert wrapped.stderr.startswith("error: broken.yaml:4:5: YAML syntax error: expected ',' or ']'")
    assert "Building DAG" not in wrapped.stdout + wrapped.stderr


def test_wrapper_runs_snakemake_when_the_files_parse(tmp_path):
    ok = run(wrapper_cmd(tmp_path, "-n", "--cores", "1", "all", "--configfile", str(TINY)), ROOT)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert {"train_icd", "train_deeplab", "summarize"} <= jobs_in_dry_run(ok)


def test_broken_default_config_is_named_by_the_snakefile(tmp_path):
    """The repository's config.yaml is read by the Snakefile itself: FILE:LINE:COLUMN."""
    (tmp_path / "workflow").mkdir()
    shutil.copy(ROOT / "workflow" / "Snakefile", tmp_path / "workflow" / "Snakefile")
    (tmp_path / "config.yaml").write_text(BROKEN_YAML)
    proc = run(snakemake_cmd(tmp_path / "work", "-n", snakefile=tmp_path / "workflow" / "Snakefile"), tmp_path)
    assert proc.returncode != 0
    assert f"{tmp_path / 'config.yaml'}:4:5: YAML syntax error: expected ',' or ']'" in proc.stdout + proc.stderr
