"""Multi-process training (torchrun + DistributedDataParallel) on CPU with the gloo backend:
a 2-process run and a 1-process run with the same global batch end with the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from icd_pipeline.misc import distributed as D
from icd_pipeline.misc.launch import torchrun_command

from smk import ROOT, TINY, jobs_in_dry_run, run_snakemake
from test_train_icd import icd_config, make_voc

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


# ----------------------------------------------------------------------------- BatchNorm


def _loss_weights(x: torch.Tensor) -> torch.Tensor:
    return torch.arange(x.numel()).reshape(x.shape).float().sin()


def _bn_worker(rank: int, world: int, init_file: str, x: torch.Tensor, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    bn = D.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))[0]
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    part = x.chunk(world)[rank].clone().requires_grad_(True)
    out = bn(part)
    (out * _loss_weights(x).chunk(world)[rank]).sum().backward()
    # DDP would average the parameter gradients; the input gradient is this process's own
    # numpy copies: torch tensors would travel as shared-memory handles that vanish when this
    # process exits before the parent has read them
    queue.put((rank, *(t.detach().numpy().copy() for t in (out, part.grad, bn.weight.grad, bn.running_mean,
                                                           bn.running_var))))
    dist.barrier()
    dist.destroy_process_group()


def test_distributed_batchnorm_equals_full_batch(tmp_path):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 6) * 3 + 1
    ref = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        ref.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    xr = x.clone().requires_grad_(True)
    out = ref(xr)
    (out * _loss_weights(x)).sum().backward()

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_bn_worker, args=(r, 2, str(tmp_path / "init"), x, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {r[0]: [torch.from_numpy(a) for a in r[1:]] for r in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    out_d = torch.cat([results[0][0], results[1][0]])
    grad_d = torch.cat([results[0][1], results[1][1]])
    torch.testing.assert_close(out_d, out.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_d, xr.grad, atol=1e-5, rtol=1e-5)
    # the affine gradient, summed over processes, is the full batch's (DDP averages it over 2
    # processes whose losses are each this loss's share)
    torch.testing.assert_close(results[0][2] + results[1][2], ref.weight.grad, atol=1e-4, rtol=1e-5)
    for r in (0, 1):
        torch.testing.assert_close(results[r][3], ref.running_mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(results[r][4], ref.running_var, atol=1e-6, rtol=1e-5)


def test_single_process_is_a_no_op():
    ctx = D.init_distributed(torch.device("cpu"))
    assert not ctx.distributed and ctx.is_main
    model = torch.nn.Linear(2, 2)
    assert D.wrap_ddp(model, ctx) is model
    t = torch.ones(3)
    assert D.all_reduce_sum(t) is t and t.sum() == 3
    assert D.local_batch_size(8, ctx, "icd.batch_size") == 8
    with pytest.raises(ValueError, match="icd.batch_size=7 is not divisible by the 2"):
        D.local_batch_size(7, D.DistContext(world_size=2, rank=0), "icd.batch_size")


def test_sampler_splits_the_single_process_batches():
    """The union of the N local batches of iteration i is global batch i of one process."""
    data = list(range(23))
    one = list(D.sampler(data, D.DistContext(), seed=5, epoch=3))
    assert one == torch.randperm(23, generator=torch.Generator().manual_seed(8)).tolist()
    two = [list(D.sampler(data, D.DistContext(world_size=2, rank=r), seed=5, epoch=3)) for r in (0, 1)]
    global_bs, local_bs = 6, 3
    for i in range(len(data) // global_bs):
        local = two[0][i * local_bs:(i + 1) * local_bs] + two[1][i * local_bs:(i + 1) * local_bs]
        assert sorted(local) == sorted(one[i * global_bs:(i + 1) * global_bs])


# ----------------------------------------------------------------------------- torchrun


def _launch(nproc: int, module: str, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "icd_pipeline.misc.launch", "--nproc", str(nproc), module, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _max_weight_difference(a: Path, b: Path) -> float:
    sa = torch.load(a, weights_only=True)["state_dict"]
    sb = torch.load(b, weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa if sa[k].is_floating_point())


def test_torchrun_command():
    cmd = torchrun_command(4, "icd_pipeline.stages.train_icd", ["--split", "train"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m",
                       "icd_pipeline.stages.train_icd", "--split", "train"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("ddp") / "voc", n=16)


def test_icd_two_processes_match_one(voc, tmp_path):
    # dropout off: its masks are drawn per process, so they cannot match a single process's
    cfg = icd_config(epochs=2, batch_size=8, dropout=0.0, sync_bn=True)
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"out{n}"
        proc = _launch(n, "icd_pipeline.stages.train_icd", ["--config-json", json.dumps(cfg), "--data-root", str(voc),
                                                     "--split", "train", "--grid-superpixels", "8",
                                                     "--out-dir", str(outs[n])])
        if n == 2:
            assert "2 processes x 4 images" in proc.stderr
    assert _max_weight_difference(outs[1] / "model.pt", outs[2] / "model.pt") < 1e-4
    # one writer: the same files, and the same metrics
    assert sorted(p.relative_to(outs[1]).as_posix() for p in outs[1].rglob("*")) == \
        sorted(p.relative_to(outs[2]).as_posix() for p in outs[2].rglob("*"))
    import pandas as pd

    m1, m2 = (pd.read_csv(outs[n] / "metrics.csv") for n in (1, 2))
    for col in ("loss", "loss_cls", "loss_bu", "loss_td", "train_map"):
        assert m1[col].tolist() == pytest.approx(m2[col].tolist(), rel=1e-4, abs=1e-5), col


def test_deeplab_two_processes_match_one(voc, tmp_path):
    section = dict(model="deeplab_largefov", backbone="tiny", pretrained=False, output_stride=8, input_scale=1.0,
                   crop_size=48, scales=[0.75, 1.0, 1.25], batch_size=4, epochs=2, lr=0.01, num_workers=0,
                   freeze_bn=False, dropout=0.0, sync_bn=True)
    cfg = {"seed": 0, "device": "cpu", "deeplab": section}
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"out{n}"
        _launch(n, "icd_pipeline.stages.train_deeplab", ["--config-json", json.dumps(cfg), "--data-root", str(voc),
                                                  "--split", "train", "--out-dir", str(outs[n]), "--no-progress"])
    assert _max_weight_difference(outs[1] / "model.pt", outs[2] / "model.pt") < 1e-4
    import pandas as pd

    m1, m2 = (pd.read_csv(outs[n] / "metrics.csv") for n in (1, 2))
    assert m1["loss"].tolist() == pytest.approx(m2["loss"].tolist(), rel=1e-4)
    assert m1["pixel_acc"].tolist() == pytest.approx(m2["pixel_acc"].tolist(), rel=1e-6)


def test_indivisible_batch_fails_clearly(voc, tmp_path):
    cfg = icd_config(epochs=1, batch_size=7)
    cmd = [sys.executable, "-m", "icd_pipeline.misc.launch", "--nproc", "2", "icd_pipeline.stages.train_icd",
           "--config-json", json.dumps(cfg), "--data-root", str(voc), "--split", "train", "--grid-superpixels", "8",
           "--out-dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          cwd=ROOT, timeout=300)
    assert proc.returncode != 0
    assert "icd.batch_size=7 is not divisible by the 2 training processes" in proc.stderr
    assert not (tmp_path / "out" / "model.pt").exists()


def test_rules_launch_torchrun_with_the_gpu_resource(tmp_path):
    """The training rules pass their ``gpu`` resource to the launcher (torchrun when > 1)."""
    proc = run_snakemake(tmp_path, "all", "-n", "-p", "--cores", "2", "--configfile", str(TINY),
                         "--set-resources", "train_icd:gpu=2", "train_deeplab:gpu=3")
    text = proc.stdout + proc.stderr
    assert {"train_icd", "train_deeplab"} <= jobs_in_dry_run(proc)
    assert "icd_pipeline.misc.launch --nproc 2 icd_pipeline.stages.train_icd" in text
    assert "icd_pipeline.misc.launch --nproc 3 icd_pipeline.stages.train_deeplab" in text
