"""Device choice, seeding and logging, the same for every stage."""

from __future__ import annotations

import logging
import os
import random
import sys

import numpy as np
import torch


def select_device(requested: str = "auto") -> torch.device:
    """``auto``: CUDA when present, CPU otherwise. ``cuda`` without a GPU is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(requested)


def set_threads() -> None:
    """Use the thread count Snakemake grants (it sets OMP_NUM_THREADS from ``threads:``)."""
    n = os.environ.get("OMP_NUM_THREADS")
    if n and n.isdigit() and int(n) > 0:
        torch.set_num_threads(int(n))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
