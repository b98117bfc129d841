"""Throughput of the COCO -> VOC-layout conversion (icd_pipeline.data.coco.prepare_coco).

Builds a synthetic COCO-format dataset shaped like COCO 2014 (640x480 JPEGs, about 7
instances per image: random polygons of 8-24 points, one crowd RLE in 10 % of the images,
2 % of images without annotation), then times the conversion (masks, links, labels CSV)::

    python benchmarks/coco_convert_speed.py --images 200 --workers 1 2

It prints images/s per worker count (wall clock, and per CPU second, which a busy machine
disturbs less: workers' CPU time counts once they have exited) and the conversion's peak memory (each conversion runs
in a fresh process; peak RSS of that process and, with workers, its largest worker). The
JSON loading is timed apart (COCO's whole annotation file must be loaded before
conversion). ``--images 200 800`` shows that memory does not grow with the image count.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_dataset(root: Path, n_images: int, seed: int = 0) -> None:
    from pycocotools import mask as mask_utils

    from icd_pipeline.data.coco import COCO_CATEGORIES

    rng = np.random.default_rng(seed)
    cats = [{"id": cid, "name": n} for cid, n in COCO_CATEGORIES]
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True)
    ann_id = 1
    for split, n in (("train2014", n_images - n_images // 4), ("val2014", n_images // 4)):
        img_dir = root / split / split
        img_dir.mkdir(parents=True)
        images, anns = [], []
        noise = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        for k in range(n):
            h, w = (480, 640) if k % 3 else (640, 480)
            image_id = len(images) + 1 + (0 if split == "train2014" else 10**6)
            name = f"COCO_{split}_{image_id:012d}.jpg"
            Image.fromarray(noise[:h, :w] if h == 480 else noise[:w, :h].transpose(1, 0, 2)).save(
                img_dir / name, quality=90)
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})
            if rng.random() < 0.02:
                continue
            for _ in range(max(1, rng.poisson(7))):
                cx, cy = rng.uniform(0, w), rng.uniform(0, h)
                r = rng.uniform(10, min(h, w) / 3)
                pts = int(rng.integers(8, 25))
                ang = np.sort(rng.uniform(0, 2 * math.pi, pts))
                rad = r * rng.uniform(0.6, 1.0, pts)
                poly = np.stack([np.clip(cx + rad * np.cos(ang), 0, w), np.clip(cy + rad * np.sin(ang), 0, h)], 1)
                anns.append({"id": ann_id, "image_id": image_id, "category_id": int(rng.choice([c for c, _ in COCO_CATEGORIES])),
                             "iscrowd": 0, "segmentation": [poly.ravel().round(2).tolist()], "area": 0.0,
                             "bbox": [0, 0, 1, 1]})
                ann_id += 1
            if rng.random() < 0.1:
                m = np.zeros((h, w), np.uint8, order="F")
                y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
                m[y:y + h // 3, x:x + w // 3] = 1
                flat = m.flatten(order="F")  # uncompressed RLE, as COCO stores crowds
                change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]]).astype(np.int16)) != 0)
                counts = np.diff(np.concatenate([[0], change])).tolist()
                rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
                assert mask_utils.area(rle) == flat.sum()
                anns.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 1,
                             "segmentation": {"size": [h, w], "counts": counts}, "area": 0.0, "bbox": [0, 0, 1, 1]})
                ann_id += 1
        (ann_dir / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": cats}))


def convert(root: Path, out: Path, workers: int) -> dict:
    """One timed conversion (run in a fresh process by main)."""
    from icd_pipeline.data.coco import load_split, prepare_coco

    t0 = time.perf_counter()
    load_split(root / "annotations" / "instances_train2014.json")
    load_split(root / "annotations" / "instances_val2014.json")
    t_json = time.perf_counter() - t0
    roots = {"train2014": root / "train2014", "val2014": root / "val2014"}
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu0 = sum(u.ru_utime + u.ru_stime for u in usage)
    t0 = time.perf_counter()
    manifest = prepare_coco(roots, root / "annotations", out, workers=workers, progress=False)
    dt = time.perf_counter() - t0 - t_json
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage) - cpu0 - t_json
    return {"images": sum(manifest["splits"].values()), "seconds": dt, "json_seconds": t_json,
            "cpu_seconds": cpu, "peak_rss_mb": usage[0].ru_maxrss / 1024,
            "peak_worker_rss_mb": usage[1].ru_maxrss / 1024 if workers > 1 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[200])
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--convert", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.convert is not None:  # the child: one conversion, result as JSON on stdout
        print(json.dumps(convert(args.convert, args.out, args.workers[0])))
        return
    for n_images in args.images:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            t0 = time.perf_counter()
            make_dataset(root, n_images)
            print(f"built {n_images} synthetic COCO images in {time.perf_counter() - t0:.1f} s")
            for workers in args.workers:
                proc = subprocess.run([sys.executable, __file__, "--convert", str(root), "--out",
                                       str(root / f"out{workers}"), "--workers", str(workers)],
                                      capture_output=True, text=True, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                worker_rss = (f", largest worker {r['peak_worker_rss_mb']:.0f} MB"
                              if r["peak_worker_rss_mb"] is not None else "")
                print(f"images={r['images']} workers={workers}: {r['seconds']:.2f} s, "
                      f"{r['images'] / r['seconds']:.1f} images/s (JSON loading {r['json_seconds']:.2f} s "
                      f"left out), {r['images'] / r['cpu_seconds']:.1f} images per CPU second; "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB{worker_rss}")


if __name__ == "__main__":
    main()
