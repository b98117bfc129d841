"""The embedded dataset: a small, deterministic WSSS benchmark in VOC layout.

Spec: ``shared/specs/embedded-dataset.md``. Every image holds 1 to ``max_objects`` objects of
distinct classes (about a third hold one only). All classes share one family of silhouettes
(smooth star-convex blobs: an ellipse whose radius is modulated by a few low Fourier
harmonics) and one body appearance (oriented sinusoidal stripes over the image's base
colour). The class is told *only* by a small **badge** inside each object: a disc in a
class-specific saturated colour and pattern (solid, dots, checker or rings) covering
``badge_fraction`` of the object's visible area, placed at a random spot of the visible part,
fully inside it and clear of the void band. A classifier trained on image labels needs only
the badge, so its CAM misses the body: the partial-activation problem ICD addresses.

The background is low-frequency colour noise plus isotropic mid-frequency noise, with 1-3
distractor blobs of the same silhouette family drawn in background-like (isotropic) texture,
so silhouettes, edges, mean colour and brightness do not tell objects apart; only the texture
statistics (oriented stripes) do. Base colour, brightness, contrast and an illumination
gradient vary per image; body colours differ from the background by a small random shift
(lighter or darker). Objects may touch the image border and each other; later objects
occlude earlier ones and the masks follow the occlusion. A layout is resampled until every
object keeps 60 % of its in-image area visible and its badge fits in the visible part (for
extreme parameters, e.g. 32-px images with a 2-px void band, an image that cannot fit its
drawn number of objects gets one fewer). About 29 % of the pixels are covered on average at
the defaults (single-object images about 16 %).

Ground truth (``SegmentationClass``): 0 background, 1..K the whole visible object (badge and
body), 255 a void band ``boundary_width`` px wide on the object side of every object boundary
(object/background and object/object, so between touching objects the band is twice as
wide). Image borders are not boundaries.

**Object size.** ``object_size`` [min, max] is the long-axis length of an object in pixels
*for a 96-px image* (the reference of the spec's prototype, where 38-66 px gives 25-30 % of
the pixels covered); it is scaled by ``image_size / 96``, so the default stays meaningful at
any ``image_size`` (e.g. 64 px images get 25-44 px objects). Pattern periods, stripe periods
and noise scales scale the same way.

Layout written by :func:`generate` (atomically: the folder appears complete or not at all)::

    out/JPEGImages/<id>.jpg                  quality 95, 4:4:4 chroma (badge colours survive)
    out/SegmentationClass/<id>.png           8-bit palette PNG (VOC palette)
    out/Annotations/<id>.xml                 VOC-style, one <object> per instance
    out/ImageSets/Segmentation/{train,val}.txt
    out/Saliency/<id>.png                    (saliency.enabled) SYNTHETIC saliency stand-in, 0-255
    out/dataset.json                         {"class_names", "generator" (params), "seed", ...}
    out/manifest.json                        written last

**Saliency stand-in** (``saliency.enabled``): the paper's image+saliency setting takes its
background from a saliency detector (DSS, trained with pixel labels). No detector runs here;
``Saliency/<id>.png`` is a *degraded copy of the ground-truth foreground*, documented as
synthetic: smooth random parts of the objects are missed (``saliency.miss`` of the object
area), smooth random background blobs are added (``saliency.false_positive`` times the
object area), and the result is blurred (``saliency.blur``, a Gaussian sigma in pixels at
96 px). It is drawn from its own generator (``[seed, split, i, 1]``), so the images and masks
are the same with or without it.

Ids are ``train_00000`` ..., ``val_00000`` .... Image ``i`` of split ``s`` (0 train, 1 val)
is drawn from ``np.random.default_rng([seed, s, i])``: the same seed and parameters give
byte-identical files (on the same platform and numpy version), and adding images to a
split leaves the existing ones unchanged.

Entry point::

    python -m icd_pipeline.stages.make_embedded_dataset --config config.yaml --out results/embedded/data
    python -m icd_pipeline.stages.make_embedded_dataset --config-json '{"seed":0,"dataset":{...}}' --out DIR
"""

from __future__ import annotations

import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from icd_pipeline.config import validate
from icd_pipeline.data.voc import VOID, write_palette_png
from icd_pipeline.misc.io import atomic_dir
from icd_pipeline.misc.progress import progress as progress_bar
from icd_pipeline.misc.runtime import get_logger

