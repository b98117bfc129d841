"""DeepLab settings chosen on a part of the training split held apart (no val score).

    .venv/bin/python benchmarks/deeplab_holdout.py --data-root DIR --results results/<ds>/<exp> \
        [--configfile PRESET.yaml ...] [--split train] [--fraction 0.2] [--masks pseudo|full] \
        --key deeplab.epochs --values 12 16 20 [--work results/benchmark/holdout/<name>]

The split's image ids are permuted with a fixed generator (``--seed``) and a fraction of them
(``--fraction``, a fifth by default) is held apart. For each value of ``--key`` a DeepLab is
trained (``icd_pipeline.stages.train_deeplab``, the resolved config of the given config files with
that one key changed) on the other images, with the run's pseudo-masks
(``--masks pseudo``: ``<results>/pseudo_masks/masks/<deeplab.pseudo_masks>``, as the DAG's
"pseudo" target) or the ground truth (``--masks full``), and scored
(``icd_pipeline.stages.infer_deeplab``) on the held-apart images against their official masks. The
run's feature cache (its ``outputs.json`` names it: ``results/<dataset>/features/<key>/<split>.h5``) is used when ``deeplab.feature_cache``
is on. One row per value (mIoU on the held-apart images, training seconds) is printed and
written to ``<work>/holdout.csv``; a value already scored in ``<work>`` is not retrained.

The data the models see is a view of ``--data-root`` (``voc.split_view``: symbolic links) with
the split lists ``<split>_fit`` and ``<split>_held``; the dataset folder itself is not touched.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from icd_pipeline.config import resolve_workflow_config  # noqa: E402
from icd_pipeline.data.voc import VOCLayout, split_view  # noqa: E402


def split_ids(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(fit, held): a seeded permutation, its first ``fraction`` held apart; both sorted."""
    if not 0 < fraction < 1:
        raise ValueError(f"--fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_held = max(1, int(len(ids) * fraction))
    held = sorted(ids[i] for i in order[:n_held])
    fit = sorted(ids[i] for i in order[n_held:])
    return fit, held


def set_key(cfg: dict, dotted: str, value) -> dict:
    """A copy of ``cfg`` with ``dotted`` (e.g. ``deeplab.epochs``) set; the key must exist."""
    out = json.loads(json.dumps(cfg))
    node = out
    *parents, last = dotted.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            raise KeyError(f"--key {dotted}: no section {p!r} in the resolved config")
        node = node[p]
    if last not in node:
        raise KeyError(f"--key {dotted}: no key {last!r} in the resolved config")
    node[last] = value
    return out


def run_value(cfg: dict, value, args, view: Path, work: Path) -> dict:
    out = work / f"{args.key}={json.dumps(value)}".replace("/", "_").replace(" ", "")
    summary = out / "summary.json"
    seconds_file = out / "train_seconds.txt"
    if not summary.is_file():
        out.mkdir(parents=True, exist_ok=True)
        train_cmd = [sys.executable, "-m", "icd_pipeline.stages.train_deeplab", "--config-json",
                     json.dumps({k: cfg[k] for k in ("seed", "device", "deeplab")}), "--data-root", str(view),
                     "--split", f"{args.split}_fit", "--out-dir", str(out), "--no-progress"]
        if args.masks == "pseudo":
            train_cmd += ["--mask-dir", str(args.results / "pseudo_masks" / "masks" / cfg["deeplab"]["pseudo_masks"])]
        if cfg["deeplab"].get("feature_cache"):
            features = json.loads((args.results / "outputs.json").read_text())["features"]
            train_cmd += ["--feature-cache", str(args.results.parent / features / f"{args.split}.h5")]
        t0 = time.perf_counter()
        with open(out / "train.log", "w") as log:
            subprocess.run(train_cmd, check=True, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        seconds_file.write_text(f"{time.perf_counter() - t0:.1f}\n")
        infer_cfg = {k: cfg[k] for k in ("device", "deeplab", "pseudo_masks")}
        with open(out / "infer.log", "w") as log:
            subprocess.run([sys.executable, "-m", "icd_pipeline.stages.infer_deeplab", "--config-json", json.dumps(infer_cfg),
                            "--data-root", str(view), "--split", f"{args.split}_held", "--checkpoint",
                            str(out / "model.pt"), "--pred-dir", str(out / "pred"), "--out-csv",
                            str(out / "per_class.csv"), "--out-json", str(summary), "--no-progress"],
                           check=True, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    seconds = float(seconds_file.read_text()) if seconds_file.is_file() else float("nan")
    return {"key": args.key, "value": json.dumps(value), "masks": args.masks,
            "held_miou": json.loads(summary.read_text())["miou"], "train_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True, type=Path, help="dataset folder in VOC layout")
    ap.add_argument("--results", required=True, type=Path,
                    help="the run's results/<dataset>/<experiment> (pseudo_masks/, features/)")
    ap.add_argument("--configfile", nargs="*", default=[], help="config files over config.yaml (as snakemake's)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--fraction", type=float, default=0.2, help="share of the split held apart")
    ap.add_argument("--seed", type=int, default=0, help="seed of the permutation that picks the held images")
    ap.add_argument("--masks", choices=["pseudo", "full"], default="pseudo",
                    help="train on the run's pseudo-masks or on the ground truth")
    ap.add_argument("--key", required=True, help="dotted config key to vary, e.g. deeplab.epochs")
    ap.add_argument("--values", required=True, nargs="+", help="values (YAML: 12, null, [1.0, 1.5])")
    ap.add_argument("--work", type=Path, help="working folder; default results/benchmark/holdout/<results name>")
    args = ap.parse_args(argv)
    cfg, _ = resolve_workflow_config(args.configfile)
    layout = VOCLayout.open(args.data_root)
    fit, held = split_ids(layout.ids(args.split), args.fraction, args.seed)
    work = args.work or REPO / "results" / "benchmark" / "holdout" / "_".join(args.results.parts[-2:])
    view = split_view(args.data_root, work / "data", {f"{args.split}_fit": fit, f"{args.split}_held": held})
    print(f"{args.split}: {len(fit)} images to train on, {len(held)} held apart (seed {args.seed})", flush=True)
    rows = []
    for text in args.values:
        value = yaml.safe_load(text)
        row = run_value(set_key(cfg, args.key, value), value, args, view, work)
        print(f"{args.key}={row['value']}: held-apart mIoU {row['held_miou']:.4f}, "
              f"training {row['train_seconds']:.0f} s", flush=True)
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(work / "holdout.csv", index=False)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
