#!/usr/bin/env python
"""Quality, speed and cost of the pipeline, measured side by side, in one command.

    .venv/bin/python benchmarks/run_benchmark.py                  # embedded dataset, seeds 0 1 2
    .venv/bin/python benchmarks/run_benchmark.py --seeds 0        # one seed (faster)
    .venv/bin/python benchmarks/run_benchmark.py --preset sample --sample-root ../shared/data/voc2012-sample/VOC2012
    .venv/bin/python benchmarks/run_benchmark.py --preset sample --sample-lists animals --sample-root ...
    ... --quality-only    # quality rows and stage times only (no extraction/CRF/memory runs)

For every seed it runs the whole DAG (``snakemake all``, plus DeepLab on the ICD+saliency seeds
when the dataset ships saliency maps) under ``results/<dataset>[-seedN]/<experiment>/`` (the
config's experiment, ``default`` unless set; the data is shared under ``results/<dataset>[-seedN]/``;
finished runs are reused), then measures on the first seed's run:

- quality: pseudo-mask mIoU on train (CAM, CAM+CRF, ICD, ICD+CRF[, ICD+saliency]), DeepLab val
  mIoU on ICD pseudo-masks and with full supervision, their ratio (mean and spread over seeds);
- speed: wall time per stage (Snakemake ``benchmark:`` files), training images/s, extraction
  images/s against the bare forward of the same model on the same images, CRF images/s with
  1 and 2 workers, ``snakemake -n all`` time on the finished run;
- cost: HDF5 bytes per image against float32 .npy per image, peak resident memory per stage,
  and of extraction and CRF at 1x and 4x the number of images.

Writes ``results/benchmark/<dataset>.csv`` (metric, value, spread, unit) and ``<dataset>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icd_pipeline.config import load_config  # noqa: E402
from icd_pipeline.data.voc import split_view  # noqa: E402
from icd_pipeline.summary import MASK_NAMES, load_run, to_markdown  # noqa: E402

PY = sys.executable
SPLITS: dict[str, str] = {}  # dataset split overrides (--sample-lists animals)
ENV = dict(os.environ, PATH=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=ENV, check=True, **kw)


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS in MB of that process)."""
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env or ENV, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024.0


def snakemake_args(name: str, seed: int, *args: str) -> list[str]:
    """snakemake ARGS (targets, flags) with the preset's config file, and the seed and dataset
    name of one run (last: --config and --configfile take every value that follows them)."""
    dataset = f"name: {name}" + (f", root: {SAMPLE_ROOT}" if SAMPLE_ROOT else "")
    dataset += "".join(f", {k}: {v}" for k, v in SPLITS.items())
    return [PY, "-m", "snakemake", *args, "--cores", str(ARGS.cores), *PRESET_ARGS,
            "--config", f"seed={seed}", f"dataset={{{dataset}}}"]


def results_dir(name: str) -> Path:
    """One run's experiment folder (the dataset stage's outputs are one level up)."""
    return ROOT / "results" / name / EXPERIMENT


def run_dag(name: str, seed: int, saliency: bool) -> float | None:
    """Run (or reuse) the DAG for one seed; return the wall time if it did work now."""
    res = results_dir(name)
    targets = ["all"] + ([f"results/{name}/{EXPERIMENT}/deeplab/saliency/summary.json"] if saliency else [])
    dry = subprocess.run(snakemake_args(name, seed, "-n", *targets), cwd=ROOT, env=ENV,
                         capture_output=True, text=True)
    if dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr:
        return None
    t0 = time.perf_counter()
    sh(snakemake_args(name, seed, *targets))
    wall = time.perf_counter() - t0
    (res / "benchmark_wall.json").write_text(json.dumps({"seconds": wall}))
    return wall


def quality(name: str, saliency: bool) -> dict[str, float]:
    """The quality rows of one run, read through its outputs.json (summary.load_run)."""
    run = load_run(results_dir(name))
    q = {}
    if run.pseudo_table is not None:
        table = run.pseudo_table.set_index("method")
        q.update({f"pseudo-mask mIoU {m}": float(table.loc[m, "miou"]) for m in table.index})
        q.update({f"pseudo-mask mIoU {m} (255 left out)": float(table.loc[m, "miou_authors"]) for m in table.index})
    pseudo, full = run.deeplab["pseudo"]["miou"], run.deeplab["full"]["miou"]
    # named after the masks it trained on (ICD+CRF, or image+saliency with seeds.background saliency)
    q[f"DeepLab val mIoU on {MASK_NAMES.get(run.deeplab_masks, run.deeplab_masks)}"] = pseudo
    q["DeepLab val mIoU, full supervision"] = full
    q["DeepLab pseudo / full"] = pseudo / full
    # what a researcher checks first: the classifier, and every class of every row
    if run.classifier is not None:
        q["classifier mAP (eval split)"] = run.classifier["map"]
    if run.pseudo_per_class is not None:
        per_class = run.pseudo_per_class.dropna(subset=["iou"])
        q.update({f"pseudo-mask IoU {r.method} {r['class']}": float(r.iou) for _, r in per_class.iterrows()})
    for target, df in run.deeplab_per_class.items():
        dl = df.dropna(subset=["iou"])
        q.update({f"DeepLab {target} IoU {r['class']}": float(r.iou) for _, r in dl.iterrows()})
    if saliency:
        sal = json.loads((results_dir(name) / "deeplab" / "saliency" / "summary.json").read_text())["miou"]
        q["DeepLab val mIoU on ICD+saliency seeds"] = sal
        q["DeepLab saliency / full"] = sal / full
    return q


