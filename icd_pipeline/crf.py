"""Dense CRF (Krähenbühl & Koltun) through pydensecrf (the ``pydensecrf2`` wheel).

:func:`dense_crf` refines class probabilities; :func:`crf_from_labels` is the ICD seed
refinement of spec 5.3 (hard seed -> soft unary -> CRF -> argmax, low posterior -> 255).

The image given to the bilateral term is the raw RGB uint8 image, C-contiguous (a
mean-subtracted image cast to uint8 wraps around, a bug seen in peer code).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

VOID = 255
DEFAULT_PARAMS = dict(gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0,
                      bilateral_compat=10.0, iterations=10)
_CRF_KEYS = tuple(DEFAULT_PARAMS)


def _image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB (raw pixel values), got {image.dtype}")
    return np.ascontiguousarray(image)


def dense_crf(image: np.ndarray, probs: np.ndarray, *, gaussian_sxy: float = 3.0, gaussian_compat: float = 3.0,
              bilateral_sxy: float = 80.0, bilateral_srgb: float = 13.0, bilateral_compat: float = 10.0,
              iterations: int = 10) -> np.ndarray:
    """Mean-field posterior (C, H, W) float32 for probabilities ``probs`` (C, H, W).

    Unary = -log(max(p, 1e-5)); Potts pairwise terms: Gaussian(sxy, compat) and
    bilateral(sxy, srgb, raw RGB image, compat); ``iterations`` mean-field steps; the
    posterior is renormalised over classes.
    """
    import pydensecrf.densecrf as dcrf

    image = _image(image)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3:
        raise ValueError(f"probs must be (C, H, W), got shape {probs.shape}")
    c, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image size {image.shape[:2]} differs from probability map size {(h, w)}")
    unary = np.ascontiguousarray(-np.log(np.maximum(probs, 1e-5)).reshape(c, h * w), dtype=np.float32)
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=float(gaussian_sxy), compat=float(gaussian_compat))
    d.addPairwiseBilateral(sxy=float(bilateral_sxy), srgb=float(bilateral_srgb), rgbim=image,
                           compat=float(bilateral_compat))
    q = np.asarray(d.inference(int(iterations)), dtype=np.float32).reshape(c, h, w)
    q /= np.maximum(q.sum(axis=0, keepdims=True), 1e-12)
    return q


def labels_to_probs(labels: np.ndarray, num_labels: int, confidence: float = 0.5) -> np.ndarray:
    """Soft unary of spec 5.3: the seed label gets ``confidence``, every other label
    ``(1 - confidence) / num_labels``, a 255 pixel gets ``(1 - confidence) / num_labels``
    everywhere (uniform); each pixel is then renormalised. Returns (num_labels, H, W)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    bad = (labels >= num_labels) & (labels != VOID)
    if bad.any():
        raise ValueError(f"label values {sorted(set(np.unique(labels[bad]).tolist()))} outside 0..{num_labels - 1}"
                         f" and {VOID}")
    h, w = labels.shape
    rest = (1.0 - confidence) / num_labels
    prob = np.full((num_labels, h, w), rest, dtype=np.float32)
    yy, xx = np.nonzero(labels != VOID)
    prob[labels[yy, xx].astype(np.int64), yy, xx] = confidence
    prob /= prob.sum(axis=0, keepdims=True)
    return prob


def crf_from_labels(image: np.ndarray, labels: np.ndarray, num_labels: int, confidence: float = 0.5,
                    min_posterior: float = 0.1, present: Sequence[int] | None = None, **crf_params) -> np.ndarray:
    """Refine a hard label map (uint8, 255 = ignore) with the dense CRF. Returns uint8: argmax
    of the posterior, 255 where the maximum posterior is below ``min_posterior``.

    ``present=None``: over all ``num_labels`` labels (background included), the authors'
    protocol. ``present=[class ids]``: over background and those classes only (irn's
    practice): a pixel can only take a label of the image, and the CRF costs ~labels/num_labels."""
    unknown = set(crf_params) - set(_CRF_KEYS)
    if unknown:
        raise TypeError(f"unknown CRF parameter(s): {sorted(unknown)}")
    if num_labels > VOID:
        raise ValueError(f"num_labels must be at most {VOID}, got {num_labels}")
    if present is None:
        prob = labels_to_probs(labels, num_labels, confidence)
        q = dense_crf(image, prob, **crf_params)
        out = q.argmax(axis=0).astype(np.uint8)
    else:
        keep = np.array(sorted({0, *(int(c) for c in present)}), dtype=np.int64)
        if keep.max() >= num_labels:
            raise ValueError(f"present class ids {list(present)} outside 1..{num_labels - 1}")
        lut = np.full(256, -1, dtype=np.int64)
        lut[keep] = np.arange(len(keep))
        lut[VOID] = VOID
        sub = lut[np.asarray(labels, dtype=np.uint8)]
        if (sub < 0).any():
            raise ValueError(f"labels {sorted(set(np.unique(np.asarray(labels)[sub < 0]).tolist()))} are not among "
                             f"background and the present classes {list(present)}")
        q = dense_crf(image, labels_to_probs(sub, len(keep), confidence), **crf_params)
        out = keep[q.argmax(axis=0)].astype(np.uint8)
    out[q.max(axis=0) < min_posterior] = VOID
    return out


def crf_params_from_config(crf_cfg: dict) -> dict:
    """The keyword arguments of :func:`dense_crf` from the ``pseudo_masks.crf`` section."""
    return {k: crf_cfg[k] for k in _CRF_KEYS if k in crf_cfg}


__all__ = ["dense_crf", "labels_to_probs", "crf_from_labels", "crf_params_from_config", "DEFAULT_PARAMS"]
