"""Saliency maps of a split's images with a salient-object ONNX network (the ``saliency`` stage).

    python -m icd_pipeline.stages.saliency --config-json JSON --data-root DIR --split train \\
        --out-dir results/<dataset>/saliency/<model>-<hash>/train [--cache-dir DIR]

Reads the ``saliency`` config section (model, input_size, mean, std, output, batch_size;
:mod:`icd_pipeline.models.saliency`) and writes, for every id of the split, ``<id>.png``: a
greyscale uint8 map (0-255 for [0, 1]) at the image's size, then ``manifest.json`` (model file
and sha256, settings, images, seconds); the folder appears atomically. Runs on
``OMP_NUM_THREADS`` onnxruntime threads (Snakemake's ``threads:``). A missing model is an
error that names the fetch command (``make saliency-model``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from icd_pipeline.config import ConfigError, add_config_args, config_from_args
from icd_pipeline.misc.commands import command_name

FORMAT_VERSION = 1


def run(data_root: str | Path, split: str, out_dir: str | Path, sal_cfg: dict, threads: int | None = None,
        cache: str | Path | None = None, progress: bool = True) -> dict:
    """Write the maps of ``split`` to ``out_dir`` (atomically); return the manifest."""
    from PIL import Image

    from icd_pipeline.data.voc import VOCLayout, read_image
    from icd_pipeline.misc.io import atomic_dir, sha256_file
    from icd_pipeline.misc.progress import progress as progress_bar
    from icd_pipeline.models.saliency import SaliencyRunner, default_threads, to_uint8

    layout = VOCLayout.open(data_root)
    ids = layout.ids(split)
    threads = threads or default_threads()
    t_load = time.perf_counter()
    runner = SaliencyRunner(sal_cfg.get("model", "isnet-medium"), sal_cfg.get("input_size"), sal_cfg.get("mean"),
                            sal_cfg.get("std"), sal_cfg.get("output"), threads, cache, sal_cfg.get("batch_size", 1))
    t_load = time.perf_counter() - t_load
    batch = runner.batch_size
    foreground, seconds = 0.0, 0.0
    with atomic_dir(out_dir) as tmp:
        bar = progress_bar(total=len(ids), desc=f"saliency {split}", unit="img", file=sys.stderr,
                           disable=not progress)
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            images = [read_image(layout.image_path(i)) for i in chunk]
            t0 = time.perf_counter()
            maps = runner(images)
            seconds += time.perf_counter() - t0
            for image_id, smap in zip(chunk, maps):
                Image.fromarray(to_uint8(smap), mode="L").save(tmp / f"{image_id}.png", optimize=False)
                foreground += float((smap > 0.5).mean())
            bar.update(len(chunk))
        bar.close()
        manifest = {
            "format_version": FORMAT_VERSION,
            "split": split,
            "num_images": len(ids),
            "data_root": str(data_root),
            "config": dict(sal_cfg),
            "model_file": str(runner.path),
            "model_sha256": sha256_file(runner.path),
            "input_size": runner.input_size,
            "size_multiple": runner.size_multiple,
            "threads": threads,
            "seconds_network": round(seconds, 3),
            "seconds_per_image": round(seconds / max(len(ids), 1), 4),
            "seconds_model_preparation": round(t_load, 3),
            "mean_foreground_fraction": round(foreground / max(len(ids), 1), 6),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    from icd_pipeline.data.voc import DataError
    from icd_pipeline.misc.runtime import get_logger
    from icd_pipeline.models.saliency import SaliencyModelError

    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.saliency"), description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--data-root", required=True, help="dataset folder in VOC layout")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out-dir", required=True, help="output folder (<id>.png, manifest.json)")
    parser.add_argument("--cache-dir", default=None,
                        help="where fetched models live (default $ICD_PIPELINE_CACHE or ~/.cache/icd-pipeline)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    log = get_logger("saliency")
    try:
        cfg = config_from_args(args)
        t0 = time.time()
        manifest = run(args.data_root, args.split, args.out_dir, cfg["saliency"], cache=args.cache_dir,
                       progress=not args.no_progress)
        dt = time.time() - t0
        log.info("%d images in %.1f s (network %.3f s per image at %d px, %s threads; model prepared in %.1f s) -> %s",
                 manifest["num_images"], dt, manifest["seconds_per_image"], manifest["input_size"],
                 manifest["threads"] or "default", manifest["seconds_model_preparation"], args.out_dir)
        log.info("mean salient fraction (map > 0.5): %.3f", manifest["mean_foreground_fraction"])
    except (DataError, ConfigError, SaliencyModelError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
