"""Seeds from ICD scores and the CAM baseline (spec 5.2), as pure numpy functions.

Inputs are per-image maps of the *present* classes only (K = number of classes in the
image-level label), sorted by class id, at image resolution (see :func:`upsample_maps`).
Outputs are uint8 label maps: 0 background, class id on foreground, 255 ignore.

Geometry of :func:`upsample_maps`. The maps file stores maps on the feature grid of the
network input, which is the image scaled by ``input_scale`` and padded bottom/right. The
part of the grid that covers the image is ``maps[:, :vh, :vw]`` (``valid_hw``); it is
resized bilinearly, with PyTorch/OpenCV ``align_corners=False`` semantics (pixel centres at
``i + 0.5``, source coordinate ``(y + 0.5) * vh / H - 0.5`` clamped to the grid, edge
replicated), to the image size ``(H, W)``. When the cell size is known (``cell`` = stride *
H / scaled_H image pixels per cell) the source coordinate is ``(y + 0.5) / cell - 0.5``
instead, which is exact when the last cell reaches into the padding; both are the same when
the scaled image is a whole number of cells (the embedded dataset: 96 px x 2 / 16 = 12).
The official code resizes the whole padded grid (65 -> 513) and crops, which is the exact-cell
variant with cell = 513 / 65.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

VOID = 255
EPS = 1e-5


def _linear_weights(out_len: int, in_len: int, cell: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices i0, i1 and weight of i1 for resizing ``in_len`` samples to ``out_len``
    (align_corners=False, edges clamped). ``cell``: output pixels per input sample
    (default ``out_len / in_len``, i.e. the input grid spans the output exactly)."""
    cell = out_len / in_len if cell is None else float(cell)
    src = (np.arange(out_len, dtype=np.float64) + 0.5) / cell - 0.5
    src = np.clip(src, 0.0, in_len - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_len - 1)
    return i0, i1, src - i0


def resize_bilinear(maps: np.ndarray, out_hw: tuple[int, int],
                    cell: tuple[float, float] | None = None) -> np.ndarray:
    """Bilinear resize of a (K, h, w) stack to (K, H, W), align_corners=False, float32.

    ``cell`` = (cy, cx): output pixels per map cell, when the grid does not span the output
    exactly (its last cells reach into padding); cell (i, j) is centred on output pixel
    ((i + 0.5) cy, (j + 0.5) cx)."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (K, h, w), got shape {maps.shape}")
    H, W = int(out_hw[0]), int(out_hw[1])
    _, h, w = maps.shape
    if (h, w) == (H, W) and (cell is None or tuple(cell) == (1.0, 1.0)):
        return maps.copy()
    y0, y1, wy = _linear_weights(H, h, None if cell is None else cell[0])
    x0, x1, wx = _linear_weights(W, w, None if cell is None else cell[1])
    wy = wy.astype(np.float32)[None, :, None]
    wx = wx.astype(np.float32)[None, None, :]
    rows = maps[:, y0, :] * (1 - wy) + maps[:, y1, :] * wy          # (K, H, w)
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx           # (K, H, W)


def upsample_maps(maps: np.ndarray, out_hw: tuple[int, int], valid_hw: tuple[int, int] | None = None,
                  cell: tuple[float, float] | None = None) -> np.ndarray:
    """Crop the map grid to ``valid_hw`` (the cells covering the image; all of it when None)
    and resize it bilinearly (align_corners=False) to the image size ``out_hw``.

    With ``cell`` (image pixels per map cell, ``stride * H / scaled_H`` per axis) the exact
    cell geometry is used instead of stretching the valid grid over the image; the two agree
    when the scaled image is a whole number of cells."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (K, h, w), got shape {maps.shape}")
    if valid_hw is not None:
        vh, vw = int(valid_hw[0]), int(valid_hw[1])
        if not (0 < vh <= maps.shape[1] and 0 < vw <= maps.shape[2]):
            raise ValueError(f"valid_hw {valid_hw} outside the map grid {maps.shape[1:]}")
        maps = maps[:, :vh, :vw]
    return resize_bilinear(maps, out_hw, cell)


