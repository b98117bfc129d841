"""misc.stability: the non-finite loss check (one process, several, CUDA AMP) and gradient clipping."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from icd_pipeline.misc.stability import (ClipLog, NonFiniteLossError, backward_step, check_finite_losses,
                                         divergence_advice)

WHERE = dict(stage="train_x", epoch=2, epochs=5, iteration=3, iterations=7, lr="0.1 (x.lr 0.1)")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the AMP path)")


def test_finite_losses_pass():
    check_finite_losses({"a": torch.tensor(1.5), "b": 0.0, "c": torch.tensor(-1e30, dtype=torch.float64)}, **WHERE)
    check_finite_losses({}, **WHERE)


def test_non_finite_terms_are_named_with_where_and_what_to_change():
    with pytest.raises(NonFiniteLossError) as err:
        check_finite_losses({"loss_cls": torch.tensor(float("nan")), "loss_bu": torch.tensor(2.0),
                             "loss_td": float("-inf")}, hint="lower x.lr", note="kept.pt is kept.", **WHERE)
    msg = str(err.value)
    assert msg.startswith("train_x: non-finite loss at epoch 2/5, iteration 3/7: loss_cls = nan, loss_td = -inf; "
                          "learning rate 0.1 (x.lr 0.1).")
    assert "loss_bu" not in msg
    assert "To fix: lower x.lr, and check the inputs for NaN or infinite values. kept.pt is kept." in msg
    assert isinstance(err.value, FloatingPointError)


def test_divergence_advice_names_the_keys_and_the_checkpoint(tmp_path):
    first = divergence_advice("icd", {"lr": 0.03, "grad_clip": None}, tmp_path / "last.pt", 0)
    assert first == {"hint": "lower icd.lr (now 0.03) or set icd.grad_clip (a maximum gradient norm)", "note": ""}
    later = divergence_advice("deeplab", {"lr": 1e-3, "grad_clip": 5.0}, tmp_path / "last.pt", 3)
    assert later["hint"] == "lower deeplab.lr (now 0.001) or lower deeplab.grad_clip (now 5)"
    assert later["note"].startswith(f"{tmp_path / 'last.pt'} (after epoch 3) is kept: a rerun with the same config "
                                    "resumes from it")


def _rank_worker(rank: int, world: int, init_file: str, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    loss = torch.tensor(float("nan") if rank == 1 else 0.5)  # only rank 1 diverged
    try:
        check_finite_losses({"loss": loss}, **WHERE)
        queue.put((rank, "no error"))
    except NonFiniteLossError as exc:
        queue.put((rank, str(exc)))
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_every_process_stops_when_one_diverges(tmp_path):
    ctx = mp.get_context("fork")  # no re-import of torch: seconds faster than spawn
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_worker, args=(r, 2, str(tmp_path / "init"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = dict(queue.get(timeout=60) for _ in procs)  # a rank that did not raise would hang here
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert "loss (in another process)" in got[0]
    assert "loss = nan" in got[1]


def _model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False)
    x = torch.randn(8, 4) * 10
    return model, x


def _grad_norm(model, x) -> float:
    model.zero_grad()
    model(x).pow(2).mean().backward()
    return float(model.weight.grad.norm())


def test_backward_step_clips_the_gradient_norm():
    model, x = _model_and_data()
    true_norm = _grad_norm(model, x)
    assert true_norm > 1.0
    w0 = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    norm = backward_step(model(x).pow(2).mean(), opt, None, model.parameters(), grad_clip=1.0)
    assert norm == pytest.approx(true_norm, rel=1e-5)  # reported before clipping
    assert float((model.weight.detach() - w0).norm()) == pytest.approx(1.0, rel=1e-4)  # the step used norm 1

    model, x = _model_and_data()
    w0 = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    assert backward_step(model(x).pow(2).mean(), opt, None, model.parameters(), grad_clip=None) is None
    assert float((model.weight.detach() - w0).norm()) == pytest.approx(true_norm, rel=1e-5)  # unclipped


def test_clip_log_counts_clipped_steps_and_mean_norm():
    log = ClipLog(1.0)
    for norm in (2.0, 0.5, float("inf"), 1.0):  # inf: an AMP overflow GradScaler skips, not a clip
        log.add(norm)
    assert log.metrics() == {"clipped_steps": 1, "grad_norm": pytest.approx((2.0 + 0.5 + 1.0) / 3)}
    assert log.describe() == ", gradient norm mean 1.17, clipped to 1 in 1/4 steps"
    off = ClipLog(None)
    off.add(None)
    assert off.metrics() == {"clipped_steps": 0, "grad_norm": ""} and off.describe() == ""


@cuda
def test_amp_clips_unscaled_gradients_and_skipped_steps_are_no_error():
    model, x = _model_and_data()
    true_norm = _grad_norm(model, x)
    model, x = model.cuda(), x.cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 16)
    w0 = model.weight.detach().clone()
    with torch.autocast("cuda"):
        loss = model(x).float().pow(2).mean()
    check_finite_losses({"loss": loss}, **WHERE)
    norm = backward_step(loss, opt, scaler, model.parameters(), grad_clip=1.0)
    assert norm == pytest.approx(true_norm, rel=1e-2)  # the unscaled norm, not 65536 times it
    assert float((model.weight.detach() - w0).norm()) == pytest.approx(1.0, rel=1e-2)

    # a finite loss whose scaled gradients overflow: GradScaler skips the step, no error
    w1 = model.weight.detach().clone()
    loss = (model.weight * torch.full((1, 4), 1e37, device="cuda")).sum()
    check_finite_losses({"loss": loss}, **WHERE)  # finite (< 3.4e38); 65536 times it is not
    log = ClipLog(1.0)
    log.add(backward_step(loss, opt, scaler, model.parameters(), grad_clip=1.0))
    assert torch.equal(model.weight.detach(), w1)  # the step was skipped
    assert scaler.get_scale() < 2.0 ** 16 and log.clipped == 0 and log.steps == 1