def shared(name: str, key: str) -> Path:
    """A shared output folder of one run (outputs.json: icd, maps, features, ...)."""
    res = results_dir(name)
    return res.parent / json.loads((res / "outputs.json").read_text())[key]


def subset_root(data_root: Path, work: Path, ids: list[str], n1: int) -> Path:
    """A VOC-layout view of ``data_root`` (symlinks) with split lists bench1x / bench4x."""
    return split_view(data_root, work / "data", {"bench1x": ids[:n1], "bench4x": ids[:4 * n1]})


def metric_adder(rows: list[dict]):
    """add(metric, value, unit="") appends one single-run row (no spread) to ``rows``."""
    def add(metric: str, value, unit: str = "") -> None:
        rows.append({"metric": metric, "value": float(value), "spread": float("nan"), "unit": unit})
    return add


def stage_times(name: str) -> list[dict]:
    """Wall time and peak memory of every stage (Snakemake ``benchmark:`` files), their sum,
    the measured ``snakemake all`` wall time when this run did the work, training images/s."""
    res = results_dir(name)
    rows: list[dict] = []
    add = metric_adder(rows)

    bench = load_run(res).stage_times
    for r in bench.itertuples():
        add(f"wall time: {r.stage}", r.seconds, "s")
    add("wall time: all stages (sum)", bench.seconds.sum(), "s")
    wall = res / "benchmark_wall.json"
    if wall.is_file():
        # a rerun after an edit measures only the stages it reran; the sum above is the whole DAG
        # (an upper bound on its wall time: the two DeepLab trainings run side by side)
        add("wall time: last snakemake all that did work (measured)", json.loads(wall.read_text())["seconds"], "s")
    for r in bench.itertuples():
        add(f"peak RSS: {r.stage}", r.max_rss_mb, "MB")
    for stage, folder in (("ICD", shared(name, "icd")), ("DeepLab (pseudo)", res / "deeplab" / "pseudo")):
        m = pd.read_csv(folder / "metrics.csv")
        add(f"training images/s: {stage}", m["images_per_s"].mean(), "img/s")
    return rows


