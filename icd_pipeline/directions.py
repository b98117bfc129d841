"""Several candidate directions per class, chosen by their agreement with the CAM (issue 33).

The paper's bottom-up step learns one direction per class, the online first principal
direction of the class's (BN'd, detached) features. On real photographs that direction is not
always the object: under a flock on grass the largest variation of the frame is grass against
sky, and the class is lost (sheep 0.14 IoU against the CAM's 0.38 on the sample's
`train_animals`). With ``icd.directions: R`` each class learns its top-R principal directions
online - candidate 0 is the paper's ``W``, candidate r maximises the same L_bu on the features
with the projections on candidates 0..r-1 removed (Sanger's generalised Hebbian rule,
:func:`deflated_projections`) - each with its own sign EMA (spec 2.3), and the class's working
direction, the one whose sign-corrected scores build the top-down targets, is the candidate
whose scores agree best with the normalised CAM over the class's pixels (an EMA of the
per-image Pearson correlation, :func:`update_agreement`). No ground truth is involved: the
CAM is the same witness the paper already uses to fix the sign.

Pure tensor functions; the model holds the parameters and buffers (models/icd.py) and
``train_icd.train_step`` calls these.
"""

from __future__ import annotations

from typing import Callable

import torch

from .config import ConfigError
from .diagnostics import class_pixels, masked_pearson, normalised_cam
from .losses import bu_loss, bu_loss_regions, update_sign


