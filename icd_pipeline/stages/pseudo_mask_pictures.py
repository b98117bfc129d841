"""Stage ``pseudo_mask_pictures``: the picture grid of the pseudo-masks for the report.

Entry point::

    python -m icd_pipeline.stages.pseudo_mask_pictures --data-root DIR --split train \
        --maps results/<ds>/maps/<key>/train.h5 --masks-dir results/<ds>/<exp>/pseudo_masks/masks \
        --out results/<ds>/<exp>/pseudo_masks/grid.png [--num 6]

One row per image, columns: image, ground truth (VOC palette; void colour where the image has
no mask), CAM (max over the present
classes of ReLU(A), divided by its maximum, over the image), ICD map (sigmoid of the max over
the present classes of the top-down logits T; 0.5 is the seed threshold), ICD seed, ICD+CRF
pseudo-mask. The images are a fixed, deterministic choice: in sorted id order, the first
ceil(num/2) single-class images and the first floor(num/2) multi-class images (topped up
from the other kind when one is short), shown in sorted order.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.voc import DataError, VOCLayout, palette_array, read_image, read_mask
from ..maps_io import MapsError, MapsReader
from ..misc.commands import command_name
from ..misc.runtime import get_logger
from ..viz import pyplot, save_png

log = get_logger("pictures")

COLUMNS = ("image", "ground truth", "CAM", "ICD map", "ICD seed", "ICD+CRF")


def choose_ids(candidates: Sequence[str], num_classes_of, num: int) -> list[str]:
    """Deterministic mix of single- and multi-class images (see the module docstring)."""
    ids = sorted(candidates)
    single = [i for i in ids if num_classes_of(i) == 1]
    multi = [i for i in ids if num_classes_of(i) > 1]
    n_multi = min(num // 2, len(multi))
    n_single = min(num - n_multi, len(single))
    n_multi = min(num - n_single, len(multi))
    return sorted(single[:n_single] + multi[:n_multi])


def upsample(maps: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(k, h, w) -> (k, H, W), bilinear, align_corners=False."""
    if maps.shape[0] == 0:
        return np.zeros((0, *hw), np.float32)
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    return F.interpolate(t, size=tuple(hw), mode="bilinear", align_corners=False)[0].numpy()


def cam_heatmap(cam: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if cam.shape[0] == 0:
        return np.zeros(hw, np.float32)
    m = np.maximum(upsample(cam, hw), 0).max(0)
    top = m.max()
    return m / top if top > 0 else m


def icd_heatmap(td: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if td.shape[0] == 0:
        return np.zeros(hw, np.float32)
    return 1.0 / (1.0 + np.exp(-upsample(td, hw).max(0)))


def colorize(mask: np.ndarray) -> np.ndarray:
    return palette_array()[mask]


def overlay(image: np.ndarray, heat: np.ndarray, cmap, alpha: float = 0.6) -> np.ndarray:
    """Heatmap over a greyscale copy of the image (colours of the image would mix with it)."""
    rgb = cmap(np.clip(heat, 0, 1))[..., :3]
    grey = (image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0)[..., None]
    return ((1 - alpha) * grey + alpha * rgb).clip(0, 1)


def pseudo_mask_grid(layout: VOCLayout, split: str, maps_path: str | Path, masks_dir: str | Path,
                     out: str | Path, num: int = 6) -> list[str]:
    """Draw the grid; returns the ids shown."""
    plt = pyplot()
    masks_dir = Path(masks_dir)
    split_ids = set(layout.ids(split))
    with MapsReader(maps_path) as reader:
        candidates = [i for i in reader.ids if i in split_ids]
        if not candidates:
            raise DataError(f"{maps_path}: no maps for any image of split {split!r}")
        ids = choose_ids(candidates, lambda i: len(reader.info(i)["class_ids"]), num)
        records = {i: reader.read(i) for i in ids}
    names = layout.class_names
    fig, axes = plt.subplots(len(ids), len(COLUMNS), figsize=(2.1 * len(COLUMNS), 2.1 * len(ids) + 0.3),
                             squeeze=False)
    jet = plt.get_cmap("jet")
    for r, image_id in enumerate(ids):
        rec = records[image_id]
        image = read_image(layout.image_path(image_id))
        hw = image.shape[:2]
        if tuple(rec["image_hw"]) != tuple(hw):
            raise DataError(f"{maps_path}: maps of {image_id} are for size {rec['image_hw']}, image is {hw}")
        gt = (read_mask(layout.mask_path(image_id), layout.num_classes) if layout.has_mask(image_id)
              else np.full(hw, 255, np.uint8))  # no ground truth: the void colour
        seed = read_mask(masks_dir / "icd_seed" / f"{image_id}.png", layout.num_classes)
        crf = read_mask(masks_dir / "icd_crf" / f"{image_id}.png", layout.num_classes)
        panels = [image / 255.0, colorize(gt), overlay(image, cam_heatmap(rec["cam"], hw), jet),
                  overlay(image, icd_heatmap(rec["td"], hw), jet), colorize(seed), colorize(crf)]
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=9)
        label = ", ".join(names[c] if c < len(names) else str(c) for c in rec["class_ids"])
        axes[r][0].set_ylabel(f"{image_id}\n{label}", fontsize=7)
    save_png(fig, out, dpi=110)
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.pseudo_mask_pictures"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--maps", required=True, help="maps HDF5 file (extract_maps)")
    parser.add_argument("--masks-dir", required=True, help="folder with icd_seed/ and icd_crf/")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--num", type=int, default=6, help="number of images (rows)")
    args = parser.parse_args(argv)
    try:
        if args.num < 1:
            raise ValueError("--num must be >= 1")
        layout = VOCLayout.open(args.data_root)
        ids = pseudo_mask_grid(layout, args.split, args.maps, args.masks_dir, args.out, args.num)
    except (DataError, MapsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info("wrote %s (%d images: %s)", args.out, len(ids), ", ".join(ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
