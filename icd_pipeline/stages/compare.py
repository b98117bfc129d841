"""Experiments side by side: the ablation table of one dataset.

Entry point::

    python -m icd_pipeline.stages.compare --results results/<dataset> --out-dir results/<dataset>/compare

Every experiment folder ``results/<dataset>/<experiment>/`` holding ``resolved_config.yaml`` and
``outputs.json`` (written by the workflow, ``stages.resolved_config``) is a row, read through
``summary.load_run``: its pseudo-mask mIoU per method and its DeepLab val mIoU, pseudo-masks and
full supervision (the shared model its ``outputs.json`` names), blank where not computed (yet,
or at all: no masks). The config keys whose values differ between the experiments become columns, so the
table says what each experiment changed. Writes ``compare.csv``, ``compare.md`` and
``compare.png`` (grouped bars: one group per metric, one bar per experiment).

Pseudo-mask mIoU is the default protocol (pixels predicted 255 count as background,
``eval_pseudo_masks``); DeepLab mIoU is on the evaluation split.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
import yaml

from ..config import BASE_KEY
from ..misc.commands import command_name
from ..misc.io import atomic_path
from ..summary import OUTPUTS, load_run, to_markdown
from ..viz import pyplot, save_png

RESOLVED = "resolved_config.yaml"
MISSING = "(unset)"


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{dotted path: leaf} of a nested mapping (lists and empty mappings are leaves)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def find_experiments(results: Path) -> list[Path]:
    """Experiment folders of one dataset: a resolved config and outputs.json."""
    return sorted(d for d in results.iterdir()
                  if d.is_dir() and (d / RESOLVED).is_file() and (d / OUTPUTS).is_file())


def differing_keys(configs: dict[str, dict]) -> list[str]:
    """Leaves whose value is not the same in every experiment (``experiment`` itself aside)."""
    flat = {name: flatten(cfg) for name, cfg in configs.items()}
    keys = sorted({k for f in flat.values() for k in f} - {"experiment"})
    return [k for k in keys if len({json.dumps(f.get(k, MISSING), sort_keys=True) for f in flat.values()}) > 1]


def _cell(value) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def compare_table(results: str | Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(table, config columns, metric columns): one row per finished experiment."""
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"{results}: no such results folder")
    exps = find_experiments(results)
    if not exps:
        raise FileNotFoundError(f"{results}: no experiment (<experiment>/{RESOLVED} and <experiment>/{OUTPUTS})")
    configs = {}
    for d in exps:
        cfg = yaml.safe_load((d / RESOLVED).read_text()) or {}
        cfg.pop(BASE_KEY, None)
        configs[d.name] = cfg
    keys = differing_keys(configs)
    rows, metrics = [], []
    for d in exps:
        flat = flatten(configs[d.name])
        row: dict[str, object] = {"experiment": d.name}
        row.update({k: _cell(flat.get(k, MISSING)) for k in keys})
        run = load_run(d)
        if run.pseudo_table is not None:
            for method, miou in zip(run.pseudo_table["method"], run.pseudo_table["miou"]):
                name = f"pseudo-mask mIoU {method}"
                row[name] = float(miou)
                if name not in metrics:
                    metrics.append(name)
        for target in ("pseudo", "full"):
            miou = run.deeplab.get(target, {}).get("miou")
            row[f"DeepLab mIoU ({target})"] = math.nan if miou is None else float(miou)
        rows.append(row)
    metrics += ["DeepLab mIoU (pseudo)", "DeepLab mIoU (full)"]
    df = pd.DataFrame(rows, columns=["experiment", *keys, *metrics])
    return df, keys, metrics


def bar_chart(df: pd.DataFrame, metrics: list[str], out: Path, title: str) -> None:
    import numpy as np

    plt = pyplot()

    n = len(df)
    width = 0.8 / max(n, 1)
    x = np.arange(len(metrics))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(metrics) + 1.5), 4.0))
    for i in range(n):
        values = [df.iloc[i][m] for m in metrics]
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(np.asarray(values, dtype=float)), width,
               label=str(df.iloc[i]["experiment"]))
    ax.set_xticks(x)
    ax.set_xticklabels([m.replace("pseudo-mask mIoU ", "").replace("DeepLab mIoU ", "DeepLab ") for m in metrics],
                       rotation=30, ha="right")
    ax.set_ylabel("mIoU")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize="small")
    save_png(fig, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.compare"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True, help="results/<dataset>: one folder per experiment")
    parser.add_argument("--out-dir", required=True, help="compare.csv, compare.md, compare.png go here")
    args = parser.parse_args(argv)
    try:
        df, keys, metrics = compare_table(args.results)
    except (OSError, ValueError, KeyError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out_dir)
    with atomic_path(out / "compare.csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    dataset = Path(args.results).name
    note = (f"Config keys that differ between the experiments: {', '.join(keys)}." if keys
            else "The experiments' resolved configs do not differ.")
    blank_nan = df.astype(object).where(df.notna(), "")
    md = [f"# Experiments of {dataset}", "", note,
          "Pseudo-mask mIoU on the training split (255 counted as background); DeepLab mIoU on the "
          "evaluation split (blank: not trained yet).", "", to_markdown(blank_nan, "{:.4f}"), ""]
    with atomic_path(out / "compare.md") as tmp:
        tmp.write_text("\n".join(md))
    bar_chart(df, metrics, out / "compare.png", f"{dataset}: experiments side by side")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
