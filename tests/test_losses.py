"""ICD losses and target construction (spec section 2) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from icd_pipeline import losses as L
from icd_pipeline.models.backbones import build_backbone
from icd_pipeline.models.icd import ICDModel


def bce(z, t):
    return -(t * math.log(1 / (1 + math.exp(-z))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-z))))


def test_cls_loss_sums_classes_and_averages_batch():
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, -3.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    expect = sum(bce(logits[n, c].item(), y[n, c].item()) for n in range(2) for c in range(3)) / 2
    assert L.cls_loss(logits, y).item() == pytest.approx(expect, rel=1e-6)
    cam = logits[:, :, None, None].expand(2, 3, 4, 5)  # the CAM: pooled over space first
    assert L.cls_loss(cam, y).item() == pytest.approx(expect, rel=1e-6)


def test_bu_loss_single_label_only():
    b = torch.zeros(3, 2, 2, 2)
    b[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 0.0]])   # image 0: single label, class 0
    b[1, 1] = 5.0                                       # image 1: two labels -> ignored
    b[2, 1] = torch.tensor([[1.0, 1.0], [1.0, -1.0]])  # image 2: single label, class 1
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    expect = -10 * 0.5 * ((1 + 4 + 9) / 4 + 4 / 4) / 3
    assert L.bu_loss(b, y, weight=10).item() == pytest.approx(expect)
    assert L.single_label_mask(y).tolist() == [[1, 0], [0, 0], [0, 1]]


def tiny_model(k=3):
    torch.manual_seed(0)
    return ICDModel(build_backbone("tiny", pretrained=False, output_stride=8), k, head_channels=16)


def test_bu_gradient_reaches_w_only():
    model = tiny_model()
    model.train()
    x = torch.rand(4, 3, 32, 32)
    y = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])
    out = model(x)
    L.bu_loss(out["bu"], y).backward()
    assert model.W.grad is not None and model.W.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        if name != "W":
            assert p.grad is None or p.grad.abs().sum() == 0, name


def test_w_converges_to_principal_direction():
    torch.manual_seed(0)
    C = 6
    direction = F.normalize(torch.tensor([1.0, -2.0, 0.5, 0.0, 1.0, 3.0]), dim=0)
    q, _ = torch.linalg.qr(torch.cat([direction[:, None], torch.randn(C, C - 1)], dim=1))
    stds = torch.tensor([3.0, 1.0, 0.8, 0.6, 0.5, 0.3])
    W = torch.nn.Parameter(torch.randn(1, C) * 0.01)
    opt = torch.optim.SGD([W], lr=1e-3, momentum=0.9)
    y = torch.ones(8, 1)
    for _ in range(1000):
        z = torch.randn(8, 16, C) * stds  # pixels of 8 images, 4x4 grid
        feats = (z @ q.t()).permute(0, 2, 1).reshape(8, C, 4, 4)
        b = F.conv2d(feats, F.normalize(W, dim=1)[:, :, None, None])
        opt.zero_grad()
        L.bu_loss(b, y, weight=10).backward()
        opt.step()
    cos = torch.dot(F.normalize(W.detach(), dim=1)[0], q[:, 0]).abs().item()
    assert cos > 0.98


def test_update_sign_flips_when_cam_higher_on_negative_side():
    acc = torch.zeros(2, 2)
    b = torch.tensor([[[[1.0, -1.0]], [[1.0, -1.0]]]])   # (1, 2, 1, 2)
    cam = torch.tensor([[[[0.1, 0.9]], [[0.8, 0.2]]]])  # class 0: CAM higher where b < 0
    y = torch.tensor([[1.0, 1.0]])
    sigma = L.update_sign(acc, b, cam, y, momentum=0.9)
    assert sigma.tolist() == [-1.0, 1.0]
    assert acc[0].tolist() == pytest.approx([0.01, 0.09])
    assert acc[1].tolist() == pytest.approx([0.08, 0.02])
    # an absent class keeps its accumulator
    sigma = L.update_sign(acc, b, cam.flip(-1), torch.tensor([[0.0, 1.0]]))
    assert acc[0].tolist() == pytest.approx([0.01, 0.09]) and sigma[0] == -1.0
    assert acc[1].tolist() == pytest.approx([0.9 * 0.08 + 0.1 * 0.2, 0.9 * 0.02 + 0.1 * 0.8])


def test_sp_refine_two_superpixels():
    # input 2x4 split into a left and a right superpixel; feature grid = input grid
    sp = torch.tensor([[[0, 0, 7, 7], [0, 0, 7, 7]]])
    s = torch.tensor([[[[2.0, 1.0, -1.0, -3.0], [3.0, -2.0, 0.5, -0.5]],
                       [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]])
    y = torch.tensor([[1.0, 0.0]])
    r = L.sp_refine(s, sp, y)
    # left: votes (1+1+1-1)=2 > 0, eligible, winner class 0 -> mean positive (2+1+3+0)/4
    # right: votes (-1-1+1-1) = -2 for class 0, 0 for class 1 -> not eligible -> mean negative
    left, right = 6 / 4, (-1 - 3 + 0 - 0.5) / 4
    expect = torch.tensor([[left, left, right, right], [left, left, right, right]])
    assert torch.allclose(r[0, 0], expect)
    assert torch.all(r[0, 1] == 0)
    rn = L.pos_neg_normalize(r)
    assert torch.allclose(rn[0, 0], torch.tensor([[1.0, 1.0, -1.0, -1.0]] * 2))


def test_sp_refine_class_axis_winner_and_label_mask():
    # one superpixel, two present classes: class 1 dominates after per-pixel normalisation
    sp = torch.zeros(1, 2, 2, dtype=torch.long)
    s = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[2.0, 2.0], [2.0, 0.5]]]])
    r = L.sp_refine(s, sp, torch.tensor([[1.0, 1.0]]))
    assert torch.allclose(r[0, 1], torch.full((2, 2), 6.5 / 4))  # winner: mean positive score
    assert torch.all(r[0, 0] == 0)                          # loser: mean negative part (none)
    r = L.sp_refine(s, sp, torch.tensor([[1.0, 0.0]]))      # class 1 absent: zeroed, class 0 wins
    assert torch.all(r[0, 0] == 1.0) and torch.all(r[0, 1] == 0)


def test_soft_membership_matches_bilinear_interpolation():
    torch.manual_seed(0)
    for H, W, h, w in [(64, 48, 8, 6), (321, 321, 41, 41)]:
        sp = torch.randint(0, 5, (H, W))
        a = L.soft_membership(sp, 5, L._bilinear_corners(H, W, h, w, "cpu"))
        ref = F.interpolate(F.one_hot(sp, 5).permute(2, 0, 1).float()[None], size=(h, w), mode="bilinear",
                            align_corners=True)[0].reshape(5, -1)
        assert torch.allclose(a, ref, atol=1e-4)


def test_td_loss_masks_band_and_absent_classes():
    T = torch.tensor([[[[0.0, 1.0, -1.0, 2.0]], [[5.0, 5.0, 5.0, 5.0]]]])  # (1, 2, 1, 4)
    rn = torch.tensor([[[[0.9, 0.1, -0.5, -0.15]], [[1.0, 1.0, 1.0, 1.0]]]])
    y = torch.tensor([[1.0, 0.0]])
    expect = 0.5 * (bce(0.0, 1) + bce(-1.0, 0)) / 4
    assert L.td_loss(T, rn, y, threshold=0.2, weight=0.5).item() == pytest.approx(expect, rel=1e-6)


def test_warmup_weight():
    assert L.warmup_weight(0, 661) == pytest.approx(math.exp(-10))
    assert L.warmup_weight(330, 661) == pytest.approx(math.exp(-10 * (1 - 330 / 661)))
    assert L.warmup_weight(661, 661) == 1.0 and L.warmup_weight(5000, 661) == 1.0
    assert L.warmup_weight(0, 0) == 1.0


def test_param_groups_lr_mult_and_weight_decay():
    model = tiny_model()
    groups = L.param_groups(model, lr=1e-3, weight_decay=5e-4)
    where = {}
    for g in groups:
        for p in g["params"]:
            where[id(p)] = (g["lr"], g["weight_decay"])
    named = dict(model.named_parameters())
    assert where[id(named["fc8.weight"])] == (pytest.approx(1e-2), 5e-4)
    assert where[id(named["fc8.bias"])] == (pytest.approx(1e-2), 0.0)
    assert where[id(named["conv_ft.weight"])] == (pytest.approx(1e-2), 5e-4)
    assert where[id(named["fc6.weight"])] == (1e-3, 5e-4)
    assert where[id(named["fc6.bias"])] == (1e-3, 0.0)
    assert where[id(named["W"])] == (1e-3, 5e-4)
    assert where[id(named["bn.bias"])] == (1e-3, 0.0)
    assert id(named["bn.weight"]) not in where  # gamma fixed at 1
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    opt = torch.optim.SGD(groups, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    L.set_lr(opt, L.poly_lr(1e-3, 10, 20))
    assert sorted({round(g["lr"], 12) for g in opt.param_groups}) == pytest.approx(
        [1e-3 * 0.5 ** 0.9, 1e-2 * 0.5 ** 0.9])


def test_poly_lr():
    assert L.poly_lr(1e-3, 0, 20) == 1e-3
    assert L.poly_lr(1e-3, 19, 20) == pytest.approx(1e-3 * (1 / 20) ** 0.9)