log = get_logger("icd_pipeline.data.synthetic")

REFERENCE_SIZE = 96          # object_size is given for images of this size
JPEG_QUALITY = 95
MAX_LAYOUT_TRIES = 200
MIN_VISIBLE_FRACTION = 0.6   # of an object's in-image area left visible after occlusion
CLEARANCE = math.sqrt(2.0)   # badge edge to visible outline, per px of void band (Chebyshev band)
SPLITS = ("train", "val")

# Saturated badge colours (RGB in [0, 1]); body and background stay far less saturated.
BADGE_COLOURS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("red", (0.90, 0.08, 0.08)),
    ("orange", (1.00, 0.55, 0.00)),
    ("yellow", (0.95, 0.90, 0.05)),
    ("green", (0.10, 0.75, 0.15)),
    ("cyan", (0.00, 0.85, 0.90)),
    ("blue", (0.10, 0.25, 0.95)),
    ("purple", (0.55, 0.10, 0.85)),
    ("magenta", (0.95, 0.10, 0.80)),
    ("lime", (0.55, 0.95, 0.00)),
    ("mint", (0.00, 0.95, 0.55)),
)
BADGE_PATTERNS = ("solid", "dots", "checker", "rings")
MAX_CLASSES = 2 * len(BADGE_COLOURS)


class BadgeSpec(NamedTuple):
    name: str
    colour: tuple[float, float, float]
    pattern: str


