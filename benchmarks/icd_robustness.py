#!/usr/bin/env python
"""ICD against CAM per class and per seed on the real sample (issue 33): runs and diagnosis.

    # the chain to the pseudo-masks for each list and seed, reusing the train split's
    # superpixels and frozen-feature cache (train_animals is a subset of train's images):
    python benchmarks/icd_robustness.py run --exp NAME --lists train train_animals --seeds 0 1 2 \
        --superpixels results/voc2012-sample/superpixels/<key>/train.h5 \
        --features results/voc2012-sample/base_s0/features/train.h5 [--set '{"icd": {...}}'] [--no-crf] \
        [--reuse OTHER]   # seed settings only: link OTHER's ICD model and maps instead of training
    # figures: mIoU rows and per-class IoU, mean and spread over the seeds, with the diagnosis
    python benchmarks/icd_robustness.py report --exp NAME [NAME ...] --lists train train_animals \
        --seeds 0 1 2 [--out results/icd33/NAME.md]

Each (list, seed) runs exactly the workflow's stage entry points (``train_icd``, ``extract_maps``,
``make_pseudo_masks``, ``eval_pseudo_masks``) with ``config.yaml`` + ``workflow/presets/
voc2012_sample.yaml`` + ``--set`` (JSON, merged key by key) and writes the same files as
``snakemake pseudo_masks ... experiment=<NAME>-<list>-s<seed>`` under
``results/voc2012-sample/<NAME>-<list>-s<seed>/``; a run whose ``pseudo_masks/table.csv`` exists
is skipped. A `train` run is also scored on the `train_animals` ids (``table_animals.csv``,
``per_class_animals.csv``): the issue's "same images, scored from the all-class run" row. Every
train image of the sample shows one of the five animals, so "train_animals plus the non-animal
images" is `train` itself.

``--no-crf`` stops after the maps and scores the seeds without CRF only (``quick.csv``; the
cheap figure for iterating). The report reads ``icd/diagnostics.csv`` (agreement of the direction
with the CAM etc., ``icd_pipeline.diagnostics``) and the maps (agreement of the top-down map with
the CAM, foreground shares) next to the ground-truth IoU, which only the report uses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = "/work/shared/data/voc2012-sample/VOC2012"
PRESET = ["config.yaml", "workflow/presets/voc2012_sample.yaml"]
RES = ROOT / "results" / "voc2012-sample"
ANIMALS = ("cat", "cow", "dog", "horse", "sheep")


def run_dir(exp: str, split: str, seed: int) -> Path:
    return RES / f"{exp}-{split}-s{seed}"


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def stage(args: list[str], log: Path) -> None:
    cmd = [sys.executable, "-m", *args]
    t0 = time.time()
    with open(log, "w") as fh:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                             env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    print(f"  {args[0]}: {time.time() - t0:.0f} s (rc {rc}, log {log})", flush=True)
    if rc != 0:
        raise SystemExit(f"{args[0]} failed, see {log}")


def chain(exp: str, split: str, seed: int, data_root: str, superpixels: str, features: str, overrides: dict,
          crf: bool = True, reuse: str | None = None) -> Path:
    out = run_dir(exp, split, seed)
    if reuse:  # a seed setting only: the other experiment's model and maps, linked
        src = run_dir(reuse, split, seed)
        if not (src / "maps" / f"{split}.h5").is_file():
            raise SystemExit(f"--reuse {reuse}: {src / 'maps' / f'{split}.h5'} is missing: run that experiment first")
        out.mkdir(parents=True, exist_ok=True)
        for part in ("icd", "maps"):
            if not (out / part).exists():
                (out / part).symlink_to(src / part, target_is_directory=True)
    if (out / "pseudo_masks" / "table.csv").is_file() or (not crf and (out / "maps" / f"{split}.h5").is_file()):
        print(f"{out.name}: done already", flush=True)
        return out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    cfg_json = json.dumps(deep_merge({"seed": seed, "dataset": {"root": data_root, "train_split": split}},
                                     overrides))
    cfg = [a for f in PRESET for a in ("--config", f)] + ["--config-json", cfg_json]
    (out / "overrides.json").write_text(cfg_json + "\n")
    print(f"{out.name}:", flush=True)
    if not (out / "icd" / "model.pt").is_file():
        stage(["icd_pipeline.stages.train_icd", *cfg, "--data-root", data_root, "--split", split, "--superpixels",
               superpixels, "--feature-cache", features, "--out-dir", str(out / "icd")], out / "logs" / "train_icd.log")
    maps = out / "maps" / f"{split}.h5"
    if not maps.is_file():
        stage(["icd_pipeline.stages.extract_maps", *cfg, "--data-root", data_root, "--split", split, "--checkpoint",
               str(out / "icd" / "model.pt"), "--feature-cache", features, "--out", str(maps), "--no-progress"],
              out / "logs" / "extract_maps.log")
    if not crf:
        return out
    masks = out / "pseudo_masks" / "masks"
    if not masks.is_dir():
        stage(["icd_pipeline.stages.make_pseudo_masks", *cfg, "--data-root", data_root, "--split", split, "--maps", str(maps),
               "--out-dir", str(masks), "--workers", "2"], out / "logs" / "make_pseudo_masks.log")
    if split == "train":
        stage(["icd_pipeline.stages.eval_pseudo_masks", "--data-root", data_root, "--split", "train_animals", "--masks-dir",
               str(masks), "--out-table", str(out / "pseudo_masks" / "table_animals.csv"), "--out-per-class",
               str(out / "pseudo_masks" / "per_class_animals.csv"), "--no-progress"], out / "logs" / "eval_animals.log")
    stage(["icd_pipeline.stages.eval_pseudo_masks", "--data-root", data_root, "--split", split, "--masks-dir", str(masks),
           "--out-table", str(out / "pseudo_masks" / "table.csv"), "--out-per-class",
           str(out / "pseudo_masks" / "per_class.csv"), "--no-progress"], out / "logs" / "eval.log")
    return out


# --------------------------------------------------------------------------- quick figures


_Q: dict = {}


def _quick_init(maps_path, data_root, cfg, fallback):
    from icd_pipeline.data.voc import VOCLayout
    from icd_pipeline.maps_io import MapsReader

    _Q.update(reader=MapsReader(maps_path), layout=VOCLayout.open(data_root), cfg=cfg, fallback=fallback)


def _quick_image(args):
    """Confusion matrices of one image: CAM and ICD seeds, and with ``crf`` their CRF too."""
    from icd_pipeline.data.voc import read_image, read_mask
    from icd_pipeline.evaluate import confusion_matrix
    from icd_pipeline.stages.make_pseudo_masks import cell_size, icd_seed_for, image_gate_for, image_maps, refine
    from icd_pipeline.seeds import cam_seed

    image_id, crf = args
    reader, layout, cfg = _Q["reader"], _Q["layout"], _Q["cfg"]
    rec = reader.read(image_id)
    cam, td = image_maps(rec, reader.attrs)
    ids = [int(c) for c in rec["class_ids"]]
    pm, sd = cfg["pseudo_masks"], cfg["seeds"]
    seeds = {"CAM": cam_seed(cam, ids, pm["cam_bg_threshold"]),
             "ICD": icd_seed_for(td, cam, ids, pm, sd, [c for c in ids if c in _Q["fallback"]],
                                 image_gate_for(rec, sd, pm, cell_size(rec, reader.attrs)))}
    if crf:
        image = read_image(layout.image_path(image_id))
        for m in ("CAM", "ICD"):
            seeds[m + "+CRF"] = refine(image, seeds[m], ids, layout.num_classes, pm)
    gt = read_mask(layout.mask_path(image_id), layout.num_classes)
    return {m: confusion_matrix(gt, s, layout.num_classes)[0] for m, s in seeds.items()}


def quick(out: Path, data_root: str, split: str, cfg_json: str, crf_every: int = 0, tag: str = "quick",
          score_split: str | None = None) -> pd.DataFrame:
    """CAM and ICD seed IoU (255 counted as background) from the run's maps over ``score_split``
    (default: the run's list), and with ``crf_every`` k > 0 CAM+CRF / ICD+CRF on every k-th image
    (the cheap figures for iterating; the seed settings come from ``cfg_json``)."""
    import multiprocessing as mp

    from icd_pipeline.config import load_config
    from icd_pipeline.data.voc import VOCLayout
    from icd_pipeline.evaluate import scores
    from icd_pipeline.maps_io import MapsReader
    from icd_pipeline.seeds import cam_fallback_classes

    cfg = load_config([ROOT / f for f in PRESET], cfg_json)
    layout = VOCLayout.open(data_root)
    maps_path = out / "maps" / f"{split}.h5"
    with MapsReader(maps_path) as reader:
        fallback = cam_fallback_classes(reader.attrs.get("class_agreement"), cfg["seeds"].get("cam_fallback_below"))
    ids = layout.ids(score_split or split)
    jobs = [(i, crf_every > 0 and n % crf_every == 0) for n, i in enumerate(ids)]
    cms: dict[str, np.ndarray] = {}
    with mp.get_context("fork").Pool(2, initializer=_quick_init,
                                     initargs=(maps_path, data_root, cfg, set(fallback))) as pool:
        for res in pool.imap(_quick_image, jobs, chunksize=8):
            for m, cm in res.items():
                cms[m] = cms.get(m, 0) + cm
    rows = []
    for label, cm in cms.items():
        iou = scores(cm)["iou"]
        rows += [{"method": label, "class": n, "iou": iou[c]} for c, n in enumerate(layout.class_names)]
    df = pd.DataFrame(rows)
    df.to_csv(out / f"{tag}.csv", index=False, float_format="%.6f")
    (out / f"{tag}.json").write_text(json.dumps({"cfg": json.loads(cfg_json), "crf_every": crf_every,
                                                 "score_split": score_split or split,
                                                 "fallback": [layout.class_names[c] for c in fallback]}) + "\n")
    return df


# --------------------------------------------------------------------------- diagnosis from the maps


def map_diagnosis(maps_path: Path, class_names, fg_threshold: float, cam_threshold: float) -> pd.DataFrame:
    """Per class, over the images that contain it: Pearson correlation of the top-down logits with
    the normalised CAM on the map grid, and the share of cells each calls foreground (top-down:
    T >= fg_threshold x its maximum, the seed rule; CAM: normalised CAM >= cam_threshold)."""
    import torch

    from icd_pipeline.diagnostics import masked_pearson, normalised_cam
    from icd_pipeline.maps_io import MapsReader

    acc: dict[int, list] = {}
    with MapsReader(maps_path) as reader:
        for image_id in reader.ids:
            rec = reader.read(image_id)
            cam = torch.from_numpy(np.asarray(rec["cam"], np.float32))[None]
            td = torch.from_numpy(np.asarray(rec["td"], np.float32))[None]
            if cam.shape[1] == 0:
                continue
            cam_n = normalised_cam(cam)
            corr, valid = masked_pearson(td, cam_n, torch.ones_like(td))
            tmax = td.flatten(2).max(dim=2).values.clamp(min=1e-5)[:, :, None, None]
            td_fg = ((td / tmax) > fg_threshold).float().mean(dim=(2, 3))[0]
            cam_fg = (cam_n >= cam_threshold).float().mean(dim=(2, 3))[0]
            for j, c in enumerate(int(c) for c in rec["class_ids"]):
                acc.setdefault(c, []).append((float(corr[0, j]) if valid[0, j] else np.nan, float(td_fg[j]),
                                              float(cam_fg[j])))
    rows = []
    for c, vals in sorted(acc.items()):
        v = np.asarray(vals)
        rows.append({"class": class_names[c], "map_images": len(v), "td_cam_corr": np.nanmean(v[:, 0]),
                     "td_fg_map": v[:, 1].mean(), "cam_fg_map": v[:, 2].mean()})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- report


def read_run(out: Path, animals_ids: bool = False) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    suffix = "_animals" if animals_ids else ""
    t, p = out / "pseudo_masks" / f"table{suffix}.csv", out / "pseudo_masks" / f"per_class{suffix}.csv"
    if not t.is_file():
        return None
    return pd.read_csv(t), pd.read_csv(p)


def image_gate_shares(runs: list[Path]) -> dict[str, float]:
    """Per class, the share of its (image, seed) pairs whose ICD seed the image gate
    (``seeds.icd_image_gate``) took from the CAM, from the pseudo-mask manifests; {} without a gate."""
    totals: dict[str, list[int]] = {}
    for out in runs:
        manifest = out / "pseudo_masks" / "masks" / "manifest.json"
        if not manifest.is_file():
            continue
        for name, (gated, images) in json.loads(manifest.read_text()).get("image_gate", {}).items():
            t = totals.setdefault(name, [0, 0])
            t[0] += gated
            t[1] += images
    return {name: g / n for name, (g, n) in totals.items() if n}


def mean_spread(values) -> str:
    v = np.asarray([x for x in values if x == x], dtype=float)
    if len(v) == 0:
        return "-"
    return f"{v.mean():.3f} ± {(v.max() - v.min()) / 2:.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def report(exps, lists, seeds, out_md: Path | None) -> str:
    from icd_pipeline.data.voc import VOCLayout

    layout = VOCLayout.open(DATA)
    names = list(layout.class_names)
    lines = []
    views = []
    for lst in lists:
        views.append((lst, lst, False))
        if lst == "train":
            views.append(("train", "train → scored on train_animals ids", True))
    for lst, title, animals_ids in views:
        lines.append(f"\n### {title}\n")
        lines.append("| experiment | seeds | CAM+CRF | ICD+CRF | ICD+CRF − CAM+CRF | ICD (seed) | classes ICD+CRF < CAM+CRF − 0.05 (mean over seeds) |")
        lines.append("|---|---|---|---|---|---|---|")
        per_class_all, gate_all = {}, {}
        for exp in exps:
            runs = [(s, read_run(run_dir(exp, lst, s), animals_ids)) for s in seeds]
            runs = [(s, r) for s, r in runs if r is not None]
            if not runs:
                continue
            tab = {m: [float(r[0].set_index("method").loc[m, "miou"]) for _, r in runs] for m in
                   ("CAM+CRF", "ICD+CRF", "ICD")}
            diff = [a - b for a, b in zip(tab["ICD+CRF"], tab["CAM+CRF"])]
            pc = pd.concat([r[1].assign(seed=s) for s, r in runs])
            pc = pc.pivot_table(index="class", columns=["method", "seed"], values="iou")
            present = [n for n in names if (n, ) and pc.index.isin([n]).any()]
            cam = pc["CAM+CRF"].mean(axis=1)
            icd = pc["ICD+CRF"].mean(axis=1)
            losers = [(n, icd[n] - cam[n]) for n in present if icd[n] == icd[n] and icd[n] < cam[n] - 0.05]
            lines.append(f"| {exp} | {','.join(str(s) for s, _ in runs)} | {mean_spread(tab['CAM+CRF'])} | "
                         f"{mean_spread(tab['ICD+CRF'])} | {mean_spread(diff)} | {mean_spread(tab['ICD'])} | "
                         + (", ".join(f"{n} {d:+.3f}" for n, d in losers) or "none") + " |")
            per_class_all[exp] = pc
            gate_all[exp] = image_gate_shares([run_dir(exp, lst, s) for s, _ in runs])
        if not per_class_all:
            continue
        lines.append("\nPer class, ICD+CRF − CAM+CRF (mean over the seeds; CAM+CRF of the first experiment):\n")
        first = next(iter(per_class_all.values()))
        lines.append("| class | CAM+CRF | " + " | ".join(per_class_all) + " |")
        lines.append("|---|---|" + "---|" * len(per_class_all))
        for n in names:
            if n not in first.index or first.loc[n].isna().all():
                continue
            cam_mean = first.loc[n, "CAM+CRF"].mean()
            if not cam_mean == cam_mean:
                continue
            cells = []
            for exp, pc in per_class_all.items():
                icd_v, cam_v = pc.loc[n, "ICD+CRF"], pc.loc[n, "CAM+CRF"]
                gate = gate_all[exp].get(n)
                cells.append(f"{icd_v.mean():.3f} ({icd_v.mean() - cam_v.mean():+.3f})"
                             + (f", gated {gate:.0%}" if gate is not None else ""))
            lines.append(f"| {n} | {cam_mean:.3f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if out_md is not None:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        out_md.write_text(text)
    return text


def diagnose(exp: str, lists, seeds, out_md: Path | None) -> str:
    """Per class: diagnostics.csv of the last and first epoch, the maps' agreement figures and the
    ground-truth IoUs (ICD+CRF, CAM+CRF), mean over the seeds."""
    from icd_pipeline.config import load_config
    from icd_pipeline.data.voc import VOCLayout

    cfg = load_config([ROOT / f for f in PRESET])
    layout = VOCLayout.open(DATA)
    names = list(layout.class_names)
    lines = []
    for lst in lists:
        frames = []
        for s in seeds:
            out = run_dir(exp, lst, s)
            dpath = out / "icd" / "diagnostics.csv"
            if not dpath.is_file():
                continue
            d = pd.read_csv(dpath)
            last, first = d[d.epoch == d.epoch.max()].set_index("class"), d[d.epoch == d.epoch.min()].set_index("class")
            f = last[["images", "agreement", "sign_margin", "bu_fg", "td_fg", "cam_fg"]].copy()
            f["agreement_ep1"] = first["agreement"]
            f["td_fg_ep1"] = first["td_fg"]
            m = map_diagnosis(out / "maps" / f"{lst}.h5", names, cfg["seeds"]["icd_fg_threshold"],
                              cfg["pseudo_masks"]["cam_bg_threshold"]).set_index("class")
            f = f.join(m)
            r = read_run(out)
            if r is not None:
                pc = r[1].pivot_table(index="class", columns="method", values="iou")
                f["icd_crf"] = pc["ICD+CRF"]
                f["cam_crf"] = pc["CAM+CRF"]
            f["seed"] = s
            frames.append(f.reset_index())
        if not frames:
            continue
        df = pd.concat(frames)
        g = df.groupby("class")
        mean = g.mean(numeric_only=True)
        spread = (g.max(numeric_only=True) - g.min(numeric_only=True)) / 2
        lines.append(f"\n### {exp}, {lst} (mean over seeds {','.join(str(s) for s in sorted(df.seed.unique()))}; "
                     "± half the range)\n")
        lines.append("| class | imgs | agree ep1 → last | sign margin | bu fg | td fg ep1 → last | cam fg | "
                     "T–CAM corr (maps) | td fg / cam fg (maps) | ICD+CRF | CAM+CRF | diff |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in [n for n in names if n in mean.index]:
            r, sp = mean.loc[n], spread.loc[n]
            diff = f"{r['icd_crf'] - r['cam_crf']:+.3f}" if "icd_crf" in r and r["icd_crf"] == r["icd_crf"] else "-"
            lines.append(
                f"| {n} | {r['images']:.0f} | {r['agreement_ep1']:.2f} → {r['agreement']:.2f} ± {sp['agreement']:.2f} | "
                f"{r['sign_margin']:.2f} | {r['bu_fg']:.2f} | {r['td_fg_ep1']:.2f} → {r['td_fg']:.2f} | "
                f"{r['cam_fg']:.2f} | {r['td_cam_corr']:.2f} ± {sp['td_cam_corr']:.2f} | "
                f"{r['td_fg_map']:.2f} / {r['cam_fg_map']:.2f} | "
                + (f"{r['icd_crf']:.3f} | {r['cam_crf']:.3f} | {diff} |" if "icd_crf" in r else "- | - | - |"))
        df.to_csv((out_md or RES / "diag").with_suffix(f".{lst}.csv"), index=False, float_format="%.4f")
    text = "\n".join(lines) + "\n"
    if out_md is not None:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        out_md.write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--exp", required=True)
    r.add_argument("--lists", nargs="+", default=["train", "train_animals"])
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--data-root", default=DATA)
    r.add_argument("--superpixels", required=True)
    r.add_argument("--features", required=True)
    r.add_argument("--set", default="{}", help="JSON config overrides, merged key by key")
    r.add_argument("--no-crf", action="store_true")
    r.add_argument("--reuse", help="another experiment whose ICD model and maps this one links (seed settings only)")
    p = sub.add_parser("report")
    p.add_argument("--exp", nargs="+", required=True)
    p.add_argument("--lists", nargs="+", default=["train", "train_animals"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", type=Path)
    q = sub.add_parser("quick")
    q.add_argument("--exp", required=True)
    q.add_argument("--lists", nargs="+", default=["train", "train_animals"])
    q.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    q.add_argument("--data-root", default=DATA)
    q.add_argument("--set", default="{}", help="JSON seed-setting overrides (seeds, pseudo_masks)")
    q.add_argument("--crf-every", type=int, default=0, help="CRF rows on every k-th image (0: none)")
    q.add_argument("--tag", default="quick")
    d = sub.add_parser("diagnose")
    d.add_argument("--exp", required=True)
    d.add_argument("--lists", nargs="+", default=["train", "train_animals"])
    d.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    d.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        overrides = json.loads(args.set)
        for lst in args.lists:
            for s in args.seeds:
                chain(args.exp, lst, s, args.data_root, args.superpixels, args.features, overrides, crf=not args.no_crf,
                      reuse=args.reuse)
    elif args.cmd == "quick":
        table = {}
        for lst in args.lists:
            for s in args.seeds:
                out = run_dir(args.exp, lst, s)
                cfg_json = json.dumps(deep_merge({"seed": s, "dataset": {"root": args.data_root, "train_split": lst}},
                                                 json.loads(args.set)))
                views = [(lst, None)] + ([("train→animals", "train_animals")] if lst == "train" else [])
                for view, score_split in views:
                    tag = args.tag + ("" if score_split is None else "_animals")
                    df = quick(out, args.data_root, lst, cfg_json, args.crf_every, tag, score_split)
                    table[(view, s)] = df.groupby("method")["iou"].mean()
        t = pd.DataFrame(table).T
        if "ICD+CRF" in t:
            t["ICD+CRF - CAM+CRF"] = t["ICD+CRF"] - t["CAM+CRF"]
        t["ICD - CAM"] = t["ICD"] - t["CAM"]
        print(t.round(4).to_string())
        print(t.groupby(level=0).mean().round(4).to_string())
    elif args.cmd == "report":
        print(report(args.exp, args.lists, args.seeds, args.out))
    else:
        print(diagnose(args.exp, args.lists, args.seeds, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