def _check(td: np.ndarray, class_ids: Sequence[int], name: str) -> None:
    if td.ndim != 3:
        raise ValueError(f"{name} must be (K, H, W), got shape {td.shape}")
    if td.shape[0] != len(class_ids):
        raise ValueError(f"{name} has {td.shape[0]} maps for {len(class_ids)} class ids")
    if len(class_ids) == 0:
        raise ValueError("no class ids: an image needs at least one image-level label")
    if any(not (0 < int(c) < VOID) for c in class_ids):
        raise ValueError(f"class ids must be in 1..254, got {list(class_ids)}")


def minmax_normalise(x: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min) over the whole array (jointly over classes and pixels)."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / max(hi - lo, EPS)


def relu_max_normalise(x: np.ndarray) -> np.ndarray:
    """ReLU(x) divided by each map's maximum (K, H, W -> per class; a map without a positive
    value stays 0): the per-class normalisation of the CAM and top-down seeds."""
    x = np.maximum(np.asarray(x, dtype=np.float32), 0)
    return x / np.maximum(x.max(axis=(1, 2), keepdims=True), EPS)


def _check_threshold(value: float, name: str) -> float:
    t = float(value)
    if not 0 < t < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return t


def _fallback_rows(class_ids: Sequence[int], cam_fallback: Sequence[int]) -> np.ndarray:
    """(K,) bool: which of the present classes take their seed from the CAM."""
    unknown = set(int(c) for c in cam_fallback) - set(int(c) for c in class_ids)
    if unknown:
        raise ValueError(f"cam_fallback classes {sorted(unknown)} are not among the image's {list(class_ids)}")
    return np.asarray([int(c) in set(int(f) for f in cam_fallback) for c in class_ids], dtype=bool)


def _icd_parts(td: np.ndarray, cam: np.ndarray | None, class_ids: Sequence[int], icd_bg_threshold: float = EPS,
               icd_fg_threshold: float = EPS, cam_fallback: Sequence[int] = (), cam_threshold: float = 0.3):
    """Shared by the two seed modes: (labels of the winning class, FG, ICD background,
    ties to ignore on FG)."""
    icd_bg_threshold = _check_threshold(icd_bg_threshold, "icd_bg_threshold")
    icd_fg_threshold = _check_threshold(icd_fg_threshold, "icd_fg_threshold")
    td = np.asarray(td, dtype=np.float32)
    _check(td, class_ids, "td")
    labels = np.asarray([int(c) for c in class_ids], dtype=np.uint8)
    k = td.shape[0]
    p = relu_max_normalise(td)
    proposal = p > icd_fg_threshold
    neg = np.minimum(td, 0) / np.minimum(td.min(axis=(1, 2), keepdims=True), -EPS)
    says_bg = neg > icd_bg_threshold
    fallback = _fallback_rows(class_ids, cam_fallback)
    if fallback.any():  # these classes' seeds come from the CAM (cam_seed's rule)
        if cam is None or np.shape(cam) != td.shape:
            raise ValueError("cam maps of the same shape as td are needed for the CAM fallback")
        cam_n = relu_max_normalise(cam)
        p[fallback] = cam_n[fallback]
        proposal[fallback] = cam_n[fallback] >= cam_threshold
        says_bg[fallback] = cam_n[fallback] < cam_threshold
    candidate = proposal.argmax(axis=0)
    tie = np.zeros(td.shape[1:], bool)
    if k > 1:
        if cam is None:
            raise ValueError("cam maps are needed to resolve conflicts when K > 1")
        cam = np.asarray(cam, dtype=np.float32)
        if cam.shape != td.shape:
            raise ValueError(f"cam shape {cam.shape} differs from td shape {td.shape}")
        q = minmax_normalise(np.maximum(cam, 0)) * p
        conflict = proposal.sum(axis=0) > 1
        candidate = np.where(conflict, q.argmax(axis=0), candidate)
        tie = (q.max(axis=0) - q.min(axis=0)) <= EPS
    fg = proposal.any(axis=0)
    icd_bg = says_bg.all(axis=0)
    return labels[candidate], fg, icd_bg, tie & fg


