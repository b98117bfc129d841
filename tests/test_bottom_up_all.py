"""``icd.bottom_up_images: all`` (issue 16): multi-label images teach the directions W too."""

from __future__ import annotations

import copy

import pytest
import torch

from icd_pipeline.losses import (bottom_up_region, bu_loss, bu_loss_regions, bu_negative_loss, owned_pixels,
                                  sign_of, update_sign)
from icd_pipeline.models.icd import build_icd_model
from icd_pipeline.stages.train_icd import train_step

K, C, H, W = 4, 6, 6, 8


def two_class_image():
    """One image with classes 0 and 2: class 0's CAM fills the left half, class 2's the right
    third, nothing in between (columns 4-5); class 1's CAM is high everywhere but it is absent."""
    cam = torch.zeros(1, K, H, W)
    cam[0, 0, :, :4] = 2.0
    cam[0, 2, :, 6:] = 3.0
    cam[0, 1] = 5.0
    y = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    return cam, y


def test_owned_pixels_and_regions():
    cam, y = two_class_image()
    own = owned_pixels(cam, y, floor=0.2)
    assert own[0, 0, :, :4].eq(1).all() and own[0, 0, :, 4:].eq(0).all()
    assert own[0, 2, :, 6:].eq(1).all() and own[0, 2, :, :6].eq(0).all()
    assert own[0, 1].eq(0).all() and own[0, 3].eq(0).all()  # absent classes own nothing
    assert own[0, :, :, 4:6].eq(0).all()  # below the floor: nobody's
    assert torch.equal(bottom_up_region(cam, y, "owned"), own)
    rest = bottom_up_region(cam, y, "others_removed")
    assert rest[0, 0, :, :6].eq(1).all() and rest[0, 0, :, 6:].eq(0).all()  # all but class 2's
    assert rest[0, 2, :, 4:].eq(1).all() and rest[0, 2, :, :4].eq(0).all()
    assert rest[0, 1].eq(0).all() and rest[0, 3].eq(0).all()
    # a single-label image gives its class every pixel, whatever its CAM
    single = bottom_up_region(torch.rand(2, K, H, W), torch.tensor([[0.0, 1, 0, 0], [0, 0, 0, 1]]), "owned")
    assert single[0, 1].eq(1).all() and single[1, 3].eq(1).all() and single.sum() == 2 * H * W
    with pytest.raises(ValueError, match="bottom_up_region"):
        bottom_up_region(cam, y, "everything")


def test_all_equals_single_exactly_on_single_label_images():
    torch.manual_seed(0)
    b = torch.randn(3, K, H, W)
    cam = torch.randn(3, K, H, W).relu()
    y = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]])
    for region_kind in ("owned", "others_removed"):
        region = bottom_up_region(cam, y, region_kind)
        assert torch.equal(bu_loss_regions(b, y, region), bu_loss(b, y))
        acc_single, acc_all = torch.rand(K, 2), None
        acc_all = acc_single.clone()
        s1 = update_sign(acc_single, b, cam, y)
        s2 = update_sign(acc_all, b, cam, y, region=region)
        assert torch.equal(acc_single, acc_all) and torch.equal(s1, s2)


def test_two_classes_with_disjoint_pixels_teach_both_directions_and_nothing_else():
    torch.manual_seed(0)
    cam, y = two_class_image()
    region = bottom_up_region(cam, y, "owned")
    feats = torch.randn(1, C, H, W)
    Wp = torch.randn(K, C, requires_grad=True)
    b = torch.nn.functional.conv2d(feats, torch.nn.functional.normalize(Wp, dim=1)[:, :, None, None])
    bu_loss_regions(b, y, region, weight=10.0).backward()
    grad = Wp.grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0
    assert grad[1].eq(0).all() and grad[3].eq(0).all()  # absent classes: untouched
    assert bu_loss(b.detach(), y).item() == 0.0  # the paper's loss ignores this image

    # each direction's gradient is that of its own pixels alone: the loss of an image holding
    # only class 0's pixels (features elsewhere zeroed) as a single-label image of class 0
    for c, cols in ((0, slice(0, 4)), (2, slice(6, None))):
        Wc = Wp.detach().clone().requires_grad_(True)
        only = torch.zeros_like(feats)
        only[..., cols] = feats[..., cols]
        bc = torch.nn.functional.conv2d(only, torch.nn.functional.normalize(Wc, dim=1)[:, :, None, None])
        yc = torch.zeros(1, K)
        yc[0, c] = 1.0
        n_own = float(region[0, c].sum())
        (bu_loss(bc, yc, weight=10.0) * (H * W) / n_own).backward()  # mean over its own pixels
        torch.testing.assert_close(grad[c], Wc.grad[c], rtol=1e-5, atol=1e-7)


def test_sign_statistics_use_the_region_and_skip_images_without_one():
    cam, y = two_class_image()
    b = torch.full((1, K, H, W), -1.0)
    b[0, 2, :, 6:] = 1.0  # class 2 positive on its own pixels
    b[0, 2, :, :2] = 1.0  # ... and on class 0's pixels, which class 2 may not use
    region = bottom_up_region(cam, y, "owned")
    acc = torch.zeros(K, 2)
    update_sign(acc, b, cam.relu(), y, momentum=0.0, region=region)
    assert acc[2].tolist() == [3.0, 0.0]  # mean CAM over its own positive pixels; none negative
    assert acc[0].tolist() == [0.0, 2.0]
    # an image whose region for a class is empty leaves that class's statistic alone
    acc = torch.tensor([[0.0, 0.0], [0.0, 0.0], [7.0, 1.0], [0.0, 0.0]])
    update_sign(acc, b, cam.relu(), y, momentum=0.5, region=torch.zeros_like(region))
    assert acc[2].tolist() == [7.0, 1.0]


