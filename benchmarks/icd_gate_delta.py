#!/usr/bin/env python
"""Exact effect of a per-image gate setting on an experiment of ``icd_robustness.py`` (issue 33).

    .venv/bin/python benchmarks/icd_gate_delta.py --exp pass3 --lists train train_animals --seeds 0 1 2 \
        --set '{"icd_cover_gate": 0.95}' [--set '{"icd_cover_gate": 0.8}' ...]

Each ``--set`` is merged into the ``seeds`` section the experiment's run used (as its
pseudo-mask manifest records it, with the run's ``pseudo_masks`` section). For every
image the gated classes of :func:`make_pseudo_masks.image_gate_for` are compared under both; where
they differ the image's ICD+CRF mask is made again with the new setting (the stage's
``icd_seed_for`` and ``refine``, same maps, CRF and class fallback), elsewhere the run's ICD+CRF
mask is the new one too. So the figures are those a full rerun of the pseudo-mask stage would
give, for the price of the changed images. Only settings that act through ``image_gate_for``
(``icd_image_gate``, ``icd_image_gate_min_spread``, ``icd_spread_gate``, ``icd_cover_gate``)
are allowed. The first changed image of each run is also remade with the old setting and must
equal the run's mask, which checks that the run's configuration is the one read here.

Prints per (list, seed) and mean over seeds ICD+CRF − CAM+CRF before and after, the images
changed and the worst class; ``--out`` writes the per-class table (CSV).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icd_pipeline.config import deep_merge  # noqa: E402
from icd_pipeline.data.voc import VOCLayout, read_image, read_mask  # noqa: E402
from icd_pipeline.evaluate import confusion_matrix, scores  # noqa: E402
from icd_pipeline.maps_io import MapsReader  # noqa: E402
from icd_pipeline.seeds import cam_fallback_classes  # noqa: E402
from icd_pipeline.stages.make_pseudo_masks import cell_size, icd_seed_for, image_gate_for, image_maps, refine  # noqa: E402

DATA = "/work/shared/data/voc2012-sample/VOC2012"
RES = ROOT / "results" / "voc2012-sample"
GATE_KEYS = {"icd_image_gate", "icd_image_gate_min_spread", "icd_spread_gate", "icd_cover_gate"}


def icd_crf(image, record, cam, td, pm: dict, seeds_cfg: dict, fallback, gated, num_labels: int) -> np.ndarray:
    """The stage's ICD+CRF mask of one image (as :func:`pseudo_masks_for_image` makes it)."""
    ids = [int(c) for c in record["class_ids"]]
    fallback = set(fallback)
    seed = icd_seed_for(td, cam, ids, pm, seeds_cfg, [c for c in ids if c in fallback], gated)
    return refine(image, seed, ids, num_labels, pm)


