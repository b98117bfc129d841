"""Frozen-backbone feature cache: backbone features of every training image computed once.

When the whole ICD backbone is frozen (``icd.frozen_stages`` covers every stage and its BN
layers run on their stored statistics), the backbone is a fixed function of the image, so
its features under the training augmentation's scales and flips can be computed once and
the heads (CAM fc6/fc7/fc8, ICD BN + directions + top-down head) trained from them for many
epochs. Enabled by ``icd.feature_cache: true``; ``train_icd`` refuses it for a backbone that
trains. ``stages.feature_cache`` writes the file.

What is cached: for each image and each variant (s, flip) with s in ``icd.scales`` (times
``icd.input_scale``) and flip in (no, yes), the image is resized exactly as the training
transform does (PIL bilinear to round(H * s) x round(W * s), then mirrored) and the backbone's
``out`` and ``icd`` features of the *whole* resized image are stored (float16, one row per
map cell). Training then draws a random variant per image and epoch and crops a window of
``ceil(crop_size / stride)`` cells (superpixels cropped to the same pixel window; zero
features and the padding superpixel id where the map is smaller than the window), which is
the image-space crop of the training transform moved to the feature grid: a cell near the
crop border sees the image beyond the crop, as it does in the full image.

File layout (HDF5)::

    attrs: format, version, settings (JSON of the icd keys that define the features),
           split, variants (JSON [[scale, flip], ...]), stride, out_channels, icd_channels
    /ids      fixed-width UTF-8 (N,)
    /index    int64 (N, V, 5): row offset, h, w, scaled_h, scaled_w of each image/variant
    /out      float16 (cells, C_out)   backbone "out" features, row = cell (row-major h, w)
    /icd      float16 (cells, C_icd)   backbone "icd" features
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np
import torch

from .config import ConfigError
from .data.voc import VOCLayout, _resize, multi_hot
from .misc.runtime import inference_memory_format, whole_image_inference

FORMAT = "icd-pipeline/feature-cache"
VERSION = 1
# the keys that define the cached features (anything else may change without a rebuild); the
# backbone's weights are checked by their fingerprint, its being frozen by check_backbone_frozen
SETTINGS_KEYS = ("backbone", "pretrained", "output_stride", "out_block", "input_scale", "scales")
# what the feature_cache stage reads of the icd section
BUILD_KEYS = SETTINGS_KEYS + ("frozen_stages", "freeze_bn", "num_workers")


class CacheError(ValueError):
    """A cache file that does not fit the model or config at hand (names the file)."""


def cache_settings(icd_cfg: dict) -> dict:
    return {k: icd_cfg.get(k) for k in SETTINGS_KEYS}


def backbone_fingerprint(backbone) -> str:
    """sha256 of the backbone's weights and buffers: the cache belongs to exactly these (a
    randomly initialised backbone differs with the seed)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def variants(icd_cfg: dict) -> list[tuple[float, bool]]:
    """(absolute scale, flip) pairs: every training scale times input_scale, plain and mirrored."""
    base = float(icd_cfg.get("input_scale", 1.0))
    return [(float(s) * base, flip) for s in icd_cfg["scales"] for flip in (False, True)]


def check_cache_argument(section_name: str, section: dict, feature_cache) -> None:
    """``<section>.feature_cache`` and the stage's ``--feature-cache`` file go together."""
    enabled = bool(section.get("feature_cache", False))
    if enabled != (feature_cache is not None):
        raise ConfigError(f"{section_name}.feature_cache is {enabled} but " + (
            "a --feature-cache file was given" if feature_cache is not None
            else "no --feature-cache file was given (run the feature_cache stage)"))


def check_backbone_frozen(model) -> None:
    """The cache is exact only for a backbone that is a fixed function: no trainable
    parameter and every BatchNorm on its stored statistics in training mode."""
    backbone = model.backbone
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    if trainable:
        raise ConfigError(
            f"icd.feature_cache needs a frozen backbone, but {len(trainable)} backbone parameters train "
            f"(first: {trainable[0]}): set icd.frozen_stages to the backbone's stage count "
            f"({len(backbone.stages())} for {backbone.name}) or icd.feature_cache: false")
    model.train()
    live_bn = [m for m in backbone.bn_modules() if m.training]
    model.eval()
    if live_bn:
        raise ConfigError("icd.feature_cache needs every backbone BatchNorm frozen (icd.freeze_bn: true or "
                          "all stages in icd.frozen_stages)")


def scaled_hw(hw: Sequence[int], scale: float) -> tuple[int, int]:
    """The training transform's size for scale ``scale`` (TrainTransform rounds the same way)."""
    return max(1, int(round(int(hw[0]) * scale))), max(1, int(round(int(hw[1]) * scale)))


