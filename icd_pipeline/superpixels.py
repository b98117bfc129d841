"""Superpixels for ICD training (spec section 3): Felzenszwalb-Huttenlocher segments merged
greedily to at most ``max_regions`` regions by dense-feature similarity.

1. FH segmentation of the RGB image at its own resolution
   (``skimage.segmentation.felzenszwalb(scale, sigma, min_size)``; 75 / 0.8 / 75).
2. Dense features of an ImageNet-pretrained network (``feature_backbone``; its ``icd``
   feature map), computed on the image scaled by ``feature_input_scale`` and padded
   bottom/right to a multiple of the network stride. Feature cell (i, j) is centred on
   input pixel ((i + 0.5) * stride, (j + 0.5) * stride); the map is resized bilinearly
   (align_corners=False, edges clamped) onto the image's own pixel grid, which covers the
   unpadded part of the input only. ``rgb`` uses the pixel colours instead (cheap; tests).
3. Each FH segment's feature is the mean of the upsampled features over its pixels
   (computed without materialising the H x W x C map: each pixel's four bilinear weights
   are accumulated per segment on the feature grid).
4. Greedy merge (official ``generate_superpixel.py``): sim(i, j) = cos(f_i, f_j) +
   1 - (|i| + |j|) / (H W); merge the most similar pair (row-major first of the maximum,
   the lower index survives), merged feature = size-weighted mean, no adjacency constraint,
   until ``max_regions`` remain; relabel 0..n-1 in order of the surviving index. The map
   is written in its natural (H, W) layout (the official transpose-then-reshape bug, spec
   9.8, is not reproduced).

An image with at most ``max_regions`` FH segments keeps them as they are (the merge stops
before its first step), so the feature network runs only for images that need a merge;
``stages.superpixels`` runs FH and the merges in a process pool, the network in its main process.

Store: one HDF5 file per split, one gzip dataset per image id (uint8 when fewer than 256
regions, else uint16/uint32), file attributes with the parameters. :class:`SuperpixelStore` reads
it lazily, one handle per process, and pickles without the handle (DataLoader workers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from .data.voc import DataError, image_size

FEATURE_BACKBONES = ("efficientnet_lite0", "vgg16", "resnet50", "resnet101", "tiny", "rgb")
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- segmentation


def felzenszwalb_segments(image: np.ndarray, scale: float = 75, sigma: float = 0.8,
                          min_size: int = 75) -> np.ndarray:
    """FH segments of an RGB uint8 image: (H, W) int64 ids 0..n-1."""
    from skimage.segmentation import felzenszwalb

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    seg = felzenszwalb(image, scale=float(scale), sigma=float(sigma), min_size=int(min_size), channel_axis=-1)
    return relabel(seg)


def relabel(segments: np.ndarray) -> np.ndarray:
    """Map the ids present to 0..n-1 in increasing order (int64)."""
    _, inv = np.unique(segments, return_inverse=True)
    return inv.reshape(segments.shape).astype(np.int64)


def _axis_weights(out_len: int, cell: float, in_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For output pixels 0..out_len-1 on a grid whose cells are ``cell`` output pixels wide
    (cell centre k at (k + 0.5) * cell): indices i0, i1 and the weight of i1."""
    src = (np.arange(out_len, dtype=np.float64) + 0.5) / cell - 0.5
    src = np.clip(src, 0.0, in_len - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_len - 1)
    return i0, i1, src - i0


