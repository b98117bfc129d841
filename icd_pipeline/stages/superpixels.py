"""Stage ``superpixels``: the superpixels of every image of a split (``superpixels`` library:
FH segments merged greedily by dense-feature similarity, spec section 3), one HDF5 store.

    python -m icd_pipeline.stages.superpixels --config-json JSON --data-root DIR --split train \
        --out results/<ds>/superpixels/<key>/train.h5 [--workers N]

FH and the merges run in a pool of ``--workers`` processes, the feature network in the main
process, and only for images with more than ``max_regions`` FH segments.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from ..config import ConfigError, add_config_args, config_from_args
from ..data.voc import DataError, VOCLayout, read_image
from ..misc.commands import command_name
from ..misc.io import atomic_path
from ..misc.progress import progress as progress_bar
from ..misc.runtime import get_logger, select_device, set_threads
from ..superpixels import (
    FEATURE_BACKBONES,
    FORMAT_VERSION,
    DenseFeatures,
    felzenszwalb_segments,
    merge_superpixels,
    write_map,
)

_WORKER: dict = {}


def _init_worker(data_root: str, params: dict) -> None:
    _WORKER.update(layout=VOCLayout.open(data_root), params=params)


def _fh_job(image_id: str) -> tuple[str, np.ndarray, np.ndarray | None]:
    """Worker, phase 1: FH segments of one image (int32). With ``rgb`` features the merge
    is done here too; otherwise the merged map is None when a merge is needed."""
    p = _WORKER["params"]
    image = read_image(_WORKER["layout"].image_path(image_id))
    seg = felzenszwalb_segments(image, p["scale"], p["sigma"], p["min_size"]).astype(np.int32)
    if seg.max() + 1 <= p["max_regions"]:
        return image_id, seg, seg
    if p["feature_backbone"] == "rgb":
        return image_id, seg, merge_superpixels(seg, image.astype(np.float64) / 255.0,
                                                p["max_regions"]).astype(np.int32)
    return image_id, seg, None


def _merge_job(task) -> np.ndarray:
    """Worker, phase 2: merge FH segments with a feature grid."""
    seg, grid, cell, max_regions = task
    return merge_superpixels(seg, grid, max_regions, cell=cell).astype(np.int32)


def _default_workers() -> int:
    n = os.environ.get("OMP_NUM_THREADS", "")
    return int(n) if n.isdigit() and int(n) > 0 else 1


def run(layout, split: str, out: str | Path, sp_cfg: dict, device: str = "cpu", workers: int = 1,
        batch_size: int = 32, progress: bool = True) -> dict:
    """Compute superpixels for every id of ``split`` and write the store atomically.

    Per chunk of images: FH in the worker pool; the feature network runs (batched, in this
    process) only for images with more than ``max_regions`` FH segments, whose merge then
    goes back to the pool. Images with few segments keep their FH map as is (the merge would
    stop before its first step), which on small images is most of them.
    """
    ids = layout.ids(split)
    name = sp_cfg.get("feature_backbone", "efficientnet_lite0")
    if name not in FEATURE_BACKBONES:
        raise ConfigError(f"superpixels.feature_backbone: unknown backbone {name!r}")
    params = {k: sp_cfg[k] for k in ("scale", "sigma", "min_size", "max_regions")}
    params.update(feature_backbone=name, feature_input_scale=float(sp_cfg.get("feature_input_scale", 1.0)),
                  feature_output_stride=int(sp_cfg.get("feature_output_stride", 8)))
    # fork the pool before torch starts its threads; the workers never use torch
    pool = (mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(str(layout.root), params))
            if workers > 1 else None)
    if pool is None:
        _init_worker(str(layout.root), params)
    extractor = None
    counts: list[int] = []
    regions: list[int] = []
    merged_images = 0
    try:
        with atomic_path(out) as tmp:
            with h5py.File(tmp, "w") as h5:
                h5.attrs["format_version"] = FORMAT_VERSION
                h5.attrs["split"] = split
                h5.attrs["num_images"] = len(ids)
                h5.attrs["params"] = json.dumps(params, sort_keys=True)
                for k, v in params.items():
                    h5.attrs[k] = v
                bar = progress_bar(total=len(ids), desc=f"superpixels {split}", unit="img", file=sys.stderr,
                           disable=not progress)
                chunk = max(batch_size, 4 * workers)
                for start in range(0, len(ids), chunk):
                    chunk_ids = ids[start:start + chunk]
                    if pool is None:
                        fh = list(map(_fh_job, chunk_ids))
                    else:
                        fh = pool.map(_fh_job, chunk_ids, chunksize=max(1, len(chunk_ids) // (4 * workers)))
                    need = [k for k, (_, _, m) in enumerate(fh) if m is None]
                    results = [m for _, _, m in fh]
                    if need:
                        if extractor is None:
                            extractor = DenseFeatures(name, device=str(select_device(device)),
                                                      input_scale=params["feature_input_scale"],
                                                      output_stride=params["feature_output_stride"])
                        tasks = []
                        for b in range(0, len(need), batch_size):
                            part = need[b:b + batch_size]
                            images = [read_image(layout.image_path(fh[k][0])) for k in part]
                            for k, (grid, cell) in zip(part, extractor(images)):
                                tasks.append((fh[k][1], grid, cell, params["max_regions"]))
                        merged = list(map(_merge_job, tasks)) if pool is None else pool.map(_merge_job, tasks)
                        for k, m in zip(need, merged):
                            results[k] = m
                        merged_images += len(need)
                    for (image_id, seg, _), m in zip(fh, results):
                        write_map(h5, image_id, m)
                        counts.append(int(seg.max()) + 1)
                        regions.append(int(m.max()) + 1)
                    bar.update(len(chunk_ids))
                bar.close()
                h5.attrs["mean_fh_segments"] = float(np.mean(counts)) if counts else 0.0
                h5.attrs["mean_regions"] = float(np.mean(regions)) if regions else 0.0
                h5.attrs["merged_images"] = merged_images
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _WORKER.clear()
    return {"images": len(ids), "mean_fh_segments": float(np.mean(counts)) if counts else 0.0,
            "mean_regions": float(np.mean(regions)) if regions else 0.0, "merged_images": merged_images}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.superpixels"), description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--data-root", required=True, help="dataset folder in VOC layout")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="output HDF5 file")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for FH + merge (default: OMP_NUM_THREADS, else 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per feature forward pass")
    args = parser.parse_args(argv)
    log = get_logger("superpixels")
    try:
        cfg = config_from_args(args)
        set_threads()
        workers = args.workers if args.workers is not None else _default_workers()
        if workers < 1:
            raise ValueError("--workers must be at least 1")
        layout = VOCLayout.open(args.data_root)
        t0 = time.time()
        stats = run(layout, args.split, args.out, cfg["superpixels"], device=cfg.get("device", "cpu"),
                    workers=workers, batch_size=args.batch_size)
        log.info("%d images in %.1f s: %.1f FH segments, %.1f regions per image, %d merged -> %s",
                 stats["images"], time.time() - t0, stats["mean_fh_segments"], stats["mean_regions"],
                 stats["merged_images"], args.out)
    except (DataError, ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