def run_delta(run: Path, split: str, layout: VOCLayout, settings: list[dict]) -> dict:
    """Confusion matrices of one run: CAM+CRF, ICD+CRF as made, and ICD+CRF under each setting."""
    masks = run / "pseudo_masks" / "masks"
    # the settings the run's stage used, from its manifest: the preset may have changed since
    manifest = json.loads((masks / "manifest.json").read_text())
    pm, sd = manifest["config"], manifest["seeds"]
    news = [deep_merge(sd, s) for s in settings]
    reader = MapsReader(run / "maps" / f"{split}.h5")
    fallback = cam_fallback_classes(reader.attrs.get("class_agreement"), sd.get("cam_fallback_below"))
    n = layout.num_classes
    cms = {"CAM+CRF": 0, "ICD+CRF": 0, **{f"set {k}": 0 for k in range(len(settings))}}
    changed = [0] * len(settings)
    checked = False
    for image_id in layout.ids(split):
        gt = read_mask(layout.mask_path(image_id), n)
        cms["CAM+CRF"] = cms["CAM+CRF"] + confusion_matrix(gt, read_mask(masks / "cam_crf" / f"{image_id}.png", n), n)[0]
        icd = read_mask(masks / "icd_crf" / f"{image_id}.png", n)
        cm_icd = confusion_matrix(gt, icd, n)[0]
        cms["ICD+CRF"] = cms["ICD+CRF"] + cm_icd
        rec = reader.read(image_id)
        cell = cell_size(rec, reader.attrs)
        before = image_gate_for(rec, sd, pm, cell)
        image = None
        for k, new in enumerate(news):
            after = image_gate_for(rec, new, pm, cell)
            if after == before:
                cms[f"set {k}"] = cms[f"set {k}"] + cm_icd
                continue
            changed[k] += 1
            if image is None:
                image = (read_image(layout.image_path(image_id)), rec, *image_maps(rec, reader.attrs))
            if not checked:
                if not np.array_equal(icd_crf(*image, pm, sd, fallback, before, n), icd):
                    raise SystemExit(f"{run}: {image_id} remade with the run's settings differs from its mask; "
                                     "the configuration read here is not the run's")
                checked = True
            cms[f"set {k}"] = cms[f"set {k}"] + confusion_matrix(gt, icd_crf(*image, pm, new, fallback, after, n), n)[0]
    return {"cms": cms, "changed": changed}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", required=True, help="an icd_robustness.py experiment whose pseudo-masks exist")
    ap.add_argument("--lists", nargs="+", default=["train", "train_animals"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", dest="settings", action="append", required=True,
                    help="JSON merged into the seeds section (gate keys only); repeat for several")
    ap.add_argument("--data-root", default=DATA)
    ap.add_argument("--out", type=Path, help="per-class IoU of every row (CSV)")
    args = ap.parse_args(argv)
    settings = [json.loads(s) for s in args.settings]
    for s in settings:
        if not isinstance(s, dict) or not s or set(s) - GATE_KEYS:
            raise SystemExit(f"--set {json.dumps(s)}: only the gate keys {sorted(GATE_KEYS)} are allowed")
    layout = VOCLayout.open(args.data_root)
    rows, summary = [], []
    for split in args.lists:
        for seed in args.seeds:
            run = RES / f"{args.exp}-{split}-s{seed}"
            if not (run / "pseudo_masks" / "masks" / "icd_crf").is_dir():
                raise SystemExit(f"{run}: no pseudo-masks; run icd_robustness.py run --exp {args.exp} first")
            res = run_delta(run, split, layout, settings)
            iou = {m: scores(cm)["iou"] for m, cm in res["cms"].items()}
            cam = np.nanmean(iou["CAM+CRF"])
            line = f"{split} seed {seed}: CAM+CRF {cam:.4f}, ICD+CRF {np.nanmean(iou['ICD+CRF']) - cam:+.4f}"
            for k, s in enumerate(settings):
                d = iou[f"set {k}"] - iou["CAM+CRF"]
                worst = int(np.nanargmin(d))
                line += (f" | {json.dumps(s)}: {np.nanmean(iou[f'set {k}']) - cam:+.4f} ({res['changed'][k]} images; "
                         f"worst {layout.class_names[worst]} {d[worst]:+.3f})")
                summary.append({"list": split, "seed": seed, "setting": json.dumps(s),
                                "diff": np.nanmean(iou[f"set {k}"]) - cam, "before": np.nanmean(iou["ICD+CRF"]) - cam})
            print(line, flush=True)
            for m, v in iou.items():
                label = m if not m.startswith("set ") else json.dumps(settings[int(m[4:])])
                rows += [{"list": split, "seed": seed, "row": label, "class": c, "iou": x}
                         for c, x in zip(layout.class_names, v)]
    df = pd.DataFrame(summary)
    mean = df.groupby(["list", "setting"], sort=False)[["before", "diff"]].agg(["mean", "min", "max"])
    print("\nICD+CRF − CAM+CRF, mean (min, max) over the seeds:")
    for (split, s), r in mean.iterrows():
        print(f"  {split:14s} {s}: {r[('before', 'mean')]:+.4f} -> {r[('diff', 'mean')]:+.4f} "
              f"({r[('diff', 'min')]:+.4f} .. {r[('diff', 'max')]:+.4f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(args.out, index=False, float_format="%.6f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