def deflated_projections(p: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    """Sanger's deflation of the candidates' projections, for the bottom-up loss.

    ``p``: (N, K, R, h, w) plain projections w_hat_kr^T sg(x) (gradient to ``w_hat`` only);
    ``w_hat``: (K, R, C) unit directions. Returns b'_r = p_r - sum_{j<r} sg(p_j) (sg(w_hat_j) .
    w_hat_r), whose gradient with respect to w_hat_r is that of the plain projection of the
    features with their components along the earlier (detached) candidates removed, so
    maximising the mean of b'_r^2 drives candidate r to the r-th principal direction. With R = 1
    it returns ``p`` itself.
    """
    R = w_hat.shape[1]
    if p.dim() != 5 or p.shape[1:3] != w_hat.shape[:2]:
        raise ValueError(f"projections {tuple(p.shape)} do not fit directions {tuple(w_hat.shape)}")
    if R == 1:
        return p
    gram = torch.einsum("krc,kjc->krj", w_hat.float(), w_hat.detach().float())  # w_r . sg(w_j)
    earlier = torch.tril(torch.ones(R, R, device=p.device), diagonal=-1)       # j < r
    return p.float() - torch.einsum("krj,nkjhw->nkrhw", gram * earlier, p.detach().float())


@torch.no_grad()
def candidate_agreement(s: torch.Tensor, cam_relu: torch.Tensor, pixels: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (image, class, candidate): Pearson correlation of the sign-corrected scores ``s``
    (N, K, R, h, w) with the max-normalised CAM (N, K, h, w) over the class's ``pixels`` (N, K, h,
    w); returns (corr, valid), both (N, K, R)."""
    N, K, R, h, w = s.shape
    cam_n = normalised_cam(cam_relu)[:, :, None].expand(N, K, R, h, w)
    px = pixels[:, :, None].expand(N, K, R, h, w)
    corr, valid = masked_pearson(s.reshape(N, K * R, h, w), cam_n.reshape(N, K * R, h, w),
                                 px.reshape(N, K * R, h, w))
    return corr.reshape(N, K, R), valid.reshape(N, K, R)


@torch.no_grad()
def update_agreement(agree_acc: torch.Tensor, corr: torch.Tensor, valid: torch.Tensor, y: torch.Tensor,
                     momentum: float = 0.9, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     switch_below: float | None = None, current: torch.Tensor | None = None,
                     return_above: float | None = None) -> torch.Tensor:
    """EMA of each candidate's agreement with the CAM, updated in place like the sign EMA (spec
    2.3): the batch figure of (class, candidate) is the mean ``corr`` over the images that
    contain the class and where it is ``valid``; a (class, candidate) without such an image keeps
    its value. Returns the working candidate of each class (K,), :func:`choose`'s (``current``,
    ``return_above`` as there). ``reduce`` sums over training processes."""
    use = valid.float() * y.float()[:, :, None]
    sums = torch.stack([(corr.float() * use).sum(dim=0), use.sum(dim=0)])  # (2, K, R)
    if reduce is not None:
        sums = reduce(sums)
    seen = sums[1] > 0
    mean = sums[0] / sums[1].clamp(min=1)
    acc = agree_acc.float()
    new = momentum * acc + (1.0 - momentum) * mean.to(acc.device)
    agree_acc.copy_(torch.where(seen.to(acc.device), new, acc).to(agree_acc.dtype))
    return choose(agree_acc, switch_below, current=current, return_above=return_above)


def choose(agree_acc: torch.Tensor, switch_below: float | None = None, *, current: torch.Tensor | None = None,
           return_above: float | None = None) -> torch.Tensor:
    """(K,) index of the candidate with the highest agreement EMA (the first on ties, i.e. the
    paper's direction). With ``switch_below`` (``icd.direction_switch_below``) a class keeps the
    paper's direction, candidate 0, while its agreement is at least that, and takes the best
    candidate only below it: with the plain argmax a second candidate that agrees a little better
    than a good first one replaced it (horse on `train_animals`, seed 1: 0.55 against 0.24,
    +0.078 -> +0.048), while the classes that need another direction have a first one near 0
    (sheep: 0.04-0.08).

    ``return_above`` (``icd.direction_return_above``, >= ``switch_below``) adds hysteresis: a
    class whose ``current`` working candidate is not the first keeps the best candidate (which
    may be the first) until the first's agreement is at least ``return_above``, and only then is
    held on the first again. Without it a first direction hovering at the switch flips the
    working direction back and forth: sheep on `train`, seed 1, went 0 1 0 1 1 1 0 over the last
    seven epochs and ended on its first direction at 0.101 against 0.1, with a top-down map
    trained on the other's targets for half of them."""
    acc = agree_acc.float()
    best = acc.argmax(dim=1)
    if switch_below is None:
        if return_above is not None:
            raise ValueError("icd.direction_return_above needs icd.direction_switch_below")
        return best
    hold = acc[:, 0] >= float(switch_below)
    if return_above is not None:
        if float(return_above) < float(switch_below):
            raise ValueError(f"icd.direction_return_above ({return_above}) is below "
                             f"icd.direction_switch_below ({switch_below})")
        if current is not None:
            switched = current.to(acc.device) != 0
            hold = torch.where(switched, acc[:, 0] >= float(return_above), hold)
    return torch.where(hold, torch.zeros_like(best), best)


def check_switch(cfg: dict) -> None:
    """Refuse, before training starts, an ``icd`` section whose direction-switch keys
    contradict each other (``choose`` would refuse them at the first step)."""
    below, above = cfg.get("direction_switch_below"), cfg.get("direction_return_above")
    if above is None:
        return
    if below is None:
        raise ConfigError(f"icd.direction_return_above is {above} but icd.direction_switch_below is null: "
                          "the return threshold is hysteresis on the switch")
    if float(above) < float(below):
        raise ConfigError(f"icd.direction_return_above ({above}) is below icd.direction_switch_below ({below})")


def gather_candidate(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N, K, R, ...) -> (N, K, ...): candidate ``index[k]`` of each class."""
    idx = index.to(t.device).view(1, -1, 1, *([1] * (t.dim() - 3)))
    idx = idx.expand(t.shape[0], t.shape[1], 1, *t.shape[3:])
    return t.gather(2, idx).squeeze(2)


@torch.no_grad()
def track_agreement(model, b: torch.Tensor, sigma: torch.Tensor, cam_relu: torch.Tensor, y: torch.Tensor,
                    floor: float = 0.2, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """With one direction (the paper's training, unchanged): update the model's agreement EMA of
    that direction with the CAM, which ``seeds.cam_fallback_below`` reads. ``b`` (N, K, h, w)
    raw bottom-up scores, ``sigma`` (K,) their signs."""
    corr, valid = candidate_agreement((b * sigma.to(b.device)[None, :, None, None])[:, :, None], cam_relu,
                                      class_pixels(cam_relu, y, floor))
    update_agreement(model.agree_acc, corr, valid, y, momentum=0.9, reduce=reduce)


def candidate_bottom_up(model, p: torch.Tensor, cam_relu: torch.Tensor, y: torch.Tensor,
                        region: torch.Tensor | None, cfg: dict,
                        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``icd.directions`` R > 1 (directions.py): L_bu summed over the R candidates with Sanger's
    deflation, each candidate's sign EMA updated as the paper's (spec 2.3), the agreement EMA
    with the CAM updated and the working candidate of each class chosen by it. ``p``: (N, K, R,
    h, w) plain projections (the model's ``bu_candidates``), ``region`` the bottom-up region
    (None: the paper's single-label images), ``reduce`` a sum over training processes. Returns
    (L_bu, working scores b (N, K, h, w) with their gradient, their signs (K,))."""
    N, K, R, h, w = p.shape
    deflated = deflated_projections(p, model.directions_hat())
    l_bu = sum((bu_loss_regions(deflated[:, :, r], y, region, weight=cfg["bu_weight"]) if region is not None
                else bu_loss(deflated[:, :, r], y, weight=cfg["bu_weight"])) for r in range(R))
    with torch.no_grad():
        acc = model.candidate_sign_acc()
        flat_region = None if region is None else region.repeat_interleave(R, dim=1)
        sigma_all = update_sign(acc.view(K * R, 2), p.detach().reshape(N, K * R, h, w),
                                cam_relu.repeat_interleave(R, dim=1), y.repeat_interleave(R, dim=1), momentum=0.9,
                                reduce=reduce, region=flat_region).view(K, R)
        model.set_candidate_sign_acc(acc)
        s_all = p.detach() * sigma_all[None, :, :, None, None]
        corr, valid = candidate_agreement(s_all, cam_relu, class_pixels(cam_relu, y, cfg["bottom_up_floor"]))
        chosen = update_agreement(model.agree_acc, corr, valid, y, momentum=0.9, reduce=reduce,
                                  switch_below=cfg.get("direction_switch_below"), current=model.direction,
                                  return_above=cfg.get("direction_return_above"))
        model.direction.copy_(chosen)
        sigma = sigma_all.gather(1, chosen.to(sigma_all.device)[:, None]).squeeze(1)
    return l_bu, gather_candidate(p, chosen), sigma


__all__ = ["candidate_bottom_up", "track_agreement", "deflated_projections", "candidate_agreement",
           "update_agreement", "choose", "check_switch", "gather_candidate"]
