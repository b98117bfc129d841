"""Image+saliency pseudo-masks swept on the *training* split (no val score chooses a setting).

    python benchmarks/saliency_seed_sweep.py --data-root DIR --split train \
        --maps results/<ds>/maps/<key>/train.h5 --saliency results/<ds>/saliency/<key>/train \
        --config workflow/presets/voc2012_sample.yaml [--bg 0.01 0.3 0.5] [--min-area 0.01] \
        [--assign agree all] [--crf] [--workers 2] [--out CSV] [--per-class CSV]

For every combination of ``seeds.saliency_bg_threshold`` (``--bg``), ``saliency_min_area``
and ``saliency_assign`` it scores the CAM+saliency and ICD+saliency masks
(:func:`icd_pipeline.seeds.saliency_seeds`, the pseudo-mask stage's own code; the other seed
thresholds and the CRF from ``--config``), with ``--crf`` also after the dense CRF, and the
saliency map alone with the ground-truth image labels' single class (``sal_oracle``: the
ceiling of any classifier on single-label images). mIoU with 255 counted as background (the
table's ``miou``) and with 255 left out. One row per setting; the choice and the figure go
beside the preset's key.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icd_pipeline.config import load_config  # noqa: E402
from icd_pipeline.crf import crf_from_labels, crf_params_from_config  # noqa: E402
from icd_pipeline.data.voc import VOCLayout, read_image, read_mask  # noqa: E402
from icd_pipeline.evaluate import confusion_matrix, scores  # noqa: E402
from icd_pipeline.stages.make_pseudo_masks import cell_size, read_saliency  # noqa: E402
from icd_pipeline.maps_io import MapsReader  # noqa: E402
from icd_pipeline.seeds import saliency_seeds, upsample_maps  # noqa: E402

_W: dict = {}


def _init(args_dict):
    _W.update(args_dict)
    _W["reader"] = MapsReader(args_dict["maps"])
    _W["layout"] = VOCLayout.open(args_dict["data_root"])


def _one(image_id: str) -> dict:
    layout, reader, cfg = _W["layout"], _W["reader"], _W["cfg"]
    n = layout.num_classes
    rec = reader.read(image_id)
    gt = read_mask(layout.mask_path(image_id), n)
    hw = tuple(rec["image_hw"])
    cell = cell_size(rec, reader.attrs)
    class_ids = [int(c) for c in rec["class_ids"]]
    sal = read_saliency(Path(_W["saliency"]) / f"{image_id}.png", hw)
    pm, seeds = cfg["pseudo_masks"], cfg["seeds"]
    crf_cfg = pm["crf"]
    crf_kwargs = crf_params_from_config(crf_cfg)
    if crf_cfg.get("labels", "all") == "present":
        crf_kwargs["present"] = class_ids
    image = read_image(layout.image_path(image_id)) if _W["crf"] else None
    out = {}

    def add(key, mask):
        out[key] = confusion_matrix(gt, mask, n)[0], confusion_matrix(gt, mask, n, True)[0]

    if not class_ids:
        return out
    cam = upsample_maps(rec["cam"], hw, rec.get("valid_hw"), cell)
    td = upsample_maps(rec["td"], hw, rec.get("valid_hw"), cell)
    if len(class_ids) == 1:
        for t in _W["bg"]:
            add(("sal_oracle", "-", t, "-", False), np.where(sal >= t, class_ids[0], 0).astype(np.uint8))
    for assign, t, area in itertools.product(_W["assign"], _W["bg"], _W["min_area"]):
        masks = saliency_seeds(td, cam, class_ids, sal, t, area, assign, pm["cam_bg_threshold"],
                               seeds["icd_bg_threshold"], seeds["icd_fg_threshold"])
        for kind, mask in masks.items():
            add((kind, assign, t, area, False), mask)
            if _W["crf"]:
                refined = crf_from_labels(image, mask, n, crf_cfg["unary_confidence"], crf_cfg["min_posterior"],
                                          **crf_kwargs)
                add((kind, assign, t, area, True), refined)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--maps", required=True)
    ap.add_argument("--saliency", required=True, help="folder of <id>.png saliency maps (the saliency stage's)")
    ap.add_argument("--config", nargs="*", default=[], help="config file(s): seeds, pseudo_masks (CRF) settings")
    ap.add_argument("--bg", type=float, nargs="+", default=[0.01, 0.1, 0.3, 0.5, 0.7])
    ap.add_argument("--min-area", type=float, nargs="+", default=[0.01])
    ap.add_argument("--assign", nargs="+", default=["agree", "all"], choices=["agree", "all"])
    ap.add_argument("--crf", action="store_true", help="also score each mask after the dense CRF")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", help="write the table as CSV")
    ap.add_argument("--per-class", help="write per-class IoU (long format) as CSV")
    args = ap.parse_args()
    cfg = load_config(args.config)
    layout = VOCLayout.open(args.data_root)
    ids = layout.ids(args.split)[: args.limit]
    shared = {"maps": args.maps, "data_root": args.data_root, "saliency": args.saliency, "cfg": cfg,
              "bg": args.bg, "min_area": args.min_area, "assign": args.assign, "crf": args.crf}
    totals: dict = {}
    t0 = time.time()
    with mp.get_context("fork").Pool(args.workers, initializer=_init, initargs=(shared,)) as pool:
        for k, result in enumerate(pool.imap_unordered(_one, ids, chunksize=4), 1):
            for key, (cm, cm_a) in result.items():
                acc = totals.setdefault(key, [0, 0])
                acc[0] = acc[0] + cm
                acc[1] = acc[1] + cm_a
            if k % max(1, len(ids) // 10) == 0:
                print(f"{k}/{len(ids)} images, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    rows, per_class = [], []
    for (kind, assign, t, area, crf), (cm, cm_a) in sorted(totals.items(), key=lambda kv: str(kv[0])):
        s, sa = scores(cm), scores(cm_a)
        name = kind if kind == "sal_oracle" else f"{kind.upper()}+S" + ("+CRF" if crf else "")
        rows.append({"masks": name, "assign": assign, "bg_threshold": t, "min_area": area,
                     "miou": round(float(s["miou"]), 4), "miou_255_left_out": round(float(sa["miou"]), 4),
                     "background_iou": round(float(s["iou"][0]), 4)})
        for c, name_c in enumerate(layout.class_names):
            per_class.append({"masks": name, "assign": assign, "bg_threshold": t, "min_area": area,
                              "class": name_c, "iou": round(float(s["iou"][c]), 4)})
    table = pd.DataFrame(rows)
    print(f"{args.split}: {len(ids)} images, {time.time() - t0:.0f} s")
    print(table.to_string(index=False))
    for path, df in ((args.out, table), (args.per_class, pd.DataFrame(per_class))):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(path, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
