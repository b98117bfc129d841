"""Pseudo-masks from the CAM / ICD maps (spec 5.2-5.3): four variants per training image.

``cam/``       CAM baseline (:func:`seeds.cam_seed`, threshold ``pseudo_masks.cam_bg_threshold``)
``cam_crf/``   the CAM seed refined by the same dense CRF as the ICD seed
``icd_seed/``  ICD seed (:func:`icd_seed_for`: the paper's :func:`seeds.icd_seed`, or the gate and blend of
               issue 33), 255 = ignore
``icd_crf/``   the ICD seed refined by the dense CRF (:func:`crf.crf_from_labels`) - the
               pseudo-mask of the paper
``icd_sal/``   only with saliency maps (``seeds.background: saliency``, or a dataset that
               ships ``Saliency/``): the ICD seed with its background taken from the saliency
               map (:func:`seeds.saliency_seeds`; with ``seeds.saliency_assign: agree`` the
               paper's image+saliency seed, spec 5.4, no CRF)
``cam_sal/``   the same with the CAM baseline's classes on the salient pixels
``icd_sal_crf/``, ``cam_sal_crf/``   those two refined by the dense CRF, when ``seeds.saliency_crf``

Both CRF rows use the paper's seed protocol (all ``num_classes`` labels incl. background,
seed confidence ``pseudo_masks.crf.unary_confidence``, pairwise parameters from
``pseudo_masks.crf``, posterior below ``min_posterior`` -> 255), so the CAM and ICD rows
differ only in the seed.

Map geometry: the maps file holds, per image, the logits of the present classes on the
map cells that cover the scaled image (``valid_hw``). They are upsampled bilinearly
(align_corners=False) to the image size with :func:`seeds.upsample_maps`: when the file
records the network stride and the scaled size, with the exact cell size
``stride * H / scaled_H`` image pixels (the last cell may reach into the padding), else by
stretching the valid cells over the image.

Each output is a palette PNG (``voc.write_palette_png``); ``manifest.json`` is written last
and the whole folder appears atomically. Images are processed by a pool of ``--workers``
processes, each opening the maps file itself; the outputs do not depend on the count.

Entry point::

    python -m icd_pipeline.stages.make_pseudo_masks --config-json JSON --data-root DIR --split train \
        --maps results/<ds>/maps/<key>/train.h5 --out-dir results/<ds>/<exp>/pseudo_masks/masks [--workers N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from icd_pipeline.config import ConfigError, add_config_args, config_from_args
from icd_pipeline.crf import crf_from_labels, crf_params_from_config
from icd_pipeline.misc.commands import command_name
from icd_pipeline.misc.io import atomic_dir
from icd_pipeline.seeds import (EPS, VOID, blend_seed, cam_fallback_classes, cam_seed, icd_seed, image_gate_classes,
                                image_extent, saliency_seeds, spread_ratio, upsample_maps)

METHODS = ("cam", "cam_crf", "icd_seed", "icd_crf")
SALIENCY_METHOD = "icd_sal"
SALIENCY_METHODS = ("cam_sal", "icd_sal")
SALIENCY_CRF_METHODS = ("cam_sal_crf", "icd_sal_crf")


def saliency_methods(seeds_cfg: dict | None) -> tuple[str, ...]:
    """The image+saliency folders: cam_sal and icd_sal, and their CRF versions with saliency_crf."""
    return SALIENCY_METHODS + (SALIENCY_CRF_METHODS if (seeds_cfg or {}).get("saliency_crf", False) else ())


def methods_for(seeds_cfg: dict | None, data_root: str | Path | None = None,
                saliency_folder: str | Path | None = None) -> tuple[str, ...]:
    """The output folders: the four of METHODS, plus the image+saliency ones when
    ``saliency_folder`` is given, when ``seeds.background`` is ``saliency`` or, with no
    ``saliency_dir`` set, when the dataset ships a ``Saliency/`` folder (the embedded dataset
    does), so the table always shows what saliency adds."""
    seeds_cfg = seeds_cfg or {}
    if saliency_folder is not None or seeds_cfg.get("background") == "saliency":
        return METHODS + saliency_methods(seeds_cfg)
    if data_root is not None and not seeds_cfg.get("saliency_dir") and (Path(data_root) / "Saliency").is_dir():
        return METHODS + saliency_methods(seeds_cfg)
    return METHODS


def saliency_dir(seeds_cfg: dict, data_root: str | Path) -> Path:
    """``seeds.saliency_dir``, or ``<data root>/Saliency`` when it is null."""
    return Path(seeds_cfg.get("saliency_dir") or Path(data_root) / "Saliency")


def saliency_folder_for(seeds_cfg: dict | None, data_root: str | Path,
                        saliency_folder: str | Path | None = None) -> Path | None:
    """The saliency maps the seeds read: ``saliency_folder`` (the saliency stage's, given by
    the workflow) when set, else :func:`saliency_dir` when :func:`methods_for` asks for the
    image+saliency seeds, else None."""
    if saliency_folder is not None:
        return Path(saliency_folder)
    if SALIENCY_METHOD in methods_for(seeds_cfg, data_root):
        return saliency_dir(seeds_cfg or {}, data_root)
    return None


def check_saliency(ids: Sequence[str], folder: Path) -> None:
    """Fail up front, listing the first ten missing saliency maps and their count."""
    missing = [i for i in ids if not (folder / f"{i}.png").is_file()]
    if missing:
        from icd_pipeline.data.voc import DataError

        raise DataError(f"{folder}: {len(missing)} saliency map(s) missing for listed ids, first ten: "
                        f"{missing[:10]} (seeds.background is 'saliency': run the saliency stage, `snakemake "
                        f"saliency_maps`, provide <id>.png for every id, or set seeds.background: icd)")


def read_saliency(path: Path, hw: tuple[int, int]) -> np.ndarray:
    """A greyscale saliency PNG (0-255, any size) resized bilinearly to ``hw``, in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    from icd_pipeline.data.voc import DataError

    try:
        with Image.open(path) as img:
            img = img.convert("L")
            if img.size != (hw[1], hw[0]):
                img = img.resize((hw[1], hw[0]), Image.BILINEAR)
            return np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: unreadable saliency map ({exc})") from exc