def badge_specs(num_classes: int) -> list[BadgeSpec]:
    """The badge of each object class (index c-1 for class id c). Classes 1-10 have distinct
    colours; class c+10 reuses class c's colour with a different pattern."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    specs = []
    for i in range(num_classes):
        j = i % len(BADGE_COLOURS)
        colour_name, colour = BADGE_COLOURS[j]
        pattern = BADGE_PATTERNS[j % 4] if i < len(BADGE_COLOURS) else BADGE_PATTERNS[(j + 2) % 4]
        specs.append(BadgeSpec(f"{colour_name}_{pattern}", colour, pattern))
    return specs


def class_names(num_classes: int) -> list[str]:
    """``["background", <K badge names>]``."""
    return ["background"] + [s.name for s in badge_specs(num_classes)]


def resolve_params(params: dict) -> dict:
    """The ``dataset.synthetic`` section validated against the config schema, defaults
    filled in; raises ConfigError (unknown key, wrong type) or ValueError (inconsistent)."""
    section = validate({"dataset": {"synthetic": dict(params)}}, "dataset.synthetic")["dataset"]["synthetic"]
    lo, hi = section["object_size"]
    if lo > hi:
        raise ValueError(f"dataset.synthetic.object_size: min {lo} exceeds max {hi}")
    flo, fhi = section["badge_fraction"]
    if flo > fhi:
        raise ValueError(f"dataset.synthetic.badge_fraction: min {flo} exceeds max {fhi}")
    if fhi > 0.5:
        raise ValueError(f"dataset.synthetic.badge_fraction: max {fhi} leaves too little body (at most 0.5)")
    scale = section["image_size"] / REFERENCE_SIZE
    if lo * scale < 8:
        raise ValueError(f"dataset.synthetic.object_size: {lo} px at {REFERENCE_SIZE} px is "
                         f"{lo * scale:.1f} px at image_size {section['image_size']} (need >= 8)")
    if hi * scale > 1.5 * section["image_size"]:
        raise ValueError(f"dataset.synthetic.object_size: max {hi} px (at {REFERENCE_SIZE} px) is too "
                         f"large for the image")
    return section


def object_size_px(params: dict) -> tuple[float, float]:
    """``object_size`` scaled from the 96-px reference to ``image_size``."""
    scale = params["image_size"] / REFERENCE_SIZE
    lo, hi = params["object_size"]
    return lo * scale, hi * scale


# --------------------------------------------------------------------------- rendering


class Rendered(NamedTuple):
    image: np.ndarray        # HxWx3 uint8
    mask: np.ndarray         # HxW uint8: 0 background, 1..K, 255 void band
    badge_mask: np.ndarray   # HxW uint8: class id where a badge is drawn, 0 elsewhere
    objects: list[dict]      # per instance, in drawing order: class_id, bbox (VOC 1-based), ...
    instances: np.ndarray    # HxW int16: 0 background, j+1 for objects[j] (visible part)


class _Shape(NamedTuple):
    cx: float
    cy: float
    semi_major: float
    semi_minor: float
    angle: float
    harmonics: np.ndarray    # (H, 3): order, amplitude, phase


def _sample_shape(rng: np.random.Generator, size_px: float, image_size: int, margin: float) -> _Shape:
    """A smooth star-convex blob of long-axis length ``size_px``; its centre at least
    ``margin * semi_major`` inside the image (so it may cross the border)."""
    a = size_px / 2.0
    b = a * rng.uniform(0.5, 0.9)
    lo = min(margin * a, image_size / 2.0)
    cx, cy = rng.uniform(lo, image_size - lo, size=2)
    orders = np.array([2.0, 3.0, 4.0, 5.0])
    amps = rng.uniform(0.0, 1.0, size=4) * np.array([0.16, 0.11, 0.07, 0.04])
    phases = rng.uniform(0.0, 2 * np.pi, size=4)
    return _Shape(float(cx), float(cy), a, b, float(rng.uniform(0, np.pi)),
                  np.stack([orders, amps, phases], axis=1))


def _signed_distance(shape: _Shape, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Approximate signed distance in px to the blob's outline (positive inside), measured
    along the ray from the centre; computed in the blob's bounding window only (-1e3 outside).

    The outline is ``r(theta) = 1 + sum_k a_k cos(k theta + phi_k)`` in the blob's normalised
    frame; ``cos(k theta + phi)`` is evaluated as ``Re(z**k e^{i phi})`` with ``z = e^{i theta}``."""
    size_y, size_x = xs.shape
    reach = shape.semi_major * (1.0 + float(shape.harmonics[:, 1].sum())) + 2.0
    x0, x1 = max(0, int(shape.cx - reach)), min(size_x, int(math.ceil(shape.cx + reach)))
    y0, y1 = max(0, int(shape.cy - reach)), min(size_y, int(math.ceil(shape.cy + reach)))
    sd = np.full(xs.shape, -1e3, np.float32)
    if x0 >= x1 or y0 >= y1:
        return sd
    dx = xs[y0:y1, x0:x1] - shape.cx
    dy = ys[y0:y1, x0:x1] - shape.cy
    c, s = math.cos(shape.angle), math.sin(shape.angle)
    u = (dx * c + dy * s) * (1.0 / shape.semi_major)
    v = (-dx * s + dy * c) * (1.0 / shape.semi_minor)
    rho = np.maximum(np.hypot(u, v), np.float32(1e-6))
    z = (u + 1j * v) / rho
    zk = z * z
    r = np.ones_like(u)
    for order, amp, phase in shape.harmonics:  # orders 2, 3, 4, ... (see _sample_shape)
        r += (zk * complex(float(amp) * math.cos(phase), float(amp) * math.sin(phase))).real
        zk = zk * z
    sd[y0:y1, x0:x1] = np.hypot(dx, dy) * (r / rho - 1.0)
    return sd