def segment_features(segments: np.ndarray, features: np.ndarray,
                     cell: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean feature and size of every segment.

    ``features`` is either (H, W, C) at image resolution (``cell`` None) or a (C, h, w)
    feature grid whose cells are ``cell = (cy, cx)`` image pixels tall/wide; the grid is
    then upsampled bilinearly (align_corners=False) onto the image implicitly.
    Returns (n, C) float64 means and (n,) int64 sizes.
    """
    seg = np.asarray(segments, dtype=np.int64)
    H, W = seg.shape
    n = int(seg.max()) + 1
    sizes = np.bincount(seg.ravel(), minlength=n).astype(np.int64)
    if cell is None:
        feats = np.asarray(features, dtype=np.float64)
        if feats.shape[:2] != (H, W):
            raise ValueError(f"features {feats.shape} do not match segments {seg.shape}")
        flat = feats.reshape(H * W, -1)
        sums = np.zeros((n, flat.shape[1]), dtype=np.float64)
        np.add.at(sums, seg.ravel(), flat)
    else:
        grid = np.asarray(features, dtype=np.float64)
        C, h, w = grid.shape
        y0, y1, wy = _axis_weights(H, cell[0], h)
        x0, x1, wx = _axis_weights(W, cell[1], w)
        weights = np.zeros(n * h * w, dtype=np.float64)
        base = seg * (h * w)
        for ys, wys in ((y0, 1 - wy), (y1, wy)):
            for xs, wxs in ((x0, 1 - wx), (x1, wx)):
                idx = base + ys[:, None] * w + xs[None, :]
                weights += np.bincount(idx.ravel(), weights=(wys[:, None] * wxs[None, :]).ravel(),
                                       minlength=n * h * w)
        sums = weights.reshape(n, h * w) @ grid.reshape(C, h * w).T
    return sums / np.maximum(sizes, 1)[:, None], sizes


def greedy_merge(features: np.ndarray, sizes: np.ndarray, total: int, max_regions: int = 64) -> np.ndarray:
    """Greedy merge of n regions (features (n, C), sizes (n,)); returns (n,) new ids
    0..m-1, m = min(n, max_regions).

    Equivalent to the official O(n^2)-per-step loop: the full symmetric similarity matrix
    is kept, but each row's best entry is cached, so a step costs O(n C) plus a rescan of
    the rows whose best partner was one of the merged pair.
    """
    feats = np.array(features, dtype=np.float64)
    size = np.asarray(sizes, dtype=np.float64).copy()
    n = feats.shape[0]
    owner = np.arange(n)
    if n <= max_regions:
        return owner
    total = float(total)
    norms = np.linalg.norm(feats, axis=1)
    unit = feats / np.maximum(norms, 1e-12)[:, None]
    sim = unit @ unit.T + (1.0 - (size[:, None] + size[None, :]) / total)
    np.fill_diagonal(sim, -np.inf)
    alive = np.ones(n, dtype=bool)
    best_col = sim.argmax(axis=1)
    best_val = sim[np.arange(n), best_col]
    count = n
    while count > max_regions:
        i = int(best_val.argmax())          # first row holding the maximum ...
        j = int(best_col[i])                # ... and its first column: row-major argmax
        if j < i:
            i, j = j, i
        si, sj = size[i], size[j]
        feats[i] = feats[i] * (si / (si + sj)) + feats[j] * (sj / (si + sj))
        size[i] = si + sj
        owner[owner == j] = i
        alive[j] = False
        count -= 1
        sim[j, :] = -np.inf
        sim[:, j] = -np.inf
        best_val[j] = -np.inf
        nrm = np.linalg.norm(feats[i])
        unit[i] = feats[i] / max(nrm, 1e-12)
        row = unit @ unit[i] + (1.0 - (size + size[i]) / total)
        row[~alive] = -np.inf
        row[i] = -np.inf
        sim[i, :] = row
        sim[:, i] = row
        best_col[i] = int(row.argmax())
        best_val[i] = row[best_col[i]]
        # other rows: entry i changed, entry j is gone
        others = alive.copy()
        others[i] = False
        stale = others & ((best_col == i) | (best_col == j))
        if stale.any():
            rows = np.nonzero(stale)[0]
            cols = sim[rows].argmax(axis=1)
            best_col[rows] = cols
            best_val[rows] = sim[rows, cols]
        fresh = others & ~stale
        better = fresh & ((row > best_val) | ((row == best_val) & (i < best_col)))
        best_col[better] = i
        best_val[better] = row[better]
    _, new_ids = np.unique(owner, return_inverse=True)
    return new_ids.astype(np.int64)


def merge_superpixels(segments: np.ndarray, features: np.ndarray, max_regions: int = 64,
                      cell: tuple[float, float] | None = None) -> np.ndarray:
    """Merge FH ``segments`` (H, W) by ``features`` ((H, W, C) or a (C, h, w) grid with
    ``cell``, see :func:`segment_features`) into at most ``max_regions`` regions:
    (H, W) int64 ids 0..m-1. Each region is exactly the union of its FH segments."""
    seg = relabel(np.asarray(segments))
    feats, sizes = segment_features(seg, features, cell)
    mapping = greedy_merge(feats, sizes, seg.size, max_regions)
    return mapping[seg]


# --------------------------------------------------------------------------- dense features


class DenseFeatures:
    """Dense features of an ImageNet-pretrained backbone (its ``icd`` output), batched.

    ``__call__(images)`` takes a list of uint8 (H, W, 3) images and returns, per image, a
    float32 (C, h, w) grid and its cell size in image pixels (cy, cx). Each image is scaled
    by ``input_scale`` and padded (ImageNet mean) to a multiple of the stride on its own;
    images of equal padded size share a forward pass.
    """

    def __init__(self, name: str, device: str = "cpu", input_scale: float = 1.0, output_stride: int = 8,
                 pretrained: bool = True):
        import torch

        from icd_pipeline.models.backbones import build_backbone

        self.name = name
        self.device = torch.device(device)
        self.input_scale = float(input_scale)
        net = build_backbone(name, pretrained=pretrained, output_stride=output_stride)
        blocks = getattr(net, "blocks", None)
        icd_block = getattr(net, "ICD_BLOCK", None)
        if blocks is not None and icd_block is not None:
            net.blocks = blocks[: icd_block + 1]   # later blocks do not feed the icd output
        self.net = net.eval().to(self.device)
        self.stride = int(net.stride)

    def _prepare(self, image: np.ndarray):
        import torch
        import torch.nn.functional as F

        from icd_pipeline.data.voc import PAD_RGB

        H, W = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)[None]
        sh, sw = max(1, int(round(H * self.input_scale))), max(1, int(round(W * self.input_scale)))
        if (sh, sw) != (H, W):
            x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False)
        s = self.stride
        ph, pw = -(-sh // s) * s, -(-sw // s) * s
        if (ph, pw) != (sh, sw):
            pad = torch.tensor(PAD_RGB, dtype=x.dtype).view(1, 3, 1, 1).expand(1, 3, ph, pw).clone()
            pad[:, :, :sh, :sw] = x
            x = pad
        cell = (s * H / sh, s * W / sw)   # image pixels per feature cell
        return x, cell

    def __call__(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, tuple[float, float]]]:
        import torch

        from icd_pipeline.misc.runtime import whole_image_inference

        prepared = [self._prepare(im) for im in images]
        out: list = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for k, (x, _) in enumerate(prepared):
            groups.setdefault(tuple(x.shape[2:]), []).append(k)
        with torch.inference_mode(), whole_image_inference(self.device):
            for idx in groups.values():
                x = torch.cat([prepared[k][0] for k in idx]).to(self.device)
                f = self.net(x)["icd"].float().cpu().numpy()
                for k, fk in zip(idx, f):
                    out[k] = (np.ascontiguousarray(fk), prepared[k][1])
        return out


# --------------------------------------------------------------------------- store


class SuperpixelStore:
    """Read superpixel maps from the HDF5 store: ``store(image_id) -> (H, W) int64``.

    The file is opened lazily, once per process; pickling drops the handle, so the store can
    be handed to DataLoader workers.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"{self.path}: superpixel file is missing")
        self._h5 = None
        self._pid = None

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._h5 = None
        self._pid = None

    def __call__(self, image_id: str) -> np.ndarray:
        f = self._file()
        if image_id not in f:
            raise KeyError(f"{self.path}: no superpixels for image id {image_id!r}")
        return f[image_id][()].astype(np.int64)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._file()

    @property
    def ids(self) -> list[str]:
        return list(self._file().keys())

    @property
    def attrs(self) -> dict:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self._file().attrs.items()}

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def write_map(h5: h5py.File, image_id: str, sp: np.ndarray) -> None:
    top = int(sp.max())
    dtype = np.uint8 if top < 1 << 8 else np.uint16 if top < 1 << 16 else np.uint32
    h5.create_dataset(image_id, data=sp.astype(dtype), compression="gzip", compression_opts=4, shuffle=True)


class GridSuperpixels:
    """Fallback superpixels for tests: square blocks of ``block`` pixels (picklable)."""

    def __init__(self, layout, block: int):
        if block < 1:
            raise ValueError(f"--grid-superpixels must be >= 1, got {block}")
        self.layout = layout
        self.block = block

    def __call__(self, image_id: str) -> np.ndarray:
        h, w = image_size(self.layout.image_path(image_id))
        ys = np.arange(h)[:, None] // self.block
        xs = np.arange(w)[None, :] // self.block
        return (ys * ((w + self.block - 1) // self.block) + xs).astype(np.int32)


def open_superpixels(path: str | Path):
    if not Path(path).is_file():
        raise DataError(f"{path}: superpixel file is missing (run the superpixels stage first)")
    return SuperpixelStore(path)


__all__ = ["felzenszwalb_segments", "relabel", "segment_features", "greedy_merge", "merge_superpixels",
           "DenseFeatures", "SuperpixelStore", "GridSuperpixels", "open_superpixels", "write_map",
           "FEATURE_BACKBONES"]