FORMAT_VERSION = 1


def cell_size(record: dict, attrs: dict | None) -> tuple[float, float] | None:
    """Image pixels per map cell (cy, cx), when the maps file records the stride and the
    scaled size; None otherwise."""
    stride = (attrs or {}).get("stride")
    scaled = record.get("scaled_hw")
    if not stride or scaled is None:
        return None
    H, W = record["image_hw"]
    sh, sw = scaled
    return float(stride) * H / sh, float(stride) * W / sw


def image_maps(record: dict, attrs: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """(CAM, top-down) logits of one maps record's present classes at image size (K, H, W)."""
    hw = tuple(int(v) for v in record["image_hw"])
    cell = cell_size(record, attrs)
    valid = record.get("valid_hw")
    return upsample_maps(record["cam"], hw, valid, cell), upsample_maps(record["td"], hw, valid, cell)


def refine(image: np.ndarray, seed: np.ndarray, class_ids: Sequence[int], num_labels: int, pm_cfg: dict) -> np.ndarray:
    """One seed through the dense CRF of ``pseudo_masks.crf`` (labels ``present``: background and
    ``class_ids`` only)."""
    crf_cfg = dict(pm_cfg.get("crf", {}))
    kwargs = crf_params_from_config(crf_cfg)
    if crf_cfg.get("labels", "all") == "present":
        kwargs["present"] = [int(c) for c in class_ids]
    return crf_from_labels(image, seed, num_labels, crf_cfg.get("unary_confidence", 0.5),
                           crf_cfg.get("min_posterior", 0.1), **kwargs)


def icd_seed_for(td: np.ndarray, cam: np.ndarray, class_ids: Sequence[int], pm_cfg: dict, seeds_cfg: dict | None,
                 cam_fallback: Sequence[int] = (), image_cam_only: Sequence[int] = ()) -> np.ndarray:
    """The ICD seed (icd_seed/) of one image as the config asks: :func:`seeds.blend_seed` with
    ``seeds.icd_cam_blend``, else the paper's :func:`seeds.icd_seed`; the classes of
    ``cam_fallback`` (``seeds.cam_fallback_below``) and ``image_cam_only`` (``seeds.icd_image_gate``,
    :func:`image_gate_for`) take the CAM's. ``td``, ``cam``: upsampled maps of ``class_ids``."""
    seeds_cfg = seeds_cfg or {}
    cam_only = sorted(set(int(c) for c in cam_fallback) | {int(c) for c in image_cam_only})
    if seeds_cfg.get("icd_cam_blend") is not None:
        return blend_seed(td, cam, class_ids, seeds_cfg["icd_cam_blend"], seeds_cfg.get("icd_blend_threshold", 0.3),
                          cam_only, pm_cfg.get("cam_bg_threshold", 0.3))
    return icd_seed(td, cam, class_ids, seeds_cfg.get("icd_bg_threshold", EPS), seeds_cfg.get("icd_fg_threshold", EPS),
                    cam_only, pm_cfg.get("cam_bg_threshold", 0.3))


def pseudo_masks_for_image(image: np.ndarray, record: dict, num_labels: int, pm_cfg: dict,
                           cell: tuple[float, float] | None = None, seeds_cfg: dict | None = None,
                           saliency: np.ndarray | None = None, cam_fallback: Sequence[int] = (),
                           image_cam_only: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """The label maps (uint8, H x W) of one image from its maps ``record``
    (``MapsReader.read`` output): the four of METHODS, plus those of :func:`saliency_methods`
    when ``saliency`` (H x W in [0, 1]) is given. ``cam_fallback``: class ids whose ICD seed comes
    from the CAM (``seeds.cam_fallback_below``; the image's own classes are picked here).
    ``image_cam_only``: this image's classes whose ICD seed (icd_seed / icd_crf only) comes from
    the CAM (``seeds.icd_image_gate``, :func:`image_gate_for`); the ICD seed is :func:`icd_seed_for`'s."""
    H, W = image.shape[:2]
    if tuple(record["image_hw"]) != (H, W):
        raise ValueError(f"maps were computed for image size {tuple(record['image_hw'])}, image is {(H, W)}")
    class_ids = [int(c) for c in record["class_ids"]]
    if any(c >= num_labels for c in class_ids):
        raise ValueError(f"class ids {class_ids} outside 1..{num_labels - 1}")
    seeds_cfg = seeds_cfg or {}
    if not class_ids:   # no image-level label: nothing but background can be claimed
        cam = icd = np.zeros((H, W), np.uint8)
        sal = {"cam": cam, "icd": icd}
    else:
        valid = record.get("valid_hw")
        td = upsample_maps(record["td"], (H, W), valid, cell)
        cam_maps = upsample_maps(record["cam"], (H, W), valid, cell)
        cam_t = pm_cfg.get("cam_bg_threshold", 0.3)
        cam = cam_seed(cam_maps, class_ids, cam_t)
        fallback_set = set(cam_fallback)
        class_fallback = [c for c in class_ids if c in fallback_set]
        icd = icd_seed_for(td, cam_maps, class_ids, pm_cfg, seeds_cfg, class_fallback, image_cam_only)
        if saliency is not None:
            sal = saliency_seeds(td, cam_maps, class_ids, saliency, seeds_cfg.get("saliency_bg_threshold", 0.01),
                                 seeds_cfg.get("saliency_min_area", 0.01), seeds_cfg.get("saliency_assign", "agree"),
                                 cam_t, seeds_cfg.get("icd_bg_threshold", EPS), seeds_cfg.get("icd_fg_threshold", EPS),
                                 class_fallback)
    out = {
        "cam": cam,
        "cam_crf": refine(image, cam, class_ids, num_labels, pm_cfg),
        "icd_seed": icd,
        "icd_crf": refine(image, icd, class_ids, num_labels, pm_cfg),
    }
    if saliency is not None:
        for kind in ("cam", "icd"):
            out[f"{kind}_sal"] = sal[kind]
            if seeds_cfg.get("saliency_crf", False):
                out[f"{kind}_sal_crf"] = refine(image, sal[kind], class_ids, num_labels, pm_cfg)
    return out


def image_gate_for(record: dict, seeds_cfg: dict | None, pm_cfg: dict | None = None,
                   cell: tuple[float, float] | None = None) -> list[int]:
    """The classes of one maps record whose ICD seed comes from the CAM in this image: those whose
    top-down map agrees with the CAM, on the map cells, less than ``seeds.icd_image_gate``
    (:func:`seeds.image_gate_classes`) - with ``seeds.icd_image_gate_min_spread``, only where their
    spread ratio (:func:`seeds.image_spread`) is also above that - those whose top-down
    foreground, at image size, is more than ``seeds.icd_spread_gate`` times the CAM's, and those
    whose top-down foreground covers more than ``seeds.icd_cover_gate`` of the image."""
    seeds_cfg = seeds_cfg or {}
    class_ids = [int(c) for c in record["class_ids"]]
    gated = set(image_gate_classes(record["td"], record["cam"], class_ids, seeds_cfg.get("icd_image_gate")))
    above = seeds_cfg.get("icd_spread_gate")
    min_spread = seeds_cfg.get("icd_image_gate_min_spread")
    cover = seeds_cfg.get("icd_cover_gate")
    if (above is not None or cover is not None or (min_spread is not None and gated)) and class_ids:
        hw = tuple(int(v) for v in record["image_hw"])
        cam, td = (upsample_maps(record[k], hw, record.get("valid_hw"), cell) for k in ("cam", "td"))
        td_fg, cam_fg = image_extent(td, cam, seeds_cfg.get("icd_fg_threshold", EPS),
                                     (pm_cfg or {}).get("cam_bg_threshold", 0.3))
        spread = dict(zip(class_ids, spread_ratio(td_fg, cam_fg)))
        if min_spread is not None:
            gated = {c for c in gated if spread[c] > float(min_spread)}
        if above is not None:
            gated |= {c for c in class_ids if spread[c] > float(above)}
        if cover is not None:
            gated |= {c for c, n in zip(class_ids, td_fg) if n > float(cover) * hw[0] * hw[1]}
    return sorted(gated)


# --------------------------------------------------------------------------- workers

_STATE: dict[str, Any] = {}


def _init_worker(maps_path: str, data_root: str, out_dir: str, num_labels: int, pm_cfg: dict,
                 reader_factory: Callable | None = None, seeds_cfg: dict | None = None,
                 saliency_folder: str | None = None) -> None:
    from icd_pipeline.data.voc import VOCLayout

    if reader_factory is None:
        from icd_pipeline.maps_io import MapsReader

        reader_factory = MapsReader
    _STATE.clear()
    reader = reader_factory(maps_path)
    fallback = cam_fallback_classes(getattr(reader, "attrs", {}).get("class_agreement"),
                                    (seeds_cfg or {}).get("cam_fallback_below"))
    _STATE.update(reader=reader, cam_fallback=fallback, layout=VOCLayout.open(data_root), out_dir=Path(out_dir),
                  num_labels=num_labels, pm_cfg=pm_cfg, seeds_cfg=seeds_cfg or {},
                  saliency_dir=saliency_folder_for(seeds_cfg, data_root, saliency_folder))


def _process(image_id: str) -> tuple[str, dict[str, list[int]], list[int], list[int]]:
    """Worker: compute and write the PNGs of one image; return per-method pixel counts
    (background, foreground, ignore), the image's classes and those the image gate sent to the CAM."""
    from icd_pipeline.data.voc import read_image, write_palette_png

    reader = _STATE["reader"]
    image = read_image(_STATE["layout"].image_path(image_id))
    record = reader.read(image_id)
    cell = cell_size(record, getattr(reader, "attrs", None))
    saliency = None
    if _STATE["saliency_dir"] is not None:
        saliency = read_saliency(_STATE["saliency_dir"] / f"{image_id}.png", image.shape[:2])
    try:
        gated = image_gate_for(record, _STATE["seeds_cfg"], _STATE["pm_cfg"], cell)
        masks = pseudo_masks_for_image(image, record, _STATE["num_labels"], _STATE["pm_cfg"], cell,
                                       _STATE["seeds_cfg"], saliency, _STATE["cam_fallback"], gated)
    except ValueError as exc:
        raise ValueError(f"{image_id}: {exc}") from None
    counts = {}
    for method, mask in masks.items():
        write_palette_png(_STATE["out_dir"] / method / f"{image_id}.png", mask)
        counts[method] = [int((mask == 0).sum()), int(((mask != 0) & (mask != VOID)).sum()),
                          int((mask == VOID).sum())]
    return image_id, counts, [int(c) for c in record["class_ids"]], gated


def _default_workers() -> int:
    n = os.environ.get("OMP_NUM_THREADS", "")
    return int(n) if n.isdigit() and int(n) > 0 else 1


def run(data_root: str | Path, split: str, maps_path: str | Path, out_dir: str | Path, pm_cfg: dict,
        workers: int = 1, progress: bool = True, reader_factory: Callable | None = None,
        seeds_cfg: dict | None = None, saliency_folder: str | Path | None = None) -> dict:
    """Write ``out_dir`` (PNG folders + manifest.json) atomically; return the manifest.
    ``saliency_folder``: the saliency maps (``<id>.png``) of the image+saliency seeds, when they
    do not come from the config (``seeds.saliency_dir`` or the dataset's ``Saliency/``)."""
    from icd_pipeline.data.voc import VOCLayout

    from ..misc.progress import progress as progress_bar

    if reader_factory is None:
        from icd_pipeline.maps_io import MapsReader

        reader_factory = MapsReader
    layout = VOCLayout.open(data_root)
    ids = layout.ids(split)
    num_labels = layout.num_classes
    methods = methods_for(seeds_cfg, data_root, saliency_folder)
    sal_folder = saliency_folder_for(seeds_cfg, data_root, saliency_folder)
    if sal_folder is not None:
        check_saliency(ids, sal_folder)
    reader = reader_factory(str(maps_path))
    try:
        available = set(reader.ids)
        missing = [i for i in ids if i not in available]
        if missing:
            raise ValueError(f"{maps_path}: no maps for {len(missing)} id(s) of split {split!r}, "
                             f"e.g. {missing[:3]}")
        attrs = dict(getattr(reader, "attrs", {}) or {})
        fallback = cam_fallback_classes(attrs.get("class_agreement"), (seeds_cfg or {}).get("cam_fallback_below"))
    finally:
        close = getattr(reader, "close", None)
        if close:
            close()
    names = attrs.get("class_names")
    if names and len(names) != num_labels:
        raise ValueError(f"{maps_path}: maps were made for {len(names)} classes, dataset has {num_labels}")
    totals = {m: np.zeros(3, np.int64) for m in methods}
    gate_counts = np.zeros((num_labels, 2), np.int64)   # per class: images gated to the CAM, images

    def add(result) -> None:
        _, counts, present, gated = result
        for m, c in counts.items():
            totals[m] += c
        gate_counts[present, 1] += 1
        gate_counts[gated, 0] += 1
        bar.update(1)
    with atomic_dir(out_dir) as tmp:
        for m in methods:
            (tmp / m).mkdir()
        initargs = (str(maps_path), str(data_root), str(tmp), num_labels, pm_cfg, reader_factory, seeds_cfg,
                    None if sal_folder is None else str(sal_folder))
        bar = progress_bar(total=len(ids), desc=f"pseudo-masks {split}", unit="img", file=sys.stderr, disable=not progress)
        if workers <= 1:
            _init_worker(*initargs)
            try:
                for result in map(_process, ids):
                    add(result)
            finally:
                _STATE.clear()
        else:
            with mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
                chunk = max(1, min(16, len(ids) // (4 * workers)))
                for result in pool.imap(_process, ids, chunksize=chunk):
                    add(result)
        bar.close()
        manifest = {
            "format_version": FORMAT_VERSION,
            "split": split,
            "num_images": len(ids),
            "maps": str(maps_path),
            "data_root": str(data_root),
            "class_names": list(layout.class_names),
            "num_labels": num_labels,
            "methods": list(methods),
            "config": pm_cfg,
            "seeds": seeds_cfg or {},
            "saliency_dir": None if sal_folder is None else str(sal_folder),
            # the classes of this split's images only (a class with no training image has agreement 0)
            "cam_fallback": [layout.class_names[c] for c in fallback if gate_counts[c, 1]],
            "image_gate": ({layout.class_names[c]: [int(g), int(n)] for c, (g, n) in enumerate(gate_counts) if n}
                           if any((seeds_cfg or {}).get(k) is not None
                                  for k in ("icd_image_gate", "icd_spread_gate", "icd_cover_gate"))
                           else {}),
            "pixel_fractions": {
                m: dict(zip(("background", "foreground", "ignore"),
                            (totals[m] / max(int(totals[m].sum()), 1)).round(6).tolist()))
                for m in methods
            },
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    from icd_pipeline.data.voc import DataError
    from icd_pipeline.misc.runtime import get_logger

    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.make_pseudo_masks"),
                                     description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--data-root", required=True, help="dataset folder in VOC layout")
    parser.add_argument("--split", default="train")
    parser.add_argument("--maps", required=True, help="maps HDF5 file (extract_maps output)")
    parser.add_argument("--out-dir", required=True, help="output folder (cam/ cam_crf/ icd_seed/ icd_crf/)")
    parser.add_argument("--saliency-dir", default=None,
                        help="saliency maps (<id>.png, the saliency stage's) for the image+saliency seeds; "
                             "default: seeds.saliency_dir, or the dataset's Saliency/")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: OMP_NUM_THREADS, else 1)")
    args = parser.parse_args(argv)
    log = get_logger("make_pseudo_masks")
    try:
        cfg = config_from_args(args)
        workers = args.workers if args.workers is not None else _default_workers()
        if workers < 1:
            raise ValueError("--workers must be at least 1")
        t0 = time.time()
        manifest = run(args.data_root, args.split, args.maps, args.out_dir, cfg["pseudo_masks"], workers=workers,
                       seeds_cfg=cfg["seeds"], saliency_folder=args.saliency_dir)
        dt = time.time() - t0
        log.info("%d images in %.1f s (%.1f img/s, %d workers) -> %s", manifest["num_images"], dt,
                 manifest["num_images"] / max(dt, 1e-9), workers, args.out_dir)
        if manifest["cam_fallback"]:
            log.info("ICD seeds from the CAM for %s (direction's agreement with the CAM below %s)",
                     ", ".join(manifest["cam_fallback"]), cfg["seeds"]["cam_fallback_below"])
        if manifest["image_gate"]:
            log.info("image gate (top-down map vs CAM correlation < %s where the foreground is > %s x the CAM's, or "
                     "foreground > %s x the CAM's, or > %s of the image), ICD seeds from the CAM in: %s",
                     cfg["seeds"].get("icd_image_gate"), cfg["seeds"].get("icd_image_gate_min_spread") or 0,
                     cfg["seeds"].get("icd_spread_gate"), cfg["seeds"].get("icd_cover_gate"),
                     ", ".join(f"{n} {g}/{k}" for n, (g, k) in manifest["image_gate"].items() if g))
        for m, frac in manifest["pixel_fractions"].items():
            log.info("%-11s background %.3f foreground %.3f ignore %.3f", m, frac["background"],
                     frac["foreground"], frac["ignore"])
    except (DataError, ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["METHODS", "SALIENCY_METHOD", "SALIENCY_METHODS", "SALIENCY_CRF_METHODS", "saliency_methods",
           "saliency_folder_for", "methods_for", "cell_size", "image_maps", "refine",
           "icd_seed_for", "pseudo_masks_for_image", "image_gate_for", "run", "main"]

if __name__ == "__main__":
    sys.exit(main())
