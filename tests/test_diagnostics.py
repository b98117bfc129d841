"""Per-class diagnostics of the bottom-up direction (issue 33, icd_pipeline.diagnostics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icd_pipeline.diagnostics import (EpochDiagnostics, batch_diagnostics, class_pixels, masked_pearson,
                                      masked_share, normalised_cam, sign_margin)


def test_masked_pearson_matches_numpy_on_the_mask_only():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 5, 6)
    mask = (torch.rand(2, 3, 5, 6) > 0.4).float()
    corr, valid = masked_pearson(a, b, mask)
    for n in range(2):
        for c in range(3):
            m = mask[n, c].bool().numpy()
            expect = np.corrcoef(a[n, c].numpy()[m], b[n, c].numpy()[m])[0, 1]
            assert valid[n, c] and corr[n, c].item() == pytest.approx(expect, abs=1e-5)
    # pixels outside the mask do not count: changing them leaves the correlation unchanged
    a2 = torch.where(mask.bool(), a, torch.full_like(a, 1e3))
    assert torch.allclose(masked_pearson(a2, b, mask)[0], corr, atol=1e-5)


def test_masked_pearson_sign_and_invalid_pairs():
    a = torch.arange(8.0).reshape(1, 1, 2, 4)
    full = torch.ones_like(a)
    assert masked_pearson(a, 3 * a + 1, full)[0].item() == pytest.approx(1.0)
    assert masked_pearson(a, -a, full)[0].item() == pytest.approx(-1.0)
    const = torch.ones_like(a)
    corr, valid = masked_pearson(a, const, full)       # a constant map: undefined -> invalid, 0
    assert not valid.item() and corr.item() == 0.0
    one_pixel = torch.zeros_like(a)
    one_pixel[0, 0, 0, 0] = 1
    assert not masked_pearson(a, -a, one_pixel)[1].item()
    with pytest.raises(ValueError, match="shapes differ"):
        masked_pearson(a, a, torch.ones(1, 1, 2, 3))


def test_masked_share_and_normalised_cam():
    cond = torch.tensor([[[[1.0, 0.0, 1.0, 1.0]]]]) > 0
    mask = torch.tensor([[[[1.0, 1.0, 0.0, 1.0]]]])
    assert masked_share(cond, mask).item() == pytest.approx(2 / 3)
    assert masked_share(cond, torch.zeros_like(mask)).item() == 0.0
    cam = torch.tensor([[[[0.0, 2.0, 4.0, -1.0]]]])
    assert normalised_cam(cam).flatten().tolist() == [0.0, 0.5, 1.0, 0.0]


def test_class_pixels_are_the_image_without_other_classes():
    cam = torch.zeros(1, 3, 2, 4)
    cam[0, 0, :, :2] = 1.0   # class 0 owns the left half
    cam[0, 1, :, 2:] = 1.0   # class 1 the right half
    y = torch.tensor([[1.0, 1.0, 0.0]])
    px = class_pixels(cam, y)
    assert px[0, 0, :, :2].eq(1).all() and px[0, 0, :, 2:].eq(0).all()
    assert px[0, 1, :, 2:].eq(1).all() and px[0, 1, :, :2].eq(0).all()
    assert px[0, 2].eq(0).all()
    single = class_pixels(cam, torch.tensor([[0.0, 1.0, 0.0]]))
    assert single[0, 1].eq(1).all()  # a single-label image: every pixel


def test_batch_diagnostics_separates_a_right_from_a_wrong_direction():
    # one single-label image per class; class 0's direction follows the CAM, class 1's is
    # unrelated to it, class 2's follows it with the wrong sign
    torch.manual_seed(0)
    N, K, h, w = 3, 3, 8, 8
    cam = torch.zeros(N, K, h, w)
    for n in range(N):
        cam[n, n, 2:6, 2:6] = 3.0
    b = torch.zeros(N, K, h, w)
    b[0, 0] = cam[0, 0] - 1.0
    b[1, 1] = torch.randn(h, w)
    b[2, 2] = 1.0 - cam[2, 2]
    y = torch.eye(3)
    sigma = torch.ones(K)
    td = b.clone()
    fig = batch_diagnostics(b, sigma, td, cam, y, cam_level=0.4)
    assert fig["valid"].equal(torch.eye(3, dtype=torch.bool))
    assert fig["agreement"][0, 0].item() == pytest.approx(1.0)
    assert abs(fig["agreement"][1, 1].item()) < 0.4
    assert fig["agreement"][2, 2].item() == pytest.approx(-1.0)
    # the sign corrects the third: sigma = -1 turns its agreement to +1
    fig = batch_diagnostics(b, torch.tensor([1.0, 1.0, -1.0]), td, cam, y)
    assert fig["agreement"][2, 2].item() == pytest.approx(1.0)
    assert fig["cam_fg"][0, 0].item() == pytest.approx(16 / 64)
    assert fig["bu_fg"][0, 0].item() == pytest.approx(16 / 64)
    assert fig["td_fg"][0, 0].item() == pytest.approx(16 / 64)


def test_sign_margin_and_epoch_rows():
    acc = torch.tensor([[3.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    assert sign_margin(acc).tolist() == pytest.approx([0.5, 0.0, 0.0])
    ep = EpochDiagnostics(3)
    fig = {k: torch.tensor([[0.5, 0.2, 0.0], [0.1, 0.4, 0.0]]) for k in ("agreement", "bu_fg", "td_fg", "cam_fg")}
    fig["valid"] = torch.tensor([[True, True, False], [True, False, False]])
    ep.add(fig)
    rows = ep.rows(1, ["a", "b", "c"], acc)
    assert [r["class"] for r in rows] == ["a", "b"]  # class c never seen: no row
    assert rows[0]["images"] == 2 and rows[0]["agreement"] == pytest.approx(0.3)
    assert rows[1]["images"] == 1 and rows[1]["agreement"] == pytest.approx(0.2)
    assert rows[0]["sign_margin"] == pytest.approx(0.5)
    state = ep.state()
    ep2 = EpochDiagnostics(3)
    ep2.load_state(state * 2)  # e.g. summed over two processes: the means are unchanged
    assert ep2.rows(1, ["a", "b", "c"], acc)[0]["agreement"] == pytest.approx(0.3)
