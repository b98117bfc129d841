"""Device choice, seeding and logging, the same for every stage."""

from __future__ import annotations

import contextlib
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


def whole_image_inference(device: torch.device) -> contextlib.AbstractContextManager:
    """Context for a network's passes over whole images, whose size changes from image to
    image (feature cache, maps, DeepLab inference, superpixel features, classifier mAP). On
    CUDA these run in float32 with cuDNN off: cuDNN plans every new input shape, and for
    efficientnet_lite0 in float16 or channels-last that costs seconds per shape (H200, torch
    2.11, cuDNN 9.19: 14 sizes of 150-400 px, batch 2, did not finish in 22 s; the sample's
    feature cache ran at ~1 image/s). PyTorch's own kernels in float32 took 5.0 ms per new
    shape and 4.6 ms per repeat; cuDNN in float32 56 ms per new shape. Training keeps AMP and
    cuDNN (its crops have one size). On the CPU this changes nothing."""
    if device.type == "cuda":
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def inference_memory_format(device: torch.device) -> torch.memory_format:
    """The layout of whole-image inference: channels-last on the CPU (oneDNN's fast path),
    contiguous on CUDA (PyTorch's own kernels, see :func:`whole_image_inference`)."""
    return torch.contiguous_format if device.type == "cuda" else torch.channels_last


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