def speed_and_cost(cfg: dict, name: str, data_root: Path) -> list[dict]:
    from icd_pipeline.stages import make_pseudo_masks
    from icd_pipeline.data.voc import VOCLayout
    from icd_pipeline.maps_io import MapsReader

    rows = stage_times(name)
    add = metric_adder(rows)

    split = cfg["dataset"]["train_split"]
    work = ROOT / "results" / "benchmark" / "work" / name
    work.mkdir(parents=True, exist_ok=True)
    stage_json = json.dumps({"device": cfg["device"], "maps": cfg["maps"]})

    # extraction vs bare forward of the same model on the same images
    out = subprocess.run([PY, "-m", "icd_pipeline.stages.extract_maps", "--config-json", stage_json,
                          "--data-root", str(data_root), "--split", split, "--checkpoint",
                          str(shared(name, "icd") / "model.pt"), "--out", str(work / "maps.h5"),
                          "--benchmark-forward", "--benchmark-batches", "1000", "--no-progress"],
                         cwd=ROOT, env=ENV, check=True, capture_output=True, text=True)
    ext = json.loads(out.stdout.strip().splitlines()[-1])
    add("extraction images/s", ext["extract_images_per_s"], "img/s")
    add("bare forward images/s", ext["forward_images_per_s"], "img/s")
    add("extraction / bare forward", ext["extract_images_per_s"] / ext["forward_images_per_s"])

    # CRF (the whole pseudo-mask stage) with 1 and 2 workers
    layout = VOCLayout.open(data_root)
    ids = layout.ids(split)
    n1 = max(1, len(ids) // 4)
    view = subset_root(data_root, work, ids, n1)
    maps = shared(name, "maps") / f"{split}.h5"
    rates = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            t0 = time.perf_counter()
            make_pseudo_masks.run(view, "bench1x", maps, Path(tmp) / "masks", cfg["pseudo_masks"],
                                  workers=workers, progress=False, seeds_cfg=cfg["seeds"])
            rates[workers] = n1 / (time.perf_counter() - t0)
        add(f"pseudo-masks (seeds + CRF) images/s, {workers} worker(s)", rates[workers], "img/s")
    add("CRF scaling 2 workers / 1 worker", rates[2] / rates[1])

    # dry run on the finished run
    t0 = time.perf_counter()
    subprocess.run(snakemake_args(name, cfg["seed"], "-n", "all"), cwd=ROOT, env=ENV,
                   check=True, capture_output=True)
    add("snakemake -n all on the finished run", time.perf_counter() - t0, "s")

    # HDF5 against float32 .npy
    with MapsReader(maps) as reader:
        n = len(reader.ids)
        npy = sum(128 + 4 * 2 * int(np.prod(reader.read(i)["cam"].shape)) for i in reader.ids)
    add("maps HDF5 bytes per image", maps.stat().st_size / n, "B")
    add("maps float32 .npy bytes per image", npy / n, "B")
    add("HDF5 / npy", maps.stat().st_size / npy)

    # memory at 1x and 4x the images (extraction; pseudo-masks with one worker process)
    for tag in ("bench1x", "bench4x"):
        count = len((view / "ImageSets" / "Segmentation" / f"{tag}.txt").read_text().split())
        _, rss = run_measured([PY, "-m", "icd_pipeline.stages.extract_maps", "--config-json", stage_json,
                               "--data-root", str(view), "--split", tag, "--checkpoint",
                               str(shared(name, "icd") / "model.pt"), "--out", str(work / f"{tag}.h5"), "--no-progress"])
        add(f"peak RSS extraction, {count} images", rss, "MB")
        _, rss = run_measured([PY, "-m", "icd_pipeline.stages.make_pseudo_masks", "--config-json",
                               json.dumps({"pseudo_masks": cfg["pseudo_masks"], "seeds": cfg["seeds"]}),
                               "--data-root", str(view), "--split", tag, "--maps", str(work / f"{tag}.h5"),
                               "--out-dir", str(work / f"{tag}_masks"), "--workers", "1"])
        add(f"peak RSS pseudo-masks, {count} images", rss, "MB")
    shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> int:
    global ARGS, PRESET_ARGS, SAMPLE_ROOT, EXPERIMENT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--preset", choices=["embedded", "sample"], default="embedded")
    parser.add_argument("--sample-root", default=None, help="VOC2012 folder of the real sample (preset sample)")
    parser.add_argument("--sample-lists", choices=["all", "animals"], default="all",
                        help="preset sample: train/val (20 classes) or train_animals/val_animals")
    parser.add_argument("--readme", action="store_true",
                        help="also write the headline rows into README.md's results:<dataset> block")
    parser.add_argument("--readme-only", action="store_true",
                        help="run nothing: rewrite README.md's block from the saved results/benchmark/<dataset>.csv "
                             "(with the date, command and machine of the run that measured it)")
    parser.add_argument("--quality-only", action="store_true",
                        help="quality rows, stage times and the DAG's wall time only: skip the extraction, "
                             "CRF and memory measurements (about 25 min more on the real sample)")
    ARGS = parser.parse_args()
    PRESET_ARGS, SAMPLE_ROOT = [], None
    files = [ROOT / "config.yaml"]
    if ARGS.preset == "sample":
        if not ARGS.sample_root:
            parser.error("--preset sample needs --sample-root")
        preset = ROOT / "workflow" / "presets" / "voc2012_sample.yaml"
        PRESET_ARGS = ["--configfile", str(preset)]
        SAMPLE_ROOT = str(Path(ARGS.sample_root).resolve())
        files.append(preset)
    cfg = load_config(files)
    if SAMPLE_ROOT:
        cfg["dataset"]["root"] = SAMPLE_ROOT
        # the preset names results after the folder (VOC2012); the benchmark's stay under the sample's name
        cfg["dataset"]["name"] = "voc2012-sample"
        if ARGS.sample_lists == "animals":
            SPLITS.update(train_split="train_animals", eval_split="val_animals")
            cfg["dataset"].update(SPLITS)
            cfg["dataset"]["name"] += "-animals"
    base = cfg["dataset"]["name"]
    EXPERIMENT = cfg["experiment"]
    names = {s: base if s == cfg["seed"] else f"{base}-seed{s}" for s in ARGS.seeds}
    saliency = cfg["dataset"]["source"] == "synthetic" and cfg["dataset"]["synthetic"]["saliency"]["enabled"]

    out = ROOT / "results" / "benchmark"
    if ARGS.readme_only:
        return readme_from_saved(out, base, parser)

    qualities = []
    for seed, name in names.items():
        run_dag(name, seed, saliency)
        qualities.append(quality(name, saliency))

    q = pd.DataFrame(qualities)
    rows = [{"metric": m, "value": q[m].mean(), "spread": q[m].std(ddof=0) if len(q) > 1 else float("nan"),
             "unit": f"mean (spread: std) over seeds {ARGS.seeds}" if len(q) > 1 else ""} for m in q.columns]
    first = names[ARGS.seeds[0]]
    root = Path(SAMPLE_ROOT) if SAMPLE_ROOT else ROOT / "results" / first / "data"
    cfg["seed"] = ARGS.seeds[0]
    if ARGS.quality_only:
        rows += stage_times(first)
    else:
        rows += speed_and_cost(cfg, first, root)
    df = pd.DataFrame(rows, columns=["metric", "value", "spread", "unit"])
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{base}.csv", index=False, float_format="%.6g")
    machine = machine_text()
    command = " ".join([".venv/bin/python benchmarks/run_benchmark.py", *sys.argv[1:]])
    date = time.strftime("%Y-%m-%d")
    md = (f"# icd-pipeline benchmark: {base}\n\nMachine: {machine}. Date: {date}. Command: `{command}`.\n\n"
          + to_markdown(df.fillna(""), "{:.4g}") + "\n")
    (out / f"{base}.md").write_text(md)
    print(md)
    if ARGS.readme:
        update_readme(base, readme_block(base, df, command, machine, date, ARGS.seeds))
    return 0


def readme_block(base: str, df: pd.DataFrame, command: str, machine: str, date: str, seeds: list[int]) -> str:
    title = f"**{base}** ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}: {', '.join(map(str, seeds))})"
    return f"{title}\n\n{readme_table(df, command, machine, date)}\n"


def readme_from_saved(out: Path, base: str, parser: argparse.ArgumentParser) -> int:
    """--readme-only: the README block from results/benchmark/<base>.csv and the machine, date
    and command its .md records (the run that measured them); nothing is run."""
    import re

    csv, md = out / f"{base}.csv", out / f"{base}.md"
    if not csv.is_file() or not md.is_file():
        raise SystemExit(f"--readme-only: {csv} / {md} not found: run the benchmark first")
    found = re.search(r"^Machine: (.*)\. Date: (\S+)\. Command: `(.*)`\.$", md.read_text(), re.M)
    if not found:
        raise SystemExit(f"--readme-only: {md} has no 'Machine: ... Date: ... Command: ...' line")
    machine, date, command = found.groups()
    # the seeds of the recorded command, read by this script's own parser (its defaults included)
    seeds = parser.parse_known_args(shlex.split(command)[2:])[0].seeds
    update_readme(base, readme_block(base, pd.read_csv(csv), command, machine, date, seeds))
    print(f"README.md: results:{base} block rewritten from {csv}")
    return 0


HEADLINE = ("pseudo-mask mIoU ", "DeepLab val mIoU", "DeepLab pseudo / full", "classifier mAP",
            "wall time: last snakemake all that did work (measured)")


def machine_text() -> str:
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = f"GPU {_cuda()}" if _cuda() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {mem:.0f} GiB, {gpu}, torch {torch.__version__}"


def readme_table(df: pd.DataFrame, command: str, machine: str, date: str) -> str:
    """The README's table of one benchmark: the headline rows (pseudo-mask and DeepLab mIoU,
    their ratio, the classifier, the DAG's wall time), each with its date, command and machine."""
    # per-class rows ("... IoU cat") left out; "mIoU" rows kept
    keep = df[df.metric.str.startswith(HEADLINE) & ~df.metric.str.contains(r"\(255 left out\)|(?<!m)IoU ")]
    lines = ["| figure | value | date | command | machine |", "|---|---|---|---|---|"]
    for r in keep.itertuples():
        value = f"{r.value:.4g}" + (f" ± {r.spread:.2g}" if r.spread == r.spread else "")
        value += " s" if r.unit == "s" else ""
        lines.append(f"| {r.metric} | {value} | {date} | `{command}` | {machine} |")
    return "\n".join(lines)


def update_readme(block: str, text: str, readme: Path = ROOT / "README.md") -> None:
    """Replace what lies between ``<!-- results:BLOCK -->`` and ``<!-- /results:BLOCK -->``."""
    start, end = f"<!-- results:{block} -->", f"<!-- /results:{block} -->"
    content = readme.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{readme}: no {start} ... {end} block to write the results into")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def _cuda() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""


if __name__ == "__main__":
    sys.exit(main())
