"""The README and docs stay true to the code: every fenced `snakemake` command dry-runs on this
checkout, every `icd-pipeline` / `python -m` command answers --help, the generated configuration
reference is current, and the links point at files that exist."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from own_data import make_plain_folder, make_voc_folder
from smk import ENV, ROOT

DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(bash|sh|shell|console)\s*$(.*?)^```\s*$", re.M | re.S)
BIN = Path(sys.executable).parent
SHARED_SAMPLE = "../shared/data/voc2012-sample/VOC2012"


def fenced_commands(path: Path) -> list[str]:
    """Shell commands of a file's bash blocks: continuation lines joined, comments and blank
    lines dropped."""
    commands = []
    for block in FENCE.finditer(path.read_text()):
        joined = re.sub(r"\\\n\s*", " ", block.group(2))
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def all_commands() -> list[tuple[str, str]]:
    return [(p.relative_to(ROOT).as_posix(), c) for p in DOCS if p.is_file() for c in fenced_commands(p)]


def is_snakemake(argv: list[str]) -> bool:
    return bool(argv) and Path(argv[0]).name == "snakemake"


def test_docs_use_one_convention_for_the_virtual_environment():
    """Tools are called as .venv/bin/<tool> (installed by `make setup`), never bare."""
    bare = [(f, c) for f, c in all_commands()
            if words(c) and words(c)[0] in ("snakemake", "python", "python3", "icd-pipeline", "pip")]
    assert not bare, bare


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory):
    """Real folders for the placeholder paths the docs use."""
    tmp = tmp_path_factory.mktemp("doc_data")
    photos = make_plain_folder(tmp / "photos", n_images=40, classes=3)
    sample = Path(ROOT / SHARED_SAMPLE)
    if not sample.is_dir():  # the shared sample is not part of a clone: a small VOC-layout folder
        sample = make_voc_folder(tmp / "VOC2012", n_images=40, classes=3, masks=True)
    return {"/path/to/photos": str(photos), "/abs/path/photos": str(photos), "~/photos": str(photos),
            "~/new_photos": str(photos), SHARED_SAMPLE: str(sample)}


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """A cache folder as `make saliency-model` leaves it (the docs say to run it before the
    presets that use saliency); a dry run only checks that the file is there."""
    from icd_pipeline.models.saliency import KNOWN_MODELS

    cache = tmp_path_factory.mktemp("cache")
    (cache / "saliency").mkdir()
    for name in KNOWN_MODELS:
        (cache / "saliency" / f"{name}.onnx").write_bytes(b"")
    return cache


def dry_run(argv: list[str], placeholders: dict[str, str], workdir: Path, cache: Path) -> subprocess.CompletedProcess:
    args = []
    for a in argv[1:]:
        for key, value in placeholders.items():
            a = a.replace(key, value)
        args.append(a)
    cmd = [sys.executable, "-m", "snakemake", "-n", "--directory", str(workdir), *args]
    return subprocess.run(cmd, cwd=ROOT, env=dict(ENV, ICD_PIPELINE_CACHE=str(cache)), capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_every_snakemake_command_in_the_docs_dry_runs(placeholders, model_cache, tmp_path):
    commands = [(f, c) for f, c in all_commands() if is_snakemake(words(c))]
    assert len(commands) >= 8
    unique = list(dict.fromkeys(c for _, c in commands))
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda ic: dry_run(words(ic[1]), placeholders, tmp_path / f"w{ic[0]}", model_cache),
                              enumerate(unique)))
    failed = [(c, p.stdout[-1500:] + p.stderr[-1500:]) for c, p in zip(unique, procs) if p.returncode != 0]
    assert not failed, "\n\n".join(f"{c}\n{out}" for c, out in failed)


def test_every_tool_command_in_the_docs_answers_help():
    helped = set()
    for _, command in all_commands():
        argv = words(command)
        if not argv:
            continue
        tool = Path(argv[0]).name
        if tool == "icd-pipeline":
            sub = argv[1:3] if argv[1:2] == ["config"] else argv[1:2]
            call = (str(BIN / "icd-pipeline"), *sub, "--help")
        elif tool.startswith("python") and argv[1:2] == ["-m"]:
            call = (sys.executable, "-m", argv[2], "--help")
        elif tool.startswith("python") and len(argv) > 1 and argv[1].startswith("benchmarks/"):
            call = (sys.executable, argv[1], "--help")
        else:
            continue
        helped.add(call)
    assert len(helped) >= 4
    for call in sorted(helped):
        proc = subprocess.run(call, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "usage" in proc.stdout.lower(), (call, proc.stdout[-800:], proc.stderr[-800:])


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_configuration_reference_is_current():
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "make_config_reference.py"), "--check"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_links_between_the_docs_point_at_files():
    missing = []
    for path in DOCS:
        if not path.is_file():
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target:
                continue
            if not (path.parent / target).exists():
                missing.append((path.relative_to(ROOT).as_posix(), target))
    assert not missing, missing


def test_readme_results_come_from_the_benchmark():
    """One table per preset between the markers run_benchmark.py --readme rewrites; every row
    says its date, the command that produced it and the machine."""
    text = (ROOT / "README.md").read_text()
    for block in ("embedded", "voc2012-sample", "voc2012-sample-animals"):
        body = text.split(f"<!-- results:{block} -->", 1)[1].split(f"<!-- /results:{block} -->", 1)[0]
        rows = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| figure")]
        assert rows, f"README: the {block} results block is empty (run benchmarks/run_benchmark.py --readme)"
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert len(cells) == 5 and re.fullmatch(r"\d{4}-\d{2}-\d{2}", cells[2]), row
            assert "benchmarks/run_benchmark.py" in cells[3] and "CPU cores" in cells[4], row
