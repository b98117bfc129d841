"""ICD losses and target construction, exactly as spec section 2 (pure functions).

Shapes: N images, K foreground classes, (h, w) feature grid; y is (N, K) multi-hot float.
All reductions follow the official code's MXNet conventions (sum over classes, mean over the
batch, pixel means that count masked pixels); see spec 2.1-2.5 and 9.3.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def cls_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_cls = (1/N) sum_n sum_c BCE(mean_p A_nc, y_nc). ``logits``: (N, K) pooled logits or
    the (N, K, h, w) CAM (averaged over space here)."""
    if logits.dim() == 4:
        logits = logits.float().mean(dim=(2, 3))
    return F.binary_cross_entropy_with_logits(logits.float(), y.float(), reduction="sum") / logits.shape[0]


def single_label_mask(y: torch.Tensor) -> torch.Tensor:
    """s_nc = y_nc * [sum_c y_nc == 1]."""
    return y.float() * (y.sum(dim=1, keepdim=True) == 1).float()


def bu_loss(b: torch.Tensor, y: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """L_bu = -(weight / 2N) sum_n sum_c s_nc mean_p b_nc(p)^2, single-label images only.

    ``b`` must come from detached features (ICDModel.bottom_up) so only W gets a gradient.
    """
    s = single_label_mask(y)
    return -weight * 0.5 * (s * b.float().pow(2).mean(dim=(2, 3))).sum() / b.shape[0]


# --------------------------------------------------------------------------- multi-label images
# A step beyond the paper (issue 16): the paper's L_bu learns w_c only from images labelled c
# alone, so a class never seen alone keeps a random direction. With ``bottom_up_images: all``
# a multi-label image also teaches w_c, over the pixels class c is given in that image
# (``bottom_up_region``). A single-label image gets all its pixels, so a batch of single-label
# images gives exactly the paper's losses, sign statistics and targets.

BOTTOM_UP_REGIONS = ("owned", "others_removed", "owned_negatives")


@torch.no_grad()
def owned_pixels(cam_relu: torch.Tensor, y: torch.Tensor, floor: float = 0.2) -> torch.Tensor:
    """(N, K, h, w) in {0, 1}: pixels class c owns in image n, i.e. where c is present, its
    max-normalised CAM is the largest of the image's present classes and at least ``floor``."""
    a = cam_relu.float() * y.float()[:, :, None, None]
    a = a / a.flatten(2).max(dim=2).values.clamp(min=1e-5)[:, :, None, None]
    a = torch.where(y.bool()[:, :, None, None], a, torch.full_like(a, -1.0))  # absent never wins
    best = a.argmax(dim=1, keepdim=True)
    owner = torch.zeros_like(a).scatter_(1, best, 1.0)
    return owner * (a >= floor).float() * y.float()[:, :, None, None]


def owned_by_others(own: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) in {0, 1}: the pixels of each image that a present class other than c owns
    (``own``: :func:`owned_pixels`, at most one owner per pixel)."""
    return (own.sum(dim=1, keepdim=True) - own).clamp(max=1.0)


@torch.no_grad()
def bottom_up_region(cam_relu: torch.Tensor, y: torch.Tensor, region: str = "owned",
                     floor: float = 0.2) -> torch.Tensor:
    """The pixels each (image, present class) teaches w_c with, (N, K, h, w) in {0, 1}.

    Single-label images: every pixel (the paper's L_bu). Multi-label images:
    ``owned`` - the pixels class c owns (:func:`owned_pixels`): its object, as the CAM sees it;
    ``others_removed`` - every pixel no other present class owns: the image as if it showed
    c alone (its object and the background), which is what a single-label image gives;
    ``owned_negatives`` - the ``owned`` pixels (and :func:`bu_negative_loss` on the others').
    """
    if region not in BOTTOM_UP_REGIONS:
        raise ValueError(f"bottom_up_region must be one of {BOTTOM_UP_REGIONS}, got {region!r}")
    y = y.float()
    own = owned_pixels(cam_relu, y, floor)
    if region in ("owned", "owned_negatives"):
        multi = own
    else:
        multi = (1.0 - owned_by_others(own)) * y[:, :, None, None]
    single = (y.sum(dim=1) == 1)[:, None, None, None]
    return torch.where(single, y[:, :, None, None].expand_as(own), multi)


def bu_loss_regions(b: torch.Tensor, y: torch.Tensor, region: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """L_bu over every image (``bottom_up_images: all``): -(weight / 2N) sum_n sum_c of the
    mean of b_nc(p)^2 over the pixels of ``region`` (:func:`bottom_up_region`), so an image
    counts once per class whatever the size of its region; an empty region counts 0.

    Written as mean_p(region * b^2) * hw / |region| so that a full region (a single-label image)
    gives bit for bit :func:`bu_loss`'s term.
    """
    if region.shape != b.shape:
        raise ValueError(f"bottom-up scores {tuple(b.shape)} and region {tuple(region.shape)} differ in shape")
    region = region.float() * y.float()[:, :, None, None]
    hw = b.shape[2] * b.shape[3]
    count = region.sum(dim=(2, 3))
    term = (region * b.float().pow(2)).mean(dim=(2, 3)) * (hw / count.clamp(min=1.0))
    return -weight * 0.5 * term.sum() / b.shape[0]


def bu_negative_loss(b: torch.Tensor, y: torch.Tensor, region: torch.Tensor, sigma: torch.Tensor,
                     weight: float = 10.0) -> torch.Tensor:
    """``bottom_up_region: owned_negatives``: in a multi-label image the pixels another present
    class owns are background for class c, so c's bottom-up score must not put them on its
    foreground side (``sigma_c b > 0``; ``sigma`` the current sign, :func:`sign_of`):
    (weight / 2N) sum_n sum_c of the mean of relu(sigma_c b_nc)^2 over those pixels.
    ``region``: :func:`bottom_up_region` of ``owned_negatives`` (on a multi-label image, the
    owned pixels of each class). An image counts once per class; single-label images and
    pixels already on the background side add nothing. Gradients reach ``b`` only."""
    with torch.no_grad():
        y = y.float()
        multi = (y.sum(dim=1) > 1).float()[:, None, None, None]
        others = owned_by_others(region.float() * multi) * y[:, :, None, None]
    wrong = torch.relu(b.float() * sigma.to(b.device).float()[None, :, None, None]).pow(2)
    per_class = (others * wrong).sum(dim=(2, 3)) / others.sum(dim=(2, 3)).clamp(min=1.0)
    return weight * 0.5 * per_class.sum() / b.shape[0]


def sign_of(sign_acc: torch.Tensor) -> torch.Tensor:
    """sigma (K,) in {+1, -1} of the sign accumulator (spec 2.3): +1 iff mu+ >= mu-."""
    return torch.where(sign_acc[:, 0] >= sign_acc[:, 1], 1.0, -1.0)


@torch.no_grad()
def update_sign(sign_acc: torch.Tensor, b: torch.Tensor, cam_relu: torch.Tensor, y: torch.Tensor,
                momentum: float = 0.9, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                region: torch.Tensor | None = None) -> torch.Tensor:
    """Sign EMA (spec 2.3), updated in place; returns sigma (K,) in {+1, -1}.

    mu+/- = mean of relu(CAM) over pixels where b > 0 / b < 0 (denominators clamped at 1e-5),
    averaged over the images that contain the class; classes absent from the batch keep
    their old accumulator. sigma_c = +1 iff acc_c[0] >= acc_c[1]. ``reduce`` (a sum over
    training processes) makes the per-class means those of the global batch. ``region``
    (``bottom_up_images: all``, :func:`bottom_up_region`) restricts both means to the pixels
    L_bu used, and an image whose region for c is empty does not count for c.
    """
    if b.shape != cam_relu.shape:
        raise ValueError(f"bottom-up scores {tuple(b.shape)} and CAM {tuple(cam_relu.shape)} differ in shape")
    b = b.float()
    a = cam_relu.float()
    pos = (b > 0).float()
    neg = (b < 0).float()
    y = y.float()
    if region is not None:
        pos = pos * region.float()
        neg = neg * region.float()
        y = y * (region.float().sum(dim=(2, 3)) > 0).float()
    mu_pos = (a * pos).sum(dim=(2, 3)) / pos.sum(dim=(2, 3)).clamp(min=1e-5)  # (N, K)
    mu_neg = (a * neg).sum(dim=(2, 3)) / neg.sum(dim=(2, 3)).clamp(min=1e-5)
    sums = torch.stack([(y * mu_pos).sum(0), (y * mu_neg).sum(0), y.sum(dim=0)], dim=1)  # (K, 3)
    if reduce is not None:
        sums = reduce(sums)
    count = sums[:, 2]
    present = count > 0
    m = sums[:, :2] / count.clamp(min=1)[:, None]
    acc = sign_acc.float()
    new = momentum * acc + (1.0 - momentum) * m.to(acc.device)
    sign_acc.copy_(torch.where(present[:, None].to(acc.device), new, acc).to(sign_acc.dtype))
    return sign_of(sign_acc).to(b.device)


def _bilinear_corners(H: int, W: int, h: int, w: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The 4 source pixels (flat index into H*W) and weights of each output pixel of a
    bilinear resize (H, W) -> (h, w) with align_corners=True."""

    def axis(n_in, n_out):
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        src = torch.arange(n_out, device=device, dtype=torch.float64) * scale
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        frac = (src - i0.double()).float()
        return i0, i1, frac

    y0, y1, fy = axis(H, h)
    x0, x1, fx = axis(W, w)
    out = []
    for yi, wy in ((y0, 1 - fy), (y1, fy)):
        for xi, wx in ((x0, 1 - fx), (x1, fx)):
            out.append(((yi[:, None] * W + xi[None, :]).reshape(-1), (wy[:, None] * wx[None, :]).reshape(-1)))
    return out


def soft_membership(inv: torch.Tensor, S: int, corners) -> torch.Tensor:
    """a_k(p): one-hot superpixel maps (ids 0..S-1 in ``inv``, (H, W)) bilinearly resized
    with align_corners=True, computed from the 4 source pixels of each output pixel (exactly
    F.interpolate of the one-hot stack, without building it at full resolution)."""
    flat = inv.reshape(-1)
    a = torch.zeros(S, corners[0][0].numel(), device=inv.device)
    for idx, wgt in corners:
        a.scatter_add_(0, flat[idx][None], wgt[None])
    return a


@torch.no_grad()
def sp_refine(s: torch.Tensor, sp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Superpixel refinement (spec 2.4). ``s``: (N, K, h, w) sign-corrected bottom-up scores
    (absent classes are zeroed here again); ``sp``: (N, H, W) integer superpixel ids at input
    resolution (ids are per sample, any values); returns r (N, K, h, w).

    Soft memberships a_k are the one-hot maps bilinearly resized to (h, w) with
    align_corners=True; winning classes use the per-pixel class-axis normalisation of the
    official code.
    """
    s = s.float() * y.float()[:, :, None, None]
    N, K, h, w = s.shape
    out = torch.empty_like(s)
    H, W = sp.shape[-2:]
    corners = _bilinear_corners(H, W, h, w, s.device)
    for n in range(N):
        ids, inv = torch.unique(sp[n].to(s.device), return_inverse=True)
        a = soft_membership(inv, ids.numel(), corners)  # (S, h*w)
        a_bar = a / a.sum(dim=1, keepdim=True).clamp(min=1e-5)
        sn = s[n].reshape(K, h * w)
        vote = a @ torch.sign(sn).t()  # (S, K)
        eligible = vote.max(dim=1).values > 1e-5
        u = sn.clamp(min=0) / sn.max(dim=0, keepdim=True).values.clamp(min=1e-5)
        winner = (a_bar @ u.t()).argmax(dim=1)  # (S,)
        fg = eligible[:, None] & (torch.arange(K, device=s.device)[None, :] == winner[:, None]) \
            & (y[n].to(s.device) > 0)[None, :]
        v_pos = a_bar @ sn.clamp(min=0).t()
        v_neg = a_bar @ sn.clamp(max=0).t()
        v = torch.where(fg, v_pos, v_neg)  # (S, K)
        out[n] = (v.t() @ a).reshape(K, h, w)
    return out


def pos_neg_normalize(r: torch.Tensor) -> torch.Tensor:
    """r~ = max(r,0)/max(max_p r, 1e-5) + min(r,0)/max(-min_p r, 1e-5), per (n, c)."""
    r = r.float()
    flat = r.flatten(2)
    rmax = flat.max(dim=2).values.clamp(min=1e-5)[:, :, None, None]
    rmin = (-flat.min(dim=2).values).clamp(min=1e-5)[:, :, None, None]
    return r.clamp(min=0) / rmax + r.clamp(max=0) / rmin


def td_targets(r_n: torch.Tensor, y: torch.Tensor, threshold: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, mask): t = [r~ > 0], m = [|r~| > threshold] * y_c."""
    mask = (r_n.abs() > threshold).float() * y.float()[:, :, None, None]
    return (r_n > 0).float(), mask


def td_loss(T: torch.Tensor, r_n: torch.Tensor, y: torch.Tensor, threshold: float = 0.2,
            weight: float = 1.0) -> torch.Tensor:
    """L_td = (weight/N) sum_n sum_c (1/hw) sum_p m BCE(T, t), the pixel mean counting masked
    pixels (spec 2.5)."""
    tgt, mask = td_targets(r_n.detach(), y, threshold)
    N, _, h, w = T.shape
    bce = F.binary_cross_entropy_with_logits(T.float(), tgt, reduction="none")
    return weight * (mask * bce).sum() / (N * h * w)


def warmup_iterations(warmup_epochs: float, num_images: int, batch_size: int) -> int:
    """K_w as the authors compute it (spec 2.5): ``2*num_sample//batch_size`` for 2 epochs, i.e.
    floor(epochs * images / batch) = 661 on train_aug at batch 32 (rounding epochs x
    floor(images / batch) would give 660)."""
    return int(float(warmup_epochs) * int(num_images)) // int(batch_size)


def warmup_weight(it: int, total_it: int) -> float:
    """omega(k) = exp(-10 (1 - k/K)) for k < K, else 1."""
    if total_it <= 0 or it >= total_it:
        return 1.0
    return math.exp(-10.0 * (1.0 - it / total_it))


HEAD_LR_MULT_MODULES = ("fc8", "conv_ft")


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 lr_mult_modules: tuple[str, ...] = HEAD_LR_MULT_MODULES, lr_mult: float = 10.0) -> list[dict]:
    """SGD groups (spec 2.7): lr x ``lr_mult`` for fc8 and conv_ft, lr x 1 for the rest
    (backbone, fc6/fc7, fc6_ft/fc7_ft, BN shift, W); weight decay on weights (including W and
    BN scales, as MXNet does) and none on biases / BN shifts; no doubled bias lr. Frozen
    parameters are left out. Each group carries ``lr_mult`` for :func:`set_lr`."""
    buckets: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = name.split(".")[0] in lr_mult_modules
        decay = not name.endswith("bias")
        buckets.setdefault((lr_mult if head else 1.0, decay), []).append(p)
    groups = []
    for (mult, decay), params in sorted(buckets.items()):
        groups.append({"params": params, "lr": lr * mult, "lr_mult": mult,
                       "weight_decay": weight_decay if decay else 0.0})
    return groups


def poly_lr(base: float, epoch: int, epochs: int, power: float = 0.9) -> float:
    """lr_e = base * (1 - e/E)^power (stepped per epoch, e = 0..E-1)."""
    return base * max(0.0, 1.0 - epoch / epochs) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


__all__ = ["cls_loss", "bu_loss", "single_label_mask", "update_sign", "sp_refine", "pos_neg_normalize",
           "td_targets", "td_loss", "warmup_weight", "param_groups", "poly_lr", "set_lr"]