def _compose(seed: np.ndarray, fg: np.ndarray, bg: np.ndarray, tie: np.ndarray) -> np.ndarray:
    seed = seed.copy()
    seed[bg] = 0
    seed[~(fg ^ bg) | tie] = VOID
    return seed


def icd_seed(td: np.ndarray, cam: np.ndarray | None, class_ids: Sequence[int],
             icd_bg_threshold: float = EPS, icd_fg_threshold: float = EPS, cam_fallback: Sequence[int] = (),
             cam_threshold: float = 0.3) -> np.ndarray:
    """ICD seed (spec 5.2; the official ``_generate_seed`` without saliency).

    ``td``: top-down ICD logits T (K, H, W); ``cam``: CAM logits (K, H, W), needed when K > 1;
    ``class_ids``: the K present class ids (1-based) in map order.

    - P_c = max(T_c, 0) / max(max T_c, 1e-5); fg_c = P_c > f with f = ``icd_fg_threshold``
      (1e-5 in the authors' code: any positive logit); candidate = first fg class. A larger f
      leaves the weakly positive band, where the top-down map spills past the object, as 255
      (the foreground counterpart of ``icd_bg_threshold``).
    - K > 1: Q = N(ReLU(CAM)) * P with N a min-max normalisation over the whole K x H x W
      array; where several classes propose foreground the class is argmax_c Q_c.
    - FG = any fg_c. BG = for every class min(T_c, 0) / min(min T_c, -1e-5) > t, with
      t = ``icd_bg_threshold``: 1e-5 in the authors' code (any negative logit is background);
      a larger t asks a background pixel to be at least t of the way to the class's most
      negative logit, and leaves the weakly negative band, where the top-down branch misses
      object parts, as 255 (as IRN's background-confidence threshold does for CAM).
    - ignore = not (FG xor BG); with K > 1 also FG pixels where max_c Q - min_c Q <= 1e-5.
    - label = class id on FG, 0 on BG, 255 on ignore.

    ``cam_fallback`` (issue 33, ``seeds.cam_fallback_below``): present class ids whose ICD
    direction disagreed with the CAM in training; for them P_c is the max-normalised ReLU(CAM),
    fg_c = P_c >= ``cam_threshold`` and they call background where P_c < ``cam_threshold``
    (the CAM seed's rule, :func:`cam_seed`). When every present class falls back the seed is
    :func:`cam_seed` exactly.
    """
    if len(cam_fallback) and len(class_ids) and _fallback_rows(class_ids, cam_fallback).all():
        if cam is None:
            raise ValueError("cam maps are needed for the CAM fallback")
        return cam_seed(cam, class_ids, cam_threshold)
    seed, fg, icd_bg, tie = _icd_parts(td, cam, class_ids, icd_bg_threshold, icd_fg_threshold, cam_fallback,
                                       cam_threshold)
    return _compose(seed, fg, icd_bg, tie)


def saliency_seed(td: np.ndarray, cam: np.ndarray | None, class_ids: Sequence[int], saliency: np.ndarray,
                  bg_threshold: float = 0.01, min_salient_area: float = 0.01,
                  icd_bg_threshold: float = EPS, icd_fg_threshold: float = EPS, cam_fallback: Sequence[int] = (),
                  cam_threshold: float = 0.3) -> np.ndarray:
    """ICD seed with the background taken from a saliency map (spec 5.4, ``--use-sal``).

    ``saliency``: (H, W) in [0, 1]. FG and conflicts as :func:`icd_seed`; BG = saliency <
    ``bg_threshold``; when the salient area (saliency >= ``bg_threshold``) is under
    ``min_salient_area`` of the image, BG must also be ICD background (``icd_bg_threshold`` and
    ``icd_fg_threshold`` as in :func:`icd_seed`). Pixels where ICD foreground and saliency background disagree (both
    or neither) become 255. ``cam_fallback`` / ``cam_threshold`` as in :func:`icd_seed`.
    """
    seed, fg, icd_bg, tie = _icd_parts(td, cam, class_ids, icd_bg_threshold, icd_fg_threshold, cam_fallback,
                                       cam_threshold)
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.shape != fg.shape:
        raise ValueError(f"saliency shape {saliency.shape} differs from the maps' {fg.shape}")
    bg = saliency < bg_threshold
    if (~bg).mean() < min_salient_area:
        bg &= icd_bg
    return _compose(seed, fg, bg, tie)