def variant_image(image: np.ndarray, scale: float, flip: bool) -> torch.Tensor:
    """uint8 HxWx3 -> float (3, h, w) in [0, 1], resized and mirrored as TrainTransform does."""
    img = _resize(image, scaled_hw(image.shape[:2], scale), nearest=False)
    if flip:
        img = img[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(img.astype(np.float32).transpose(2, 0, 1) / 255.0))


@torch.inference_mode()
def compute_features(backbone, image: np.ndarray, var: Sequence[tuple[float, bool]], device: torch.device
                     ) -> list[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
    """(out (h, w, C_out), icd (h, w, C_icd), scaled_hw) float16 per variant; the variants of one
    scale run as one batch."""
    results: dict[int, tuple] = {}
    by_scale: dict[float, list[int]] = {}
    for vi, (s, _) in enumerate(var):
        by_scale.setdefault(s, []).append(vi)
    for s, vis in by_scale.items():
        x = torch.stack([variant_image(image, s, var[vi][1]) for vi in vis]).to(device)
        x = x.contiguous(memory_format=inference_memory_format(device))
        with whole_image_inference(device):  # float32: each image has its own size
            f = backbone(x)
        out = f["out"].float().permute(0, 2, 3, 1).to(torch.float16).cpu().numpy()
        icd = f["icd"].float().permute(0, 2, 3, 1).to(torch.float16).cpu().numpy()
        if out.shape[1:3] != icd.shape[1:3]:
            raise CacheError(f"backbone {backbone.name}: 'out' {out.shape[1:3]} and 'icd' {icd.shape[1:3]} grids differ")
        for j, vi in enumerate(vis):
            results[vi] = (out[j], icd[j], scaled_hw(image.shape[:2], s))
    return [results[vi] for vi in range(len(var))]


class FeatureCache:
    """The whole cache in memory (float16), read once: ``features(i, v) -> (out, icd)``
    as (h, w, C) arrays, ``ids``, ``variants``, ``index``."""

    def __init__(self, path: str | Path, icd_cfg: dict | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise CacheError(f"{self.path}: feature cache file is missing (run the feature_cache stage)")
        try:
            with h5py.File(self.path, "r") as h5:
                attrs = dict(h5.attrs)
                if attrs.get("format") != FORMAT:
                    raise CacheError(f"{self.path}: not a feature cache (format {attrs.get('format')!r})")
                self.ids = [s.decode() for s in h5["ids"][...]]
                self.index = h5["index"][...]
                self.out = h5["out"][...]
                self.icd = h5["icd"][...]
        except OSError as exc:
            raise CacheError(f"{self.path}: unreadable feature cache ({exc})") from exc
        self.settings = json.loads(attrs["settings"])
        self.variants = [(float(s), bool(f)) for s, f in json.loads(attrs["variants"])]
        self.split = str(attrs["split"])
        self.stride = int(attrs["stride"])
        self.backbone_sha256 = str(attrs["backbone_sha256"])
        if icd_cfg is not None:
            self.check_settings(icd_cfg)
        # any split whose images are all cached can read it (e.g. a subset list of the same
        # images); the readers name a missing image
        self.position = {image_id: i for i, image_id in enumerate(self.ids)}

    def check_settings(self, section: dict, name: str = "icd") -> None:
        """``section`` (icd, or deeplab with the same backbone) must define the cached features."""
        diff = {k: (self.settings.get(k), section.get(k)) for k in SETTINGS_KEYS if self.settings.get(k) != section.get(k)}
        if diff:
            raise CacheError(f"{self.path}: built with other settings than {name} (cache, {name}): {diff}; "
                             "rebuild it (snakemake reruns the feature_cache stage)")

    def check_backbone(self, backbone) -> None:
        if backbone_fingerprint(backbone) != self.backbone_sha256:
            raise CacheError(f"{self.path}: built from other backbone weights than this model's "
                             "(another seed or weights file); rebuild it")

    def features(self, i: int, v: int) -> tuple[np.ndarray, np.ndarray]:
        off, h, w = (int(x) for x in self.index[i, v, :3])
        return (self.out[off:off + h * w].reshape(h, w, -1), self.icd[off:off + h * w].reshape(h, w, -1))

    def variant_of(self, scale: float, flip: bool) -> int | None:
        for v, (s, f) in enumerate(self.variants):
            if abs(s - scale) < 1e-9 and f == flip:
                return v
        return None


def crop_window(grid_hw: Sequence[int], cells: int, rng: random.Random) -> tuple[int, int]:
    """Top-left cell of a random ``cells`` x ``cells`` window (0 along a side shorter than it)."""
    return rng.randint(0, max(int(grid_hw[0]) - cells, 0)), rng.randint(0, max(int(grid_hw[1]) - cells, 0))


def crop_features(feat: np.ndarray, top: int, left: int, cells: int) -> torch.Tensor:
    """(h, w, C) -> (C, cells, cells) float32, zero where the window leaves the map."""
    part = feat[top:top + cells, left:left + cells]
    out = np.zeros((feat.shape[2], cells, cells), dtype=np.float32)
    out[:, :part.shape[0], :part.shape[1]] = part.transpose(2, 0, 1)
    return torch.from_numpy(out)


def crop_label_map(labels: np.ndarray, shw: Sequence[int], flip: bool, top: int, left: int, cells: int,
                   stride: int, fill: int) -> torch.Tensor:
    """A per-pixel map (superpixel ids, mask) resized (nearest) to the variant's size, mirrored,
    padded with ``fill`` and cropped to the pixel window of the feature window."""
    labels = _resize(labels.astype(np.int32), (int(shw[0]), int(shw[1])), nearest=True)
    if flip:
        labels = labels[:, ::-1]
    size = cells * stride
    y0, x0 = top * stride, left * stride
    window = np.full((size, size), fill, dtype=np.int64)
    part = labels[y0:y0 + size, x0:x0 + size]
    window[:part.shape[0], :part.shape[1]] = part
    return torch.from_numpy(window)


def crop_superpixels(sp: np.ndarray, shw: Sequence[int], flip: bool, top: int, left: int, cells: int,
                     stride: int) -> torch.Tensor:
    """Superpixels of the window; outside the image the padding's own id (max + 1), as the
    training transform pads them."""
    return crop_label_map(sp, shw, flip, top, left, cells, stride, int(sp.max()) + 1)


class _CachedSamples(torch.utils.data.Dataset):
    """Per image and epoch a random cached variant (scale, flip) and a random crop window,
    drawn from (seed, epoch, index) like the image datasets."""

    def __init__(self, cache: FeatureCache, layout: VOCLayout, split: str, crop_size: int, seed: int = 0):
        self.cache, self.layout = cache, layout
        self.ids = layout.ids(split)
        missing = [i for i in self.ids if i not in cache.position]
        if missing:
            raise CacheError(f"{cache.path}: no features for {len(missing)} images of split {split!r} "
                             f"(first: {missing[0]}); rebuild the cache")
        self.cells = -(-int(crop_size) // cache.stride)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def draw(self, index: int):
        """(image id, cache row, variant, top, left) of this sample in this epoch."""
        image_id = self.ids[index]
        rng = random.Random(hash((self.seed, self.epoch, index)) & 0xFFFFFFFF)
        ci = self.cache.position[image_id]
        v = rng.randrange(len(self.cache.variants))
        h, w = (int(x) for x in self.cache.index[ci, v, 1:3])
        top, left = crop_window((h, w), self.cells, rng)
        return image_id, ci, v, top, left

    def window(self, labels: np.ndarray, ci: int, v: int, top: int, left: int, fill: int) -> torch.Tensor:
        return crop_label_map(labels, self.cache.index[ci, v, 3:5], self.cache.variants[v][1], top, left,
                              self.cells, self.cache.stride, fill)


class CachedSegmentationDataset(_CachedSamples):
    """DeepLab training samples from the cache: the ``out`` features of a window and its mask
    (ground truth or a pseudo-mask folder; 255 where the window leaves the image)."""

    def __init__(self, cache: FeatureCache, layout: VOCLayout, split: str, crop_size: int,
                 mask_dir: str | Path | None = None, seed: int = 0):
        super().__init__(cache, layout, split, crop_size, seed)
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None

    def mask_path(self, image_id: str) -> Path:
        return self.mask_dir / f"{image_id}.png" if self.mask_dir is not None else self.layout.mask_path(image_id)

    def __getitem__(self, index: int) -> dict:
        from .data.voc import VOID, read_mask

        image_id, ci, v, top, left = self.draw(index)
        out, _ = self.cache.features(ci, v)
        mask = read_mask(self.mask_path(image_id), self.layout.num_classes)
        return {"id": image_id, "out": crop_features(out, top, left, self.cells),
                "mask": self.window(mask, ci, v, top, left, VOID)}


class CachedTrainDataset(_CachedSamples):
    """ICD training samples from the cache: the window's ``out`` and ``icd`` features, its
    superpixels and the image-level label."""

    def __init__(self, cache: FeatureCache, layout: VOCLayout, split: str, crop_size: int,
                 superpixels: Callable[[str], np.ndarray], seed: int = 0):
        super().__init__(cache, layout, split, crop_size, seed)
        self.labels = {i: multi_hot(layout.labels(i), layout.num_fg) for i in self.ids}
        self.superpixels = superpixels

    def __getitem__(self, index: int) -> dict:
        image_id, ci, v, top, left = self.draw(index)
        out, icd = self.cache.features(ci, v)
        sp = self.superpixels(image_id)
        return {"id": image_id, "label": torch.from_numpy(self.labels[image_id]),
                "out": crop_features(out, top, left, self.cells), "icd": crop_features(icd, top, left, self.cells),
                "superpixels": crop_superpixels(sp, self.cache.index[ci, v, 3:5], self.cache.variants[v][1], top,
                                                left, self.cells, self.cache.stride)}

