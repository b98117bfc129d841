"""Seed thresholds swept on the *training* split (the usual WSSS selection; no val score).

    .venv/bin/python benchmarks/seed_sweep.py --data-root DIR --split train \
        --maps results/<ds>/maps/train.h5 [--cam 0.2 0.3 0.4] [--icd 1e-5 0.3 0.6] \
        [--icd-fg 1e-5 0.2 0.4] [--crf-config config.yaml PRESET.yaml] [--out CSV]

For each CAM background threshold (pseudo_masks.cam_bg_threshold) and each pair of ICD
background and foreground thresholds (seeds.icd_bg_threshold, seeds.icd_fg_threshold) it
scores the seeds without CRF against the split's masks (mIoU with 255 counted as background,
and with 255 left out), with the CRF of the given
config files too when ``--crf-config`` is given, and prints one row each; the
choice and the figure that made it go in the preset's comment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icd_pipeline.config import load_config  # noqa: E402
from icd_pipeline.crf import crf_from_labels, crf_params_from_config  # noqa: E402
from icd_pipeline.data.voc import VOCLayout, read_image, read_mask  # noqa: E402
from icd_pipeline.evaluate import Evaluator  # noqa: E402
from icd_pipeline.stages.make_pseudo_masks import cell_size  # noqa: E402
from icd_pipeline.maps_io import MapsReader  # noqa: E402
from icd_pipeline.seeds import cam_seed, icd_seed, upsample_maps  # noqa: E402


def sweep(data_root: str, split: str, maps: str, cam_thresholds, icd_thresholds, crf_cfg: dict | None = None,
          ids=None, icd_fg_thresholds=(1e-5,)) -> pd.DataFrame:
    layout = VOCLayout.open(data_root)
    kinds = ("cam", "icd") + (("cam_crf", "icd_crf") if crf_cfg is not None else ())
    icd_pairs = [(b, f) for b in icd_thresholds for f in icd_fg_thresholds]
    evs = {(k, t): (Evaluator(layout.num_classes), Evaluator(layout.num_classes, True))
           for k in kinds for t in ([(c, None) for c in cam_thresholds] if k.startswith("cam") else icd_pairs)}
    if crf_cfg is not None:
        crf_kwargs = crf_params_from_config(crf_cfg)
        conf, min_post = crf_cfg.get("unary_confidence", 0.5), crf_cfg.get("min_posterior", 0.1)
    with MapsReader(maps) as reader:
        for image_id in tqdm(ids or layout.ids(split), desc="seed sweep", file=sys.stderr):
            rec = reader.read(image_id)
            gt = read_mask(layout.mask_path(image_id), layout.num_classes)
            hw = tuple(rec["image_hw"])
            cell = cell_size(rec, reader.attrs)
            cam = upsample_maps(rec["cam"], hw, rec.get("valid_hw"), cell)
            td = upsample_maps(rec["td"], hw, rec.get("valid_hw"), cell)
            class_ids = [int(c) for c in rec["class_ids"]]
            image = read_image(layout.image_path(image_id)) if crf_cfg is not None else None
            present = {"present": class_ids} if crf_cfg is not None and crf_cfg.get("labels") == "present" else {}
            for (kind, t), (ev, ev_auth) in evs.items():
                seed = (cam_seed(cam, class_ids, t[0]) if kind.startswith("cam")
                        else icd_seed(td, cam, class_ids, t[0], t[1]))
                if kind.endswith("_crf"):
                    seed = crf_from_labels(image, seed, layout.num_classes, conf, min_post, **present, **crf_kwargs)
                ev.add(gt, seed)
                ev_auth.add(gt, seed)
    rows = []
    for (kind, t), (ev, ev_auth) in evs.items():
        s, a = ev.summary(), ev_auth.summary()
        rows.append({"seeds": kind, "threshold": t[0], "fg_threshold": t[1], "miou": round(s["miou"], 4),
                     "miou_255_left_out": round(a["miou"], 4), "left_out": round(a["left_out_fraction"], 3)})
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--maps", required=True)
    ap.add_argument("--cam", type=float, nargs="*", default=[0.2, 0.25, 0.3, 0.35, 0.4, 0.5])
    ap.add_argument("--icd", type=float, nargs="*", default=[1e-5, 0.2, 0.4, 0.6])
    ap.add_argument("--icd-fg", type=float, nargs="*", default=[1e-5], help="seeds.icd_fg_threshold values")
    ap.add_argument("--crf-config", nargs="*", help="config file(s) whose pseudo_masks.crf section the CRF rows "
                    "use; without it no CRF rows")
    ap.add_argument("--out", help="also write the table as CSV")
    args = ap.parse_args()
    crf_cfg = None
    if args.crf_config is not None:
        crf_cfg = load_config(args.crf_config)["pseudo_masks"]["crf"]
    table = sweep(args.data_root, args.split, args.maps, args.cam, args.icd, crf_cfg, icd_fg_thresholds=args.icd_fg)
    print(table.to_string(index=False))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