def _alpha(sd: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (>= 0.5 exactly where sd >= 0)."""
    return np.clip(sd + 0.5, 0.0, 1.0)


def _noise(rng: np.random.Generator, size: int, sigma: float, channels: int = 1) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation, shape (size, size, channels)."""
    field = rng.standard_normal((size, size, channels), dtype=np.float32)
    field = ndimage.gaussian_filter(field, sigma=(sigma, sigma, 0), mode="wrap", truncate=3.0)
    return field / (field.std() + 1e-6)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


def _num_objects(rng: np.random.Generator, max_objects: int) -> int:
    """1 with probability 1/3 (when more are possible), else uniform over 2..max_objects."""
    if max_objects <= 1 or rng.uniform() < 1.0 / 3.0:
        return 1
    return int(rng.integers(2, max_objects + 1))


def _void_band(instances: np.ndarray, width: int) -> np.ndarray:
    """Object pixels with a pixel of another instance (or background) within Chebyshev
    distance ``width``; the image border does not count."""
    padded = np.pad(instances, width, mode="edge")
    h, w = instances.shape
    band = np.zeros(instances.shape, bool)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            if dy or dx:
                band |= padded[width + dy:width + dy + h, width + dx:width + dx + w] != instances
    return band & (instances > 0)


def _badge_pattern(pattern: str, bx: np.ndarray, by: np.ndarray, scale: float,
                   phase: np.ndarray) -> np.ndarray:
    """True where the badge shows its secondary (dark) colour; bx, by relative to its centre."""
    if pattern == "solid":
        return np.zeros(bx.shape, bool)
    if pattern == "dots":
        p = 4.5 * scale
        mx = np.mod(bx + phase[0] * p, p) - p / 2
        my = np.mod(by + phase[1] * p, p) - p / 2
        return mx * mx + my * my <= (0.3 * p) ** 2
    if pattern == "checker":
        cell = 2.5 * scale
        return (np.floor(bx / cell + phase[0]) + np.floor(by / cell + phase[1])).astype(np.int64) % 2 == 1
    if pattern == "rings":
        p = 4.5 * scale
        return np.mod(np.hypot(bx, by), p) >= 0.55 * p
    raise ValueError(f"unknown badge pattern {pattern!r}")


def _layout(rng: np.random.Generator, n: int, params: dict):
    """Sample ``n`` object shapes and a badge place in each; resample until every object keeps
    ``MIN_VISIBLE_FRACTION`` of its in-image area after occlusion (later objects on top) and
    its visible part holds a badge disc of ``badge_fraction`` of that part's area with
    clearance from the void band. Returns (shapes, signed distances, instance map, badges as
    (cx, cy, radius, fraction)), or None after ``MAX_LAYOUT_TRIES`` failures."""
    size = int(params["image_size"])
    width = int(params["boundary_width"])
    size_lo, size_hi = object_size_px(params)
    frac_lo, frac_hi = params["badge_fraction"]
    coords = np.arange(size, dtype=np.float32) + 0.5
    xs, ys = np.meshgrid(coords, coords)
    for _ in range(MAX_LAYOUT_TRIES):
        shapes = [_sample_shape(rng, rng.uniform(size_lo, size_hi), size, margin=0.45) for _ in range(n)]
        sds = [_signed_distance(s, xs, ys) for s in shapes]
        instances = np.zeros((size, size), np.int16)
        for j, sd in enumerate(sds):
            instances[sd >= 0] = j + 1
        badges = []
        for j, sd in enumerate(sds):
            visible = instances == j + 1
            area, full = int(visible.sum()), int((sd >= 0).sum())
            if area < MIN_VISIBLE_FRACTION * full or area < 16:
                break
            frac = rng.uniform(frac_lo, frac_hi)
            radius = math.sqrt(frac * area / math.pi)
            dist = ndimage.distance_transform_edt(np.pad(visible, 1))[1:-1, 1:-1]
            candidates = np.flatnonzero(dist >= radius + CLEARANCE * width + 0.25)
            if candidates.size == 0:
                break
            k = int(candidates[rng.integers(candidates.size)])
            badges.append((k % size + 0.5, k // size + 0.5, radius, frac))
        if len(badges) == n:
            return shapes, sds, instances, badges
    return None


def render_image(rng: np.random.Generator, params: dict) -> Rendered:
    """Draw one image from ``rng``; ``params`` is a resolved ``dataset.synthetic`` section
    (:func:`resolve_params`)."""
    size = int(params["image_size"])
    num_classes = int(params["num_classes"])
    width = int(params["boundary_width"])
    scale = size / REFERENCE_SIZE
    size_lo, size_hi = object_size_px(params)
    specs = badge_specs(num_classes)

    coords = np.arange(size, dtype=np.float32) + 0.5
    xs, ys = np.meshgrid(coords, coords)

    n = _num_objects(rng, min(int(params["max_objects"]), num_classes))
    classes = [int(c) + 1 for c in rng.choice(num_classes, size=n, replace=False)]

    # --- layout: shapes, occlusion, badge places (fewer objects if n of them cannot fit)
    layout = _layout(rng, n, params)
    while layout is None:
        if n == 1:
            raise ValueError(f"could not place an object with its badge in {MAX_LAYOUT_TRIES} tries: "
                             f"object_size {params['object_size']} / badge_fraction "
                             f"{params['badge_fraction']} do not fit image_size {size}")
        n -= 1
        classes = classes[:n]
        layout = _layout(rng, n, params)
    shapes, sds, instances, badges = layout

    # --- background: base colour, low-frequency colour noise, isotropic mid-frequency noise
    base = _hsv_to_rgb(rng.uniform(), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.7))
    low = _noise(rng, size, 6.0 * scale, 1)
    low_chroma = _noise(rng, size, 6.0 * scale, 3)
    gx, gy = rng.uniform(-0.12, 0.12), rng.uniform(-0.12, 0.12)
    light = (0.09 * low[..., 0] + gx * (xs / size - 0.5) + gy * (ys / size - 0.5))[..., None]
    mid_amp = rng.uniform(0.05, 0.09)
    image = base + light + 0.03 * low_chroma + mid_amp * _noise(rng, size, rng.uniform(0.8, 1.3) * scale, 1)

    def tint() -> np.ndarray:
        """A body/distractor colour near the base: lighter or darker, slightly shifted hue."""
        return (rng.uniform(-0.10, 0.10) + rng.normal(0.0, 0.025, size=3)).astype(np.float32)

    # --- distractors: same silhouettes, background-like (isotropic) texture, under the objects
    for _ in range(int(rng.integers(1, 4))):
        shape = _sample_shape(rng, rng.uniform(0.5, 1.0) * rng.uniform(size_lo, size_hi), size, margin=0.2)
        alpha = _alpha(_signed_distance(shape, xs, ys))[..., None]
        texture = (base + tint() + light + 0.03 * low_chroma
                   + rng.uniform(0.05, 0.09) * _noise(rng, size, rng.uniform(0.8, 1.5) * scale, 1))
        image = image * (1 - alpha) + texture * alpha

    # --- objects: shared body appearance (oriented stripes), drawn in order (later on top)
    for shape, sd in zip(shapes, sds):
        period = rng.uniform(4.0, 6.5) * scale
        theta = rng.uniform(0, np.pi)
        proj = xs * math.cos(theta) + ys * math.sin(theta)
        stripes = np.sin(2 * np.pi * proj / period + rng.uniform(0, 2 * np.pi))[..., None]
        texture = (base + tint() + light + 0.03 * low_chroma + rng.uniform(0.06, 0.12) * stripes
                   + 0.025 * _noise(rng, size, 1.0 * scale, 1))
        alpha = _alpha(sd)[..., None]
        image = image * (1 - alpha) + texture * alpha

    # --- per-image contrast and brightness (not applied to the badges)
    mean = image.mean(axis=(0, 1), keepdims=True)
    image = (image - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-0.06, 0.06)

    # --- badges: class colour and pattern, hard-edged discs
    badge_mask = np.zeros((size, size), np.uint8)
    objects = []
    for j, ((bx, by, radius, frac), cls) in enumerate(zip(badges, classes)):
        spec = specs[cls - 1]
        rx, ry = xs - bx, ys - by
        disc = rx * rx + ry * ry <= radius * radius
        secondary = _badge_pattern(spec.pattern, rx, ry, scale, rng.uniform(0, 1, size=2))
        colour = np.asarray(spec.colour, np.float32) * rng.uniform(0.92, 1.0)
        pixels = np.where(secondary[..., None], colour * 0.3, colour)
        image = np.where(disc[..., None], pixels, image)
        badge_mask[disc] = cls
        visible = instances == j + 1
        yy, xx = np.nonzero(visible)
        bbox = (int(xx.min()) + 1, int(yy.min()) + 1, int(xx.max()) + 1, int(yy.max()) + 1)
        objects.append({
            "class_id": cls,
            "name": spec.name,
            "bbox": bbox,  # xmin, ymin, xmax, ymax, VOC 1-based inclusive
            "truncated": int(bbox[0] == 1 or bbox[1] == 1 or bbox[2] == size or bbox[3] == size),
            "occluded": int(int(visible.sum()) < int((sds[j] >= 0).sum())),
            "area": int(visible.sum()),
            "badge_fraction": float(frac),
        })

    image = image + 0.015 * rng.standard_normal(image.shape, dtype=np.float32)
    image_u8 = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)

    mask = np.zeros((size, size), np.uint8)
    lut = np.array([0] + classes, np.uint8)
    mask[:] = lut[instances]
    mask[_void_band(instances, width)] = VOID
    return Rendered(image_u8, mask, badge_mask, objects, instances)


# --------------------------------------------------------------------------- writing


def annotation_xml(image_id: str, size: int, objects: list[dict]) -> bytes:
    """A VOC-style annotation: filename, size, one <object> per instance."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "embedded"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    src = ET.SubElement(root, "source")
    ET.SubElement(src, "database").text = "icd-pipeline embedded dataset"
    sz = ET.SubElement(root, "size")
    ET.SubElement(sz, "width").text = str(size)
    ET.SubElement(sz, "height").text = str(size)
    ET.SubElement(sz, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "1"
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj["name"]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(obj["truncated"])
        ET.SubElement(node, "occluded").text = str(obj["occluded"])
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), obj["bbox"]):
            ET.SubElement(box, key).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def render_saliency(rng: np.random.Generator, mask: np.ndarray, params: dict) -> np.ndarray:
    """The synthetic saliency stand-in (uint8 H x W) for a ground-truth mask; see the module doc."""
    cfg = params["saliency"]
    h, w = mask.shape
    scale = params["image_size"] / REFERENCE_SIZE
    fg = mask != 0                      # objects incl. their void band
    sal = fg.astype(np.float32)
    n_fg = int(fg.sum())
    if n_fg and cfg["miss"] > 0:
        field = ndimage.gaussian_filter(rng.standard_normal((h, w)), 6 * scale)
        cut = np.quantile(field[fg], cfg["miss"])
        sal[fg & (field < cut)] = 0.0
    bg = ~fg
    if n_fg and bg.any() and cfg["false_positive"] > 0:
        field = ndimage.gaussian_filter(rng.standard_normal((h, w)), 6 * scale)
        share = min(cfg["false_positive"] * n_fg / bg.sum(), 1.0)
        cut = np.quantile(field[bg], 1.0 - share)
        sal[bg & (field >= cut)] = 1.0
    if cfg["blur"] > 0:
        sal = ndimage.gaussian_filter(sal, cfg["blur"] * scale)
    return np.clip(np.round(sal * 255.0), 0, 255).astype(np.uint8)


def generate(out_dir: str | Path, params: dict, seed: int, progress: bool = True) -> dict:
    """Write the embedded dataset (VOC layout) into ``out_dir``, atomically; return the
    manifest. ``params``: the ``dataset.synthetic`` config section (defaults are filled in
    for missing keys); ``seed``: the run's seed (>= 0)."""
    params = resolve_params(params)
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out_dir = Path(out_dir)
    names = class_names(params["num_classes"])
    counts = {"train": int(params["num_train"]), "val": int(params["num_val"])}
    size = int(params["image_size"])
    with atomic_dir(out_dir) as tmp:
        folders = ("JPEGImages", "SegmentationClass", "Annotations") + (
            ("Saliency",) if params["saliency"]["enabled"] else ())
        dirs = {name: tmp / name for name in folders}
        for d in dirs.values():
            d.mkdir()
        (tmp / "ImageSets" / "Segmentation").mkdir(parents=True)
        bar = progress_bar(total=sum(counts.values()), desc="embedded dataset", unit=" images",
                   file=sys.stderr, disable=not progress)
        with bar:
            for split_index, split in enumerate(SPLITS):
                ids = []
                for i in range(counts[split]):
                    image_id = f"{split}_{i:05d}"
                    out = render_image(np.random.default_rng([seed, split_index, i]), params)
                    Image.fromarray(out.image).save(dirs["JPEGImages"] / f"{image_id}.jpg", format="JPEG",
                                                    quality=JPEG_QUALITY, subsampling=0, optimize=False)
                    write_palette_png(dirs["SegmentationClass"] / f"{image_id}.png", out.mask)
                    (dirs["Annotations"] / f"{image_id}.xml").write_bytes(
                        annotation_xml(image_id, size, out.objects))
                    if "Saliency" in dirs:
                        sal = render_saliency(np.random.default_rng([seed, split_index, i, 1]), out.mask, params)
                        Image.fromarray(sal, mode="L").save(dirs["Saliency"] / f"{image_id}.png")
                    ids.append(image_id)
                    bar.update(1)
                (tmp / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        meta = {
            "class_names": names,
            "generator": params,
            "seed": seed,
            "object_size_px": list(object_size_px(params)),
            "badges": {s.name: {"colour": list(s.colour), "pattern": s.pattern}
                       for s in badge_specs(params["num_classes"])},
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        manifest = {"source": "synthetic", "root": str(out_dir), "class_names": names, "splits": counts}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("%s: %d train + %d val images, %d classes", out_dir, counts["train"], counts["val"],
             params["num_classes"])
    return manifest