def tiny_model_inputs(y):
    cfg = {"backbone": "tiny", "pretrained": False, "output_stride": 8, "head_channels": 16, "bu_weight": 10.0,
           "td_mask_threshold": 0.2, "cam_head": "linear", "bottom_up_images": "single",
           "bottom_up_region": "owned", "bottom_up_floor": 0.2,
           "bottom_up_negative_weight": 1.0}
    torch.manual_seed(0)
    model = build_icd_model(cfg, K)
    with torch.no_grad():
        f = model.backbone(torch.rand(1, 3, 32, 32))
    feats = {k: torch.randn(y.shape[0], v.shape[1], 4, 4) for k, v in f.items()}
    sp = torch.arange(16).reshape(1, 4, 4).repeat_interleave(8, 1).repeat_interleave(8, 2)
    return cfg, model, feats, (sp % 5).expand(y.shape[0], 32, 32).contiguous()


def grads_of_step(model, feats, y, sp, cfg):
    model = copy.deepcopy(model).train()
    torch.manual_seed(1)
    res = train_step(model, feats, y, sp, cfg, omega=0.7, amp=False)
    res["loss"].backward()
    return res, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, model.sign_acc


def test_negatives_push_only_other_classes_pixels_to_the_background_side():
    cam, y = two_class_image()  # class 0 owns columns 0-3, class 2 columns 6-7
    sigma = torch.tensor([1.0, 1.0, -1.0, 1.0])
    b = torch.zeros(1, K, H, W, requires_grad=True)
    with torch.no_grad():
        b[0, 0, :, 6:] = 2.0    # class 0 calls class 2's pixels foreground: penalised
        b[0, 0, :, 4:6] = 5.0   # unowned pixels: not counted
        b[0, 2, :, :4] = 1.0    # class 2 (sigma -1) puts class 0's pixels on its background side: fine
        b[0, 2, :, :2] = -3.0   # ... and here on its foreground side: penalised
        b[0, 1] = 7.0           # absent class: nothing
    region = bottom_up_region(cam, y, "owned_negatives", floor=0.2)
    loss = bu_negative_loss(b, y, region, sigma, weight=10.0)
    # class 0: mean over 12 pixels of 2^2 = 4; class 2: 12 of its 24 pixels at 3^2 -> 4.5
    assert loss.item() == pytest.approx(10.0 * 0.5 * (4.0 + 4.5))
    loss.backward()
    touched = b.grad.abs() > 0
    assert touched[0, 0, :, 6:].all() and touched[0, 2, :, :2].all() and touched.sum() == 12 + 12
    # a single-label image has no other class: nothing, whatever the scores
    y_single = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    single = bu_negative_loss(torch.randn(2, K, H, W), y_single,
                              bottom_up_region(torch.rand(2, K, H, W), y_single, "owned_negatives"), sigma)
    assert single.item() == 0.0
    assert torch.equal(sign_of(torch.tensor([[0.3, 0.2], [0.1, 0.4], [0.2, 0.2]])), torch.tensor([1.0, -1.0, 1.0]))


@pytest.mark.parametrize("region", ["owned", "owned_negatives"])
def test_train_step_all_equals_single_on_single_label_batches_and_bu_reaches_only_w(region):
    y = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]])
    cfg, model, feats, sp = tiny_model_inputs(y)
    cfg = dict(cfg, bottom_up_region=region)
    res_s, g_s, acc_s = grads_of_step(model, feats, y, sp, cfg)
    res_a, g_a, acc_a = grads_of_step(model, feats, y, sp, dict(cfg, bottom_up_images="all"))
    for k in ("loss", "loss_cls", "loss_bu", "loss_td"):
        assert torch.equal(res_s[k], res_a[k]), k
    assert g_s.keys() == g_a.keys() and all(torch.equal(g_s[n], g_a[n]) for n in g_s)
    assert torch.equal(acc_s, acc_a)

    # on a multi-label batch, L_bu (now non-zero) sends gradient to W and to nothing else
    y2 = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]])
    m = copy.deepcopy(model).train()
    res = train_step(m, feats, y2, sp, dict(cfg, bottom_up_images="all", bottom_up_floor=0.0), omega=0.7,
                     amp=False)
    assert res["loss_bu"].item() < 0
    res["loss_bu"].backward()
    touched = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched == {"W"}
    assert bu_loss(torch.randn(3, K, 4, 4), y2).item() == 0.0  # the paper's loss: no signal here


def test_negative_weight_scales_only_the_negative_term():
    """owned_negatives' L_bu = owned's L_bu + bottom_up_negative_weight x the negative term."""
    y = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]])
    cfg, model, feats, sp = tiny_model_inputs(y)
    cfg = dict(cfg, bottom_up_images="all", bottom_up_floor=0.0)

    def loss_bu(**kw):
        m = copy.deepcopy(model).train()
        return train_step(m, feats, y, sp, dict(cfg, **kw), omega=0.7, amp=False)["loss_bu"].item()

    owned = loss_bu(bottom_up_region="owned")
    assert loss_bu(bottom_up_region="owned_negatives", bottom_up_negative_weight=0.0) == pytest.approx(owned, abs=1e-6)
    one = loss_bu(bottom_up_region="owned_negatives", bottom_up_negative_weight=1.0) - owned
    quarter = loss_bu(bottom_up_region="owned_negatives", bottom_up_negative_weight=0.25) - owned
    assert one > 0 and quarter == pytest.approx(0.25 * one, rel=1e-4)
