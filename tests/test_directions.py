"""Several candidate directions per class, chosen by agreement with the CAM (issue 33)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from icd_pipeline.config import load_config
from icd_pipeline.config import ConfigError
from icd_pipeline.directions import (candidate_agreement, check_switch, choose, deflated_projections,
                                     gather_candidate, update_agreement)
from icd_pipeline.losses import bu_loss
from icd_pipeline.models.backbones import build_backbone
from icd_pipeline.models.icd import ICDModel
from icd_pipeline.stages.train_icd import train_step


def test_deflated_candidates_converge_to_the_top_principal_directions():
    """Candidate r ends on the r-th principal direction (up to sign): the plain loss would send
    every candidate to the first one."""
    torch.manual_seed(0)
    C, R = 6, 3
    q, _ = torch.linalg.qr(torch.randn(C, C))
    stds = torch.tensor([3.0, 2.0, 1.2, 0.5, 0.4, 0.3])
    W = torch.nn.Parameter(torch.randn(1, R, C) * 0.1)
    opt = torch.optim.SGD([W], lr=3e-3, momentum=0.9)
    y = torch.ones(8, 1)
    for _ in range(600):
        z = torch.randn(8, 16, C) * stds
        feats = (z @ q.t()).permute(0, 2, 1).reshape(8, C, 4, 4)
        w_hat = F.normalize(W, dim=2)
        p = F.conv2d(feats, w_hat.reshape(R, C)[:, :, None, None]).reshape(8, 1, R, 4, 4)
        b = deflated_projections(p, w_hat)
        opt.zero_grad()
        sum(bu_loss(b[:, :, r], y) for r in range(R)).backward()
        opt.step()
    w_hat = F.normalize(W.detach(), dim=2)[0]
    for r in range(R):
        assert torch.dot(w_hat[r], q[:, r]).abs().item() > 0.97, r


def test_deflation_leaves_the_first_candidate_and_one_direction_alone():
    torch.manual_seed(0)
    p = torch.randn(2, 3, 1, 4, 4)
    w_hat = F.normalize(torch.randn(3, 1, 5), dim=2)
    assert deflated_projections(p, w_hat) is p
    p3 = torch.randn(2, 3, 3, 4, 4)
    w3 = F.normalize(torch.randn(3, 3, 5), dim=2)
    d = deflated_projections(p3, w3)
    assert torch.equal(d[:, :, 0], p3[:, :, 0])
    assert not torch.allclose(d[:, :, 1], p3[:, :, 1])
    with pytest.raises(ValueError, match="do not fit"):
        deflated_projections(p3, w_hat)


def test_agreement_picks_the_candidate_that_follows_the_cam():
    # class 0: candidate 1 follows its CAM, candidate 0 is noise; class 1: candidate 0 follows it
    torch.manual_seed(0)
    N, K, R, h, w = 4, 2, 2, 6, 6
    cam = torch.zeros(N, K, h, w)
    cam[:, :, 1:4, 1:4] = 2.0
    s = torch.randn(N, K, R, h, w)
    s[:, 0, 1] = cam[:, 0] + 0.1 * torch.randn(N, h, w)
    s[:, 1, 0] = cam[:, 1] + 0.1 * torch.randn(N, h, w)
    y = torch.ones(N, K)
    pixels = torch.ones(N, K, h, w)
    corr, valid = candidate_agreement(s, cam, pixels)
    assert valid.all() and corr[:, 0, 1].min() > 0.9 and corr[:, 1, 0].min() > 0.9
    acc = torch.zeros(K, R)
    chosen = update_agreement(acc, corr, valid, y, momentum=0.9)
    assert chosen.tolist() == [1, 0]
    assert acc[0, 1].item() == pytest.approx(0.1 * corr[:, 0, 1].mean().item())
    # a class absent from the batch keeps its EMA
    before = acc.clone()
    update_agreement(acc, -corr, valid, torch.tensor([[1.0, 0.0]] * N))
    assert torch.equal(acc[1], before[1]) and not torch.equal(acc[0], before[0])
    assert choose(torch.zeros(3, 4)).tolist() == [0, 0, 0]  # ties: the paper's direction


def test_gather_candidate():
    t = torch.arange(2 * 3 * 2 * 2).float().reshape(2, 3, 2, 2)  # (N, K, R, x)
    g = gather_candidate(t, torch.tensor([1, 0, 1]))
    assert g.shape == (2, 3, 2)
    assert torch.equal(g[:, 0], t[:, 0, 1]) and torch.equal(g[:, 1], t[:, 1, 0]) and torch.equal(g[:, 2], t[:, 2, 1])


def tiny(directions):
    torch.manual_seed(0)
    return ICDModel(build_backbone("tiny", pretrained=False, output_stride=8), 3, head_channels=16,
                    directions=directions)


def test_one_direction_is_the_paper_and_more_keep_its_parameters():
    one, three = tiny(1), tiny(3)
    assert "W_alt" not in dict(one.named_parameters()) and one.agree_acc.shape == (3, 1)
    # the extra candidates are drawn last: every parameter of the paper starts the same
    p3 = dict(three.named_parameters())
    for name, p in one.named_parameters():
        assert torch.equal(p, p3[name]), name
    assert three.W_alt.shape == (3, 2, one.W.shape[1]) and three.directions_hat().shape == (3, 3, one.W.shape[1])
    with pytest.raises(ValueError, match="directions"):
        tiny(0)


def test_train_step_with_candidates_trains_each_and_keeps_the_cam_branch():
    cfg = dict(load_config([])["icd"], bottom_up_images="all")
    x = torch.rand(4, 3, 32, 32)
    y = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    sp = torch.randint(0, 5, (4, 32, 32))
    res = {}
    for r in (1, 3):
        model = tiny(r).train()
        torch.manual_seed(1)  # the same dropout masks in the CAM head
        res[r] = train_step(model, x, y, sp, cfg, 1.0, False)
        res[r]["loss"].backward()
        if r == 3:
            assert model.W.grad.abs().sum() > 0 and model.W_alt.grad.abs().sum() > 0
            assert model.agree_acc.abs().sum() > 0 and model.sign_acc_alt.abs().sum() > 0
            assert model.sign().shape == (3,)
    # the classification loss does not depend on the directions
    assert res[1]["loss_cls"].item() == pytest.approx(res[3]["loss_cls"].item())


def test_choose_keeps_the_papers_direction_above_the_switch():
    acc = torch.tensor([[0.24, 0.55, 0.13],    # first good enough: kept, though the second agrees better
                        [0.04, 0.30, 0.28],    # first near 0: the best candidate
                        [-0.2, -0.3, -0.4]])   # nothing agrees: the argmax, the first
    assert choose(acc).tolist() == [1, 1, 0]
    assert choose(acc, switch_below=0.1).tolist() == [0, 1, 0]
    assert choose(acc, switch_below=0.3).tolist() == [1, 1, 0]
    y = torch.ones(1, 3)
    chosen = update_agreement(acc.clone(), torch.zeros(1, 3, 3), torch.zeros(1, 3, 3, dtype=torch.bool), y,
                              switch_below=0.1)
    assert chosen.tolist() == [0, 1, 0]


def test_train_step_reads_the_direction_switch():
    cfg = dict(load_config([])["icd"], bottom_up_images="all", direction_switch_below=-1.0)
    x = torch.rand(4, 3, 32, 32)
    y = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    sp = torch.randint(0, 5, (4, 32, 32))
    model = tiny(3).train()
    model.agree_acc.copy_(torch.tensor([[-0.9, 0.9, 0.9]] * 3))   # every class: later candidates agree far better
    train_step(model, x, y, sp, cfg, 1.0, False)
    assert model.direction.tolist() == [0, 0, 0]   # every agreement is >= -1: the paper's direction kept
    model.agree_acc.copy_(torch.tensor([[-0.9, 0.9, 0.9]] * 3))  # one EMA step moves each by < 0.2
    train_step(model, x, y, sp, dict(cfg, direction_switch_below=None), 1.0, False)
    assert 0 not in model.direction.tolist()


def test_return_threshold_holds_a_switched_class_off_the_first_direction():
    """Hysteresis (icd.direction_return_above): a class that has left candidate 0 goes back to
    being held on it only once candidate 0 agrees at least ``return_above``."""
    acc = torch.tensor([[0.15, 0.45, 0.10],    # first between the thresholds, second better
                        [0.25, 0.40, 0.10],    # first above the return threshold
                        [0.05, 0.30, 0.20],    # first below the switch
                        [0.15, 0.10, 0.00]])   # first between, and the best
    on_first = torch.zeros(4, dtype=torch.long)
    switched = torch.tensor([1, 2, 1, 1])
    # on the first direction: the plain switch rule, the return threshold plays no part
    assert choose(acc, 0.1, current=on_first, return_above=0.2).tolist() == [0, 0, 1, 0]
    # switched: held on the first only from 0.2 up; between 0.1 and 0.2 the best candidate
    assert choose(acc, 0.1, current=switched, return_above=0.2).tolist() == [1, 0, 1, 0]
    # without hysteresis a switched class returns as soon as the first is above the switch
    assert choose(acc, 0.1, current=switched).tolist() == [0, 0, 1, 0]
    assert choose(acc, 0.1, current=switched, return_above=0.1).tolist() == [0, 0, 1, 0]
    y = torch.ones(1, 4)
    chosen = update_agreement(acc.clone(), torch.zeros(1, 4, 3), torch.zeros(1, 4, 3, dtype=torch.bool), y,
                              switch_below=0.1, current=switched, return_above=0.2)
    assert chosen.tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="direction_switch_below"):
        choose(acc, None, current=switched, return_above=0.2)
    with pytest.raises(ValueError, match="below"):
        choose(acc, 0.3, current=switched, return_above=0.2)


def test_contradictory_switch_settings_are_refused():
    check_switch({"direction_switch_below": 0.1, "direction_return_above": 0.2})
    check_switch({"direction_switch_below": 0.1, "direction_return_above": None})
    check_switch({})
    with pytest.raises(ConfigError, match="direction_switch_below is null"):
        check_switch({"direction_switch_below": None, "direction_return_above": 0.2})
    with pytest.raises(ConfigError, match=r"return_above \(0.05\) is below"):
        check_switch({"direction_switch_below": 0.1, "direction_return_above": 0.05})


def test_train_step_reads_the_return_threshold():
    cfg = dict(load_config([])["icd"], bottom_up_images="all", direction_switch_below=0.1)
    x = torch.rand(4, 3, 32, 32)
    y = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    sp = torch.randint(0, 5, (4, 32, 32))
    res = {}
    for above in (None, 0.9):
        model = tiny(3).train()
        model.direction.copy_(torch.tensor([1, 1, 1]))              # every class has switched
        model.agree_acc.copy_(torch.tensor([[0.3, 0.6, 0.6]] * 3))  # first above the switch, others better
        train_step(model, x, y, sp, dict(cfg, direction_return_above=above), 1.0, False)
        res[above] = model.direction.tolist()
    # one EMA step moves each agreement by at most 0.1+0.03: the first stays in 0.17-0.37, the others
    # in 0.44-0.64
    assert res[None] == [0, 0, 0]          # no hysteresis: above the switch, back on the first
    assert 0 not in res[0.9]               # first below 0.9: still off it, on the best
