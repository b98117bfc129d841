"""Tiny ONNX saliency models for the tests (a few convs exported from torch): the real ISNet is
never needed by the test suite."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class TinySaliency(nn.Module):
    """ISNet in miniature: a conv, a pooled branch upsampled to the first one's size (the
    exporter traces that size, as in ISNet's file), a 1-channel sigmoid map; a side output."""

    def __init__(self, seed: int = 0, out_channels: int = 1, sigmoid: bool = True):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(8, out_channels, 3, padding=1)
        self.sigmoid = sigmoid

    def forward(self, x):
        a = F.relu(self.c1(x))
        b = F.relu(self.c2(F.max_pool2d(F.max_pool2d(a, 2, ceil_mode=True), 2, ceil_mode=True)))
        b = F.interpolate(b, size=a.shape[2:], mode="bilinear", align_corners=False)
        y = self.c3(torch.cat([a, b], 1))
        return (torch.sigmoid(y) if self.sigmoid else y * 10), b


def export_tiny(path: str | Path, size: int = 32, in_channels: int = 3, **kwargs) -> TinySaliency:
    """Write a TinySaliency with a fixed 1 x ``in_channels`` x size x size input; return the module."""
    model = TinySaliency(**kwargs).eval()
    if in_channels != 3:
        model.c1 = nn.Conv2d(in_channels, 4, 3, padding=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, in_channels, size, size),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output", "side"])
    return model


def export_float16(path: str | Path, size: int = 16) -> np.ndarray:
    """A float16 conv net (Cast in, fp16 Conv, Cast out, Sigmoid), like ISNet's medium file;
    returns the float32 weight for a reference."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((1, 3, 3, 3)) * 0.5).astype(np.float16)
    nodes = [helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16),
             helper.make_node("Conv", ["x16", "w"], ["y16"], pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT),
             helper.make_node("Sigmoid", ["y"], ["output"])]
    graph = helper.make_graph(nodes, "fp16", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, size, size])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w.astype(np.float32)
