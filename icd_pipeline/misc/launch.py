"""Run a training entry point as one process, or as N under torchrun (DistributedDataParallel).

    python -m icd_pipeline.misc.launch --nproc N icd_pipeline.stages.train_icd [ARGS ...]

N <= 1 runs the module in this process. N > 1 replaces this process with
``python -m torch.distributed.run --standalone --nproc_per_node N -m MODULE ARGS``: one process
per GPU with NCCL when CUDA is present, N CPU processes with gloo otherwise. The Snakemake
training rules call this with their ``gpu`` resource, so ``--set-resources train_icd:gpu=4``
(or a cluster profile) is all it takes to train on four GPUs.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

MODULES = ("icd_pipeline.stages.train_icd", "icd_pipeline.stages.train_deeplab")


def torchrun_command(nproc: int, module: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icd_pipeline.misc.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=1, help="training processes (GPUs); <= 1: no torchrun")
    parser.add_argument("module", choices=MODULES, help="training entry point")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    ns = parser.parse_args(argv)
    if ns.nproc <= 1:
        sys.argv = [ns.module, *ns.args]
        runpy.run_module(ns.module, run_name="__main__", alter_sys=True)
        return 0  # the module's sys.exit carries its status
    cmd = torchrun_command(ns.nproc, ns.module, ns.args)
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
