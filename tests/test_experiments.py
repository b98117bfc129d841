"""Experiments side by side (compare) and progress lines that read well in a log file."""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest

from icd_pipeline.stages import compare
from icd_pipeline.config import format_resolved, resolve_layers
from icd_pipeline.misc.progress import LineProgress, progress
from icd_pipeline.summary import OUTPUTS

METHODS = ["CAM", "CAM+CRF", "ICD", "ICD+CRF"]


def _experiment(results, name, overrides, mious, deeplab=None):
    """A finished experiment folder as the workflow leaves it: its own pseudo-masks and pseudo
    DeepLab, the fully supervised DeepLab in a shared folder named in its outputs.json."""
    d = results / name
    (d / "pseudo_masks").mkdir(parents=True)
    config, origins = resolve_layers([("test", {"experiment": name, **overrides})])
    (d / compare.RESOLVED).write_text(format_resolved(config, origins))
    full = f"deeplab_full/key-{name}"
    (d / OUTPUTS).write_text(json.dumps({"dataset": results.name, "experiment": name, "deeplab_full": full}))
    pd.DataFrame({"method": METHODS, "miou": mious, "miou_authors": mious}).to_csv(
        d / "pseudo_masks" / "table.csv", index=False)
    for target, miou in (deeplab or {}).items():
        folder = results / full if target == "full" else d / "deeplab" / target
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"miou": miou}))


def test_compare_table_diffs_configs_and_lists_every_finished_experiment(tmp_path):
    results = tmp_path / "results" / "embedded"
    _experiment(results, "default", {"seeds": {"icd_bg_threshold": 0.6}}, [0.3, 0.31, 0.4, 0.5],
                {"pseudo": 0.6, "full": 0.75})
    _experiment(results, "authors_bg", {}, [0.3, 0.31, 0.35, 0.45], {"pseudo": 0.4})
    (results / "data").mkdir()          # shared folders and unfinished experiments are no rows
    (results / "running" / "icd").mkdir(parents=True)
    out = tmp_path / "cmp"
    assert compare.main(["--results", str(results), "--out-dir", str(out)]) == 0
    df = pd.read_csv(out / "compare.csv")
    assert list(df.experiment) == ["authors_bg", "default"]
    # the one key that differs is a column; keys that agree are not
    assert [c for c in df.columns if "." in c] == ["seeds.icd_bg_threshold"]
    assert df["seeds.icd_bg_threshold"].tolist() == [1e-05, 0.6]
    row = df.set_index("experiment").loc["default"]
    assert row["pseudo-mask mIoU ICD+CRF"] == 0.5 and row["DeepLab mIoU (pseudo)"] == 0.6
    assert math.isnan(df.set_index("experiment").loc["authors_bg", "DeepLab mIoU (full)"])
    md = (out / "compare.md").read_text()
    assert "seeds.icd_bg_threshold" in md and "| default |" in md
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_without_finished_experiments_fails_clearly(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert compare.main(["--results", str(tmp_path), "--out-dir", str(tmp_path / "cmp")]) == 1
    assert "no experiment" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_progress_in_a_file_writes_lines_with_rate_and_eta():
    log = io.StringIO()
    bar = progress(range(95), file=log, desc="extract maps", unit="img")
    assert isinstance(bar, LineProgress)
    for _ in bar:
        pass
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 10  # every 10 %, and the end
    assert lines[-1].startswith("extract maps: 100%") and "95/95" in lines[-1]
    assert "img/s" in lines[0] and "<" in lines[0]  # rate and ETA (elapsed<remaining)


def test_progress_closes_with_the_last_line_and_unknown_totals(monkeypatch):
    log = io.StringIO()
    bar = progress(total=200, file=log, desc="epoch 1/2", leave=False)
    for i in range(50):  # a loop that stops early (leave=False: tqdm would erase it)
        bar.update(1)
        bar.set_postfix(loss=1.0)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and "50/200" in lines[-1] and "loss=1" in lines[-1]
    log = io.StringIO()
    with progress(file=log, desc="files", every_seconds=0) as bar:
        bar.update(3)
    assert "files: 3" in log.getvalue()
    assert progress(range(3), file=log, disable=True) is not None


def test_progress_on_a_terminal_is_a_plain_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    bar = progress(range(3), file=Tty())
    assert not isinstance(bar, LineProgress)
    assert list(bar) == [0, 1, 2]


@pytest.mark.parametrize("module", ["stages/superpixels", "stages/feature_cache", "stages/extract_maps",
                                    "stages/train_icd", "stages/train_deeplab", "stages/infer_deeplab",
                                    "stages/make_pseudo_masks", "stages/eval_pseudo_masks", "evaluate",
                                    "data/synthetic", "data/prepare", "data/download"])
def test_stages_use_the_progress_helper(module):
    from pathlib import Path

    src = (Path(compare.__file__).parents[1] / f"{module}.py").read_text()
    assert "progress as progress_bar" in src and "tqdm(" not in src
