"""Per-class diagnostics of ICD's bottom-up direction, without ground truth (issue 33).

What decides a class's fate on real photographs is whether its direction w_c separates the
object from the background, and the only unsupervised witness of that is the CAM. Measured
per (image, present class), over the class's pixels (every pixel of a single-label image; in
a multi-label image the pixels no other present class owns, i.e. the image as if it showed c
alone, :func:`class_pixels`), and averaged per class over an epoch:

- ``agreement``: Pearson correlation of the sign-corrected projection sigma_c w_c^T x with the
  max-normalised CAM (:func:`masked_pearson`); near +1 when the direction's positive side is
  where the CAM sees the class, near 0 when the direction separates something else (grass
  from sky under a flock), negative when the sign is wrong;
- ``bu_fg``: the share of those pixels on the direction's positive side (sigma_c b > 0);
- ``td_fg``: the share the top-down map calls foreground (T_c > 0);
- ``cam_fg``: the share where the normalised CAM reaches ``cam_level`` (what the CAM seeds
  call foreground at that background threshold);
- ``agreement_ema`` / ``direction``: the model's running agreement of its working direction
  (``directions.update_agreement``) and which candidate that is (0 = the paper's W);
- ``sign_margin``: (|acc+ - acc-|) / (acc+ + acc-) of the sign EMA (spec 2.3): how clearly the
  CAM prefers one side of the direction.

Pure tensor functions; ``train_icd`` writes one row per (epoch, class) to ``diagnostics.csv``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .losses import bottom_up_region

DIAGNOSTIC_COLUMNS = ("epoch", "class", "images", "agreement", "agreement_ema", "direction", "sign_margin", "bu_fg",
                      "td_fg", "cam_fg")
PER_IMAGE_KEYS = ("agreement", "bu_fg", "td_fg", "cam_fg")


def normalised_cam(cam_relu: torch.Tensor) -> torch.Tensor:
    """relu(CAM) / its maximum per (image, class), in [0, 1]."""
    a = cam_relu.float().clamp(min=0)
    return a / a.flatten(2).max(dim=2).values.clamp(min=1e-5)[:, :, None, None]


@torch.no_grad()
def class_pixels(cam_relu: torch.Tensor, y: torch.Tensor, floor: float = 0.2) -> torch.Tensor:
    """(N, K, h, w) in {0, 1}: the pixels of class c in image n - every pixel of a
    single-label image, and in a multi-label image every pixel no other present class owns
    (``losses.bottom_up_region`` 'others_removed')."""
    return bottom_up_region(cam_relu, y, "others_removed", floor)


def masked_pearson(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson correlation of ``a`` and ``b`` over the pixels where ``mask`` is 1, per leading
    (image, class) pair: inputs (N, K, h, w), returns (corr (N, K), valid (N, K) bool). A pair
    is valid when it has at least two pixels and both maps vary on them."""
    if not (a.shape == b.shape == mask.shape):
        raise ValueError(f"shapes differ: {tuple(a.shape)}, {tuple(b.shape)}, {tuple(mask.shape)}")
    m = mask.float().flatten(2)
    a, b = a.float().flatten(2), b.float().flatten(2)
    n = m.sum(dim=2)
    mean_a = (m * a).sum(dim=2) / n.clamp(min=1)
    mean_b = (m * b).sum(dim=2) / n.clamp(min=1)
    da, db = (a - mean_a[..., None]) * m, (b - mean_b[..., None]) * m
    va, vb = (da * da).sum(dim=2), (db * db).sum(dim=2)
    corr = (da * db).sum(dim=2) / (va * vb).clamp(min=eps).sqrt()
    valid = (n >= 2) & (va > eps) & (vb > eps)
    return torch.where(valid, corr, torch.zeros_like(corr)), valid


def masked_share(condition: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, K): the share of the ``mask`` pixels where ``condition`` holds (0 on an empty mask)."""
    m = mask.float()
    return (condition.float() * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp(min=1)


@torch.no_grad()
def batch_diagnostics(b: torch.Tensor, sigma: torch.Tensor, td: torch.Tensor, cam_relu: torch.Tensor,
                      y: torch.Tensor, floor: float = 0.2, cam_level: float = 0.4) -> dict[str, torch.Tensor]:
    """Per (image, class) figures of one batch (module docstring): ``agreement``, ``bu_fg``,
    ``td_fg``, ``cam_fg`` (N, K) and ``valid`` (N, K) bool, True where the class is present,
    has pixels and the agreement is defined. ``b``: raw bottom-up scores, ``sigma`` (K,) the
    current signs, ``td`` the top-down logits, ``cam_relu`` relu of the CAM."""
    y = y.float()
    pixels = class_pixels(cam_relu, y, floor)
    s = b.float() * sigma.to(b.device).float()[None, :, None, None]
    cam_n = normalised_cam(cam_relu)
    corr, valid = masked_pearson(s, cam_n, pixels)
    return {"agreement": corr, "bu_fg": masked_share(s > 0, pixels), "td_fg": masked_share(td > 0, pixels),
            "cam_fg": masked_share(cam_n >= cam_level, pixels), "valid": valid & (y > 0)}


def sign_margin(sign_acc: torch.Tensor) -> torch.Tensor:
    """(K,) |acc+ - acc-| / (acc+ + acc-) of the sign EMA buffer (K, 2); 0 where both are 0."""
    acc = sign_acc.float()
    return (acc[:, 0] - acc[:, 1]).abs() / (acc[:, 0] + acc[:, 1]).clamp(min=1e-8)


class EpochDiagnostics:
    """Sums :func:`batch_diagnostics` over an epoch; :meth:`rows` gives the per-class means."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.sums = torch.zeros(len(PER_IMAGE_KEYS), num_classes, dtype=torch.float64)
        self.count = torch.zeros(num_classes, dtype=torch.float64)

    def add(self, figures: dict[str, torch.Tensor]) -> None:
        v = figures["valid"].double().cpu()
        for i, key in enumerate(PER_IMAGE_KEYS):
            self.sums[i] += (figures[key].double().cpu() * v).sum(dim=0)
        self.count += v.sum(dim=0)

    def state(self) -> torch.Tensor:
        """(len(PER_IMAGE_KEYS) + 1, K) sums and counts, e.g. to sum over training processes."""
        return torch.cat([self.sums, self.count[None]])

    def load_state(self, state: torch.Tensor) -> None:
        self.sums, self.count = state[:-1].double().cpu(), state[-1].double().cpu()

    def rows(self, epoch: int, class_names: Sequence[str], sign_acc: torch.Tensor,
             agreement_ema: torch.Tensor | None = None, direction: torch.Tensor | None = None) -> list[dict]:
        """One row per class seen this epoch (``DIAGNOSTIC_COLUMNS``); ``agreement_ema`` and
        ``direction``: the model's agreement EMA and working candidate at the epoch's end."""
        margin = sign_margin(sign_acc).cpu()
        out = []
        for c, name in enumerate(class_names):
            n = float(self.count[c])
            if n == 0:
                continue
            row = {"epoch": epoch, "class": name, "images": int(n), "sign_margin": float(margin[c])}
            if agreement_ema is not None:
                row["agreement_ema"] = float(agreement_ema[c])
            if direction is not None:
                row["direction"] = int(direction[c])
            row.update({key: float(self.sums[i, c] / n) for i, key in enumerate(PER_IMAGE_KEYS)})
            out.append(row)
        return out


__all__ = ["DIAGNOSTIC_COLUMNS", "normalised_cam", "class_pixels", "masked_pearson", "masked_share",
           "batch_diagnostics", "sign_margin", "EpochDiagnostics"]