SALIENCY_ASSIGN = ("agree", "all")


def _top_two_tie(scores: np.ndarray) -> np.ndarray:
    """Pixels whose two best class scores are within EPS (nothing to choose between them)."""
    if scores.shape[0] < 2:
        return np.zeros(scores.shape[1:], bool)
    top = np.sort(scores, axis=0)[-2:]
    return (top[1] - top[0]) <= EPS


def _cam_parts(cam: np.ndarray, class_ids: Sequence[int], bg_threshold: float):
    """(labels of the best class, FG, CAM background, ties) of the CAM baseline: ReLU(CAM)
    normalised per class by its maximum, FG where the best class reaches ``bg_threshold``."""
    cam = np.asarray(cam, dtype=np.float32)
    _check(cam, class_ids, "cam")
    labels = np.asarray([int(c) for c in class_ids], dtype=np.uint8)
    a = relu_max_normalise(cam)
    fg = a.max(axis=0) >= bg_threshold
    return labels[a.argmax(axis=0)], fg, ~fg, _top_two_tie(a)


def _icd_all_labels(td: np.ndarray, class_ids: Sequence[int], seed_labels: np.ndarray, fg: np.ndarray,
                    tie: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ICD's class for every pixel: the seed's class where ICD proposes foreground, elsewhere
    the class whose top-down logit is largest relative to its own maximum (ties there: 255)."""
    td = np.asarray(td, dtype=np.float32)
    labels = np.asarray([int(c) for c in class_ids], dtype=np.uint8)
    rel = td / np.maximum(np.abs(td).max(axis=(1, 2), keepdims=True), EPS)
    out = np.where(fg, seed_labels, labels[rel.argmax(axis=0)])
    return out, np.where(fg, tie, _top_two_tie(rel))


def salient_seed(labels: np.ndarray, fg: np.ndarray, classifier_bg: np.ndarray, tie: np.ndarray,
                 saliency: np.ndarray, bg_threshold: float = 0.01, min_salient_area: float = 0.01,
                 assign: str = "agree") -> np.ndarray:
    """A seed whose background comes from a saliency map and whose classes come from a
    classifier (``labels``: its class per pixel; ``fg`` / ``classifier_bg``: its own seed's
    foreground and background; ``tie``: pixels it cannot decide, 255).

    BG = saliency < ``bg_threshold``; when the salient area is under ``min_salient_area`` of
    the image, BG must also be the classifier's background (the saliency map missed the
    object). ``assign``:

    - ``agree`` (the paper's, spec 5.4): FG = the classifier's foreground; pixels where FG
      and BG disagree (both or neither) are 255;
    - ``all``: every pixel that is not BG takes the classifier's class (no 255 but ties):
      the saliency map decides where the objects are, the classifier only which they are.
    """
    if assign not in SALIENCY_ASSIGN:
        raise ValueError(f"saliency assign must be one of {SALIENCY_ASSIGN}, got {assign!r}")
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.shape != fg.shape:
        raise ValueError(f"saliency shape {saliency.shape} differs from the maps' {fg.shape}")
    bg = saliency < bg_threshold
    if (~bg).mean() < min_salient_area:
        bg &= classifier_bg
    if assign == "agree":
        return _compose(labels, fg, bg, tie & fg)
    seed = labels.copy()
    seed[bg] = 0
    seed[~bg & tie] = VOID
    return seed


def saliency_seeds(td: np.ndarray, cam: np.ndarray, class_ids: Sequence[int], saliency: np.ndarray,
                   bg_threshold: float = 0.01, min_salient_area: float = 0.01, assign: str = "agree",
                   cam_bg_threshold: float = 0.3, icd_bg_threshold: float = EPS,
                   icd_fg_threshold: float = EPS, cam_fallback: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """The two image+saliency seeds of one image, ``{"cam": ..., "icd": ...}``: the classes of
    the salient pixels from the CAM baseline (:func:`cam_seed`'s scores) and from ICD
    (:func:`icd_seed`'s, with ``cam_fallback`` as there), each through :func:`salient_seed`."""
    icd_labels, icd_fg, icd_bg, icd_tie = _icd_parts(td, cam, class_ids, icd_bg_threshold, icd_fg_threshold,
                                                     cam_fallback, cam_bg_threshold)
    if assign == "all":
        icd_labels, icd_tie = _icd_all_labels(td, class_ids, icd_labels, icd_fg, icd_tie)
    cam_labels, cam_fg, cam_bg, cam_tie = _cam_parts(cam, class_ids, cam_bg_threshold)
    return {
        "cam": salient_seed(cam_labels, cam_fg, cam_bg, cam_tie, saliency, bg_threshold, min_salient_area, assign),
        "icd": salient_seed(icd_labels, icd_fg, icd_bg, icd_tie, saliency, bg_threshold, min_salient_area, assign),
    }


def cam_fallback_classes(agreement: Sequence[float] | None, below: float | None) -> list[int]:
    """Class ids (1-based) whose ICD direction's agreement with the CAM (the model's
    ``working_agreement``, index = class id - 1) is below ``below`` (``seeds.cam_fallback_below``;
    None: no fallback, the paper)."""
    if below is None:
        return []
    if agreement is None or any(a is None or a != a for a in agreement):
        raise ValueError("seeds.cam_fallback_below needs the per-class agreement of the ICD directions with the "
                         "CAM, which this model/maps file does not record (retrain it with this version)")
    return [c + 1 for c, a in enumerate(agreement) if float(a) < float(below)]


def image_agreement(td: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """(K,) Pearson correlation of each present class's top-down logits with its CAM over one
    image's map cells (``td``, ``cam``: (K, h, w); 0 where either map is flat). A label-free
    check, per image, that ICD's direction points the CAM's way (issue 33): on the sample's
    flock-on-grass images sheep's top-down map is the grass, anti-correlated with the CAM."""
    td = np.asarray(td, dtype=np.float64)
    cam = np.asarray(cam, dtype=np.float64)
    if td.ndim != 3 or td.shape != cam.shape:
        raise ValueError(f"td and cam must be (K, h, w) of one shape, got {td.shape} and {cam.shape}")
    a = td.reshape(td.shape[0], -1)
    b = cam.reshape(cam.shape[0], -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(den > 1e-12, (a * b).sum(axis=1) / np.maximum(den, 1e-12), 0.0)


def image_gate_classes(td: np.ndarray, cam: np.ndarray, class_ids: Sequence[int], below: float | None) -> list[int]:
    """The present class ids whose top-down map agrees with their CAM in this image
    (:func:`image_agreement`) less than ``below`` (``seeds.icd_image_gate``; None: none, the paper)."""
    if below is None or len(class_ids) == 0:
        return []
    agreement = image_agreement(td, cam)
    return [int(c) for c, a in zip(class_ids, agreement) if a < float(below)]


def image_spread(td: np.ndarray, cam: np.ndarray, fg_threshold: float, cam_threshold: float) -> np.ndarray:
    """(K,) per present class: the share of the image the top-down map calls foreground (N(T) above
    ``fg_threshold``, the ICD seed's rule) over the share the CAM does (N(CAM) at least
    ``cam_threshold``, the CAM seed's); N is ReLU over the map's maximum. ICD is meant to extend
    the CAM to the whole object, so a ratio of 1-2 is expected; far above that the direction has
    flooded the background (issue 33: tvmonitor, pottedplant and train on the sample). A class
    the CAM leaves empty counts as one pixel of CAM foreground."""
    return spread_ratio(*image_extent(td, cam, fg_threshold, cam_threshold))


def image_extent(td: np.ndarray, cam: np.ndarray, fg_threshold: float, cam_threshold: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(K,) pixel counts per present class: the top-down map's foreground (N(T) above
    ``fg_threshold``) and the CAM's (N(CAM) at least ``cam_threshold``); :func:`image_spread`'s
    ratio and :func:`image_gate_for`'s cover share both come from them."""
    td = np.asarray(td, dtype=np.float32)
    cam = np.asarray(cam, dtype=np.float32)
    if td.ndim != 3 or td.shape != cam.shape:
        raise ValueError(f"td and cam must be (K, H, W) of one shape, got {td.shape} and {cam.shape}")
    td_fg = (relu_max_normalise(td) > float(fg_threshold)).sum(axis=(1, 2))
    cam_fg = (relu_max_normalise(cam) >= float(cam_threshold)).sum(axis=(1, 2))
    return td_fg, cam_fg


def spread_ratio(td_fg: np.ndarray, cam_fg: np.ndarray) -> np.ndarray:
    """:func:`image_spread` from :func:`image_extent`'s counts."""
    return np.asarray(td_fg).astype(np.float64) / np.maximum(cam_fg, 1)


def blend_seed(td: np.ndarray, cam: np.ndarray, class_ids: Sequence[int], cam_weight: float, threshold: float,
               cam_only: Sequence[int] = (), cam_threshold: float | None = None) -> np.ndarray:
    """ICD's top-down map blended with the CAM (``seeds.icd_cam_blend``, issue 33).

    Per present class s_c = w N(CAM_c) + (1 - w) N(T_c), N(x) = ReLU(x) / its maximum over the
    image, w = ``cam_weight``; classes in ``cam_only`` (the CAM fallbacks) use N(CAM_c) alone.
    The seed is :func:`cam_seed`'s rule on s: background where max_c N(s_c) is below
    ``threshold``, else the argmax class; no 255. ICD extends the CAM where the two agree and a
    direction gone wrong (its map on the background) is damped by a CAM that is near zero there.
    With ``cam_threshold`` (the CAM seed's ``pseudo_masks.cam_bg_threshold``) a fallback class
    calls foreground where N(CAM_c) >= ``cam_threshold``, as in :func:`cam_seed`, so an image
    whose classes all fall back gets exactly the CAM seed; without it, at ``threshold``."""
    w = float(cam_weight)
    if not 0 <= w <= 1:
        raise ValueError(f"cam_weight must be in [0, 1], got {cam_weight}")
    threshold = _check_threshold(threshold, "threshold")
    td = np.asarray(td, dtype=np.float32)
    _check(td, class_ids, "td")
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != td.shape:
        raise ValueError(f"cam shape {cam.shape} differs from td shape {td.shape}")
    cam_n = relu_max_normalise(cam)
    score = relu_max_normalise(w * cam_n + (1 - w) * relu_max_normalise(td))
    only = _fallback_rows(class_ids, cam_only)
    scale = 1.0 if cam_threshold is None else threshold / _check_threshold(cam_threshold, "cam_threshold")
    score[only] = cam_n[only] * scale
    return _argmax_seed(score, class_ids, threshold)


def _argmax_seed(score: np.ndarray, class_ids: Sequence[int], bg_threshold: float) -> np.ndarray:
    """The CAM rule on per-class scores already in [0, 1]: the argmax class, background where the
    best score is below ``bg_threshold``; no 255."""
    labels = np.asarray([int(c) for c in class_ids], dtype=np.uint8)
    seed = labels[score.argmax(axis=0)]
    seed[score.max(axis=0) < bg_threshold] = 0
    return seed


def cam_seed(cam: np.ndarray, class_ids: Sequence[int], bg_threshold: float) -> np.ndarray:
    """CAM baseline: ReLU(CAM) normalised per class by its maximum; background where the
    maximum over classes is below ``bg_threshold``, else the argmax class id. No 255."""
    cam = np.asarray(cam, dtype=np.float32)
    _check(cam, class_ids, "cam")
    return _argmax_seed(relu_max_normalise(cam), class_ids, bg_threshold)


__all__ = ["resize_bilinear", "upsample_maps", "minmax_normalise", "relu_max_normalise", "icd_seed", "saliency_seed",
           "salient_seed", "saliency_seeds", "SALIENCY_ASSIGN", "cam_seed", "cam_fallback_classes", "image_agreement",
           "image_gate_classes", "image_spread", "image_extent", "spread_ratio", "blend_seed", "VOID"]
