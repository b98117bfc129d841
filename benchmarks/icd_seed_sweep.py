#!/usr/bin/env python
"""ICD seed rules of issue 33 on one maps file, scored on the *training* list (choice of
``seeds.icd_image_gate``, ``seeds.icd_cam_blend``, ``seeds.icd_blend_threshold``).

    .venv/bin/python benchmarks/icd_seed_sweep.py --data-root ../shared/data/voc2012-sample/VOC2012 \
        --split train --maps results/voc2012-sample/maps/<key>/train.h5 \
        --config config.yaml workflow/presets/voc2012_sample.yaml [--crf-every 4] [--out CSV]

Per image it builds the CAM seed, the paper's ICD seed, and for every gate in ``--gates`` (None
= no gate), every spread gate in ``--spread-gates`` (``seeds.icd_spread_gate``; the gated classes
are those of either gate, as in the stage's ``image_gate_for``) and every (CAM weight, threshold)
in ``--blends`` the blended seed (:func:`icd_pipeline.seeds.blend_seed`, the gated classes from
the CAM alone, cut at ``pseudo_masks.cam_bg_threshold``; ``--fallback-at-blend`` adds the rows
cut at the blend's threshold), and the paper's seed with the gates; each is scored against the list's masks (255 counted as background, the
pipeline's rule), and refined by the config's CRF and scored again on every ``--crf-every``-th
image. It prints the mIoU of every rule and writes per-class IoU to ``--out``. The figures next
to the three keys in ``workflow/presets/voc2012_sample.yaml`` come from this sweep on the seed-0
maps of ``train`` (``--crf-every 4``) and ``train_animals`` (``--crf-every 3``).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icd_pipeline.config import load_config  # noqa: E402
from icd_pipeline.data.voc import VOCLayout, read_image, read_mask  # noqa: E402
from icd_pipeline.evaluate import confusion_matrix, scores  # noqa: E402
from icd_pipeline.maps_io import MapsReader  # noqa: E402
from icd_pipeline.seeds import blend_seed, cam_fallback_classes, cam_seed, icd_seed  # noqa: E402
from icd_pipeline.stages.make_pseudo_masks import cell_size, image_gate_for, image_maps, refine  # noqa: E402

_G: dict = {}


def _init(maps: str, data_root: str, cfg: dict, gates, blends, spread_gates=(None,), fallback_at_blend=False,
          min_spreads=(None,), class_fallback=False) -> None:
    reader = MapsReader(maps)
    fallback = (cam_fallback_classes(reader.attrs.get("class_agreement"), cfg["seeds"].get("cam_fallback_below"))
                if class_fallback else [])
    _G.update(reader=reader, layout=VOCLayout.open(data_root), cfg=cfg, gates=gates, blends=blends,
              spread_gates=spread_gates, fallback_at_blend=fallback_at_blend, min_spreads=min_spreads,
              class_fallback=fallback)


def seeds_of(record: dict, td, cam, cfg: dict, gates, blends, *, spread_gates=(None,), cell=None,
             fallback_at_blend: bool = False, min_spreads=(None,), class_fallback=()) -> dict:
    """Every rule's seed of one image (``td``, ``cam``: upsampled maps of its present classes).
    A rule's CAM fallbacks are the stage's (``image_gate_for``): the correlation gate ``gate``
    (where the spread ratio is above ``min_spread``, ``seeds.icd_image_gate_min_spread``) or the
    spread gate ``spread``, either one, and the classes of ``class_fallback``."""
    pm, sd = cfg["pseudo_masks"], cfg["seeds"]
    ids = [int(c) for c in record["class_ids"]]
    cam_t = pm["cam_bg_threshold"]
    out = {"CAM": cam_seed(cam, ids, cam_t)}
    fallback = {int(c) for c in class_fallback} & set(ids)
    for gate, spread, min_spread in itertools.product(gates, spread_gates, min_spreads):
        if gate is None and min_spread is not None:
            continue
        only = sorted(fallback | set(image_gate_for(record, {**sd, "icd_image_gate": gate, "icd_spread_gate": spread,
                                                             "icd_image_gate_min_spread": min_spread}, pm, cell)))
        tag = (("" if gate is None else f" gate {gate:g}") + ("" if min_spread is None else f" if spread > {min_spread:g}")
               + ("" if spread is None else f" spread {spread:g}"))
        out["ICD" + tag] = icd_seed(td, cam, ids, sd["icd_bg_threshold"], sd["icd_fg_threshold"], only, cam_t)
        for w, t in blends:
            out[f"blend {w:g}/{t:g}{tag}"] = blend_seed(td, cam, ids, w, t, only, cam_t)
            if fallback_at_blend:  # the gated classes cut at the blend's threshold instead
                out[f"blend {w:g}/{t:g}{tag} fallback at {t:g}"] = blend_seed(td, cam, ids, w, t, only)
    return out


def _one(job):
    image_id, crf = job
    reader, layout, cfg = _G["reader"], _G["layout"], _G["cfg"]
    rec = reader.read(image_id)
    cam, td = image_maps(rec, reader.attrs)
    seeds = seeds_of(rec, td, cam, cfg, _G["gates"], _G["blends"], spread_gates=_G["spread_gates"],
                     cell=cell_size(rec, reader.attrs), fallback_at_blend=_G["fallback_at_blend"],
                     min_spreads=_G["min_spreads"], class_fallback=_G["class_fallback"])
    gt = read_mask(layout.mask_path(image_id), layout.num_classes)
    res = {m: confusion_matrix(gt, s, layout.num_classes)[0] for m, s in seeds.items()}
    if crf:
        image = read_image(layout.image_path(image_id))
        for m, s in seeds.items():
            p = refine(image, s, rec["class_ids"], layout.num_classes, cfg["pseudo_masks"])
            res[m + " +CRF"] = confusion_matrix(gt, p, layout.num_classes)[0]
    return res


def _gate(text: str):
    return None if text.lower() == "none" else float(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--maps", required=True)
    ap.add_argument("--config", nargs="+", default=["config.yaml"], help="config files, merged in order")
    ap.add_argument("--gates", nargs="+", type=_gate, default=[None, 0.0, 0.2, 0.4])
    ap.add_argument("--spread-gates", nargs="+", type=_gate, default=[None],
                    help="seeds.icd_spread_gate values, each combined with every --gates value (None: off)")
    ap.add_argument("--gate-min-spreads", nargs="+", type=_gate, default=[None],
                    help="seeds.icd_image_gate_min_spread values, each combined with every (not None) --gates value")
    ap.add_argument("--class-fallback", action="store_true",
                    help="every ICD rule also sends the config's seeds.cam_fallback_below classes (from the maps "
                         "file's agreement) to the CAM, as the stage does")
    ap.add_argument("--fallback-at-blend", action="store_true",
                    help="also the blends with the gated classes cut at the blend's threshold (before 2026-12-03) "
                         "instead of pseudo_masks.cam_bg_threshold")
    ap.add_argument("--blends", nargs="+", default=["0.3/0.3", "0.5/0.3", "0.7/0.3", "0.5/0.25"],
                    help="CAM weight/threshold pairs")
    ap.add_argument("--crf-every", type=int, default=4, help="CRF rows on every k-th image (0: none)")
    ap.add_argument("--crf-offset", type=int, default=0,
                    help="CRF on the images n with n %% crf_every == offset (another offset: images held apart)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    blends = [tuple(float(v) for v in b.split("/")) for b in args.blends]
    layout = VOCLayout.open(args.data_root)
    ids = layout.ids(args.split)
    jobs = [(i, args.crf_every > 0 and n % args.crf_every == args.crf_offset) for n, i in enumerate(ids)]
    cms: dict = {}
    with mp.get_context("fork").Pool(args.workers, initializer=_init,
                                     initargs=(args.maps, args.data_root, cfg, args.gates, blends, args.spread_gates,
                                               args.fallback_at_blend, args.gate_min_spreads,
                                               args.class_fallback)) as pool:
        for res in pool.imap(_one, jobs, chunksize=4):
            for m, cm in res.items():
                cms[m] = cms.get(m, 0) + cm
    rows = [{"rule": m, "class": n, "iou": scores(cm)["iou"][c]} for m, cm in cms.items()
            for c, n in enumerate(layout.class_names)]
    df = pd.DataFrame(rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False, float_format="%.6f")
    miou = df.groupby("rule", sort=False)["iou"].mean()
    print(f"{args.split}: {len(ids)} images, CRF on {sum(c for _, c in jobs)}")
    print(miou.round(4).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
