"""DeepLab stage: model shapes, loss, test-time averaging, training, resume, inference."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from icd_pipeline import inference
from icd_pipeline.stages import deeplab_pictures, infer_deeplab, train_deeplab
from icd_pipeline.config import validate
from icd_pipeline.data.voc import VOID, write_palette_png
from icd_pipeline.models.backbones import feature_size
from icd_pipeline.models.deeplab import (
    ASPPConvBranch, CheckpointError, LargeFOVBranch, build_deeplab, load_deeplab, save_deeplab,
)

CLASSES = ["background", "red", "blue"]


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("backbone,pretrained,size", [
    ("tiny", False, 64),
    ("efficientnet_lite0", True, 64),
    ("vgg16", False, 41),
    ("resnet101", False, 48),
])
def test_model_shapes_and_stride(backbone, pretrained, size):
    torch.manual_seed(0)
    for model_name in ("deeplab_largefov", "deeplab_v2_aspp"):
        model = build_deeplab(model_name, backbone, 5, pretrained=pretrained, output_stride=16).eval()
        expected_stride = 8 if backbone == "vgg16" else 16
        assert model.stride == expected_stride
        with torch.no_grad():
            out = model(torch.rand(2, 3, size, size))
        side = feature_size(size, model.backbone)
        assert out.shape == (2, 5, side, side)
        n_branches = 1 if model_name == "deeplab_largefov" else 4
        assert len(model.head) == n_branches
        kind = LargeFOVBranch if (model_name == "deeplab_largefov" or backbone == "vgg16") else ASPPConvBranch
        assert all(isinstance(b, kind) for b in model.head)
        if backbone == "vgg16" and model_name == "deeplab_largefov":
            assert model.rates == (12,) and model.head[0].fc6.out_channels == 1024
        if backbone == "efficientnet_lite0" and model_name == "deeplab_v2_aspp":
            assert model.rates == (2, 4, 6, 8)


def test_frozen_bn_and_parameter_groups():
    model = build_deeplab("deeplab_largefov", "tiny", 3, pretrained=False, output_stride=8, freeze_bn=True)
    model.train()
    bns = model.backbone.bn_modules()
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    assert model.head[0].training
    before = [m.running_mean.clone() for m in bns]
    model(torch.rand(2, 3, 32, 32))
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    head, back = list(model.head_parameters()), list(model.backbone_parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(head) + len(back) == len(trainable)
    assert {id(p) for p in head}.isdisjoint({id(p) for p in back})
    free = build_deeplab("deeplab_largefov", "tiny", 3, pretrained=False, output_stride=8, freeze_bn=False)
    free.train()
    assert all(m.training for m in free.backbone.bn_modules())


def test_frozen_backbone_trains_head_only():
    model = build_deeplab("deeplab_largefov", "tiny", 3, pretrained=False, output_stride=8, freeze_backbone=True)
    model.train()
    assert not model.backbone.training and model.head.training
    assert list(model.backbone_parameters()) == []
    loss = model(torch.rand(2, 3, 32, 32)).square().mean()
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head_parameters())


def test_checkpoint_round_trip(tmp_path):
    model = build_deeplab("deeplab_v2_aspp", "tiny", 3, pretrained=False, output_stride=8)
    save_deeplab(tmp_path / "m.pt", model, {"model": "deeplab_v2_aspp"}, CLASSES)
    loaded, meta = load_deeplab(tmp_path / "m.pt", num_classes=3)
    assert meta["class_names"] == CLASSES and meta["rates"] == list(model.rates)
    x = torch.rand(1, 3, 32, 32)
    model.eval(), loaded.eval()
    torch.testing.assert_close(model(x), loaded(x))
    with pytest.raises(CheckpointError, match="another dataset"):
        load_deeplab(tmp_path / "m.pt", num_classes=21)


def test_load_for_inference_folds_bn_and_keeps_the_logits(tmp_path):
    """infer_deeplab and predict run the backbone BN-folded: same logits up to float rounding."""
    torch.manual_seed(0)
    model = build_deeplab("deeplab_largefov", "efficientnet_lite0", 3, pretrained=True, output_stride=16)
    save_deeplab(tmp_path / "m.pt", model, {"model": "deeplab_largefov"}, CLASSES)
    fast, meta = inference.load_for_inference(tmp_path / "m.pt", torch.device("cpu"))
    assert fast.backbone.bn_modules() == [] and not fast.training and meta["class_names"] == CLASSES
    x = torch.rand(2, 3, 75, 99)
    with torch.no_grad():
        ref = model.eval()(x)
        out = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


# --------------------------------------------------------------------------- loss / test-time averaging


def test_loss_ignores_void():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 6, 6)
    target = torch.full((1, 6, 6), VOID, dtype=torch.long)
    target[0, 2, 3] = 2
    loss = train_deeplab.segmentation_loss(logits, target)
    expected = -torch.log_softmax(logits[0, :, 2, 3], 0)[2]
    torch.testing.assert_close(loss, expected)
    # logits at a lower resolution are upsampled to the target first
    small = torch.randn(1, 4, 3, 3)
    up = F.interpolate(small, size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(train_deeplab.segmentation_loss(small, target),
                               -torch.log_softmax(up[0, :, 2, 3], 0)[2])
    # a crop with no labelled pixel contributes 0, not NaN
    empty = torch.full((1, 6, 6), VOID, dtype=torch.long)
    assert float(train_deeplab.segmentation_loss(logits, empty)) == 0.0


def test_shrink_labels_takes_each_output_pixels_centre():
    target = torch.arange(64).reshape(1, 8, 8)
    assert train_deeplab.shrink_labels(target, None) is target
    assert train_deeplab.shrink_labels(target, 1) is target
    small = train_deeplab.shrink_labels(target, 4)
    # output pixel (i, j) covers rows/cols 4i..4i+3; its centre 4i+1.5 rounds to 4i+2
    assert small.dtype == target.dtype and small.tolist() == [[[18, 22], [50, 54]]]
    # void and class ids survive the float round trip
    labels = torch.tensor([[[VOID, 3], [20, 0]]]).repeat_interleave(4, 1).repeat_interleave(4, 2)
    assert train_deeplab.shrink_labels(labels, 4).tolist() == [[[VOID, 3], [20, 0]]]


def test_loss_at_a_stride_is_the_loss_on_shrunk_labels():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 4)
    target = torch.randint(0, 5, (2, 16, 16))
    target[0, :3] = VOID
    small = train_deeplab.shrink_labels(target, 2)
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up, small, ignore_index=VOID)
    torch.testing.assert_close(train_deeplab.segmentation_loss(logits, small), expected)
    assert not torch.allclose(train_deeplab.segmentation_loss(logits, target), expected)


def test_poly_lr():
    assert train_deeplab.poly_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert train_deeplab.poly_lr(0.1, 50, 100) == pytest.approx(0.1 * 0.5 ** 0.9)
    assert train_deeplab.poly_lr(0.1, 100, 100) == 0.0


class ConstantModel(nn.Module):
    """Logits constant per class, at stride 8 of whatever input size."""

    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values, dtype=torch.float32)

    def forward(self, x):
        b, _, h, w = x.shape
        return self.values.view(1, -1, 1, 1).expand(b, -1, max(1, h // 8), max(1, w // 8)).clone()


def test_multiscale_flip_equals_single_scale_for_constant_model():
    model = ConstantModel([0.5, -1.0, 2.0])
    images = torch.rand(2, 3, 37, 45)
    single = inference.predict_probs(model, images, [1.0], False, input_scale=2.0)
    multi = inference.predict_probs(model, images, [0.75, 1.0, 1.25], True, input_scale=2.0)
    assert single.shape == (2, 3, 37, 45)
    torch.testing.assert_close(multi, single)
    torch.testing.assert_close(single[0, :, 0, 0], torch.softmax(model.values, 0))


def test_flip_averaging_is_flip_equivariant():
    torch.manual_seed(0)
    model = build_deeplab("deeplab_largefov", "tiny", 3, pretrained=False, output_stride=8).eval()
    images = torch.rand(1, 3, 32, 40)
    p = inference.predict_probs(model, images, [1.0, 1.5], True)
    pf = inference.predict_probs(model, torch.flip(images, dims=[3]), [1.0, 1.5], True)
    torch.testing.assert_close(torch.flip(pf, dims=[3]), p, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 32, 40))


# --------------------------------------------------------------------------- stage runs on a tiny dataset


def _make_dataset(root: Path, n_train=12, n_val=4, size=40):
    """Coloured squares (class 1 red, class 2 blue) on noise, void band on the boundary."""
    rng = np.random.default_rng(0)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"class_names": CLASSES}))
    for split, n in (("train", n_train), ("val", n_val)):
        ids = []
        for i in range(n):
            image_id = f"{split}_{i:03d}"
            img = rng.integers(60, 140, (size, size, 3)).astype(np.uint8)
            mask = np.zeros((size, size), np.uint8)
            c = 1 + i % 2
            s = int(rng.integers(12, 22))
            y, x = rng.integers(0, size - s, 2)
            img[y:y + s, x:x + s] = (220, 30, 30) if c == 1 else (30, 30, 220)
            mask[y:y + s, x:x + s] = c
            mask[y, x:x + s] = mask[y + s - 1, x:x + s] = VOID
            mask[y:y + s, x] = mask[y:y + s, x + s - 1] = VOID
            Image.fromarray(img).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            write_palette_png(root / "SegmentationClass" / f"{image_id}.png", mask)
            ids.append(image_id)
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return _make_dataset(tmp_path_factory.mktemp("deeplab_data") / "voc")


def _config(**deeplab):
    section = dict(model="deeplab_largefov", backbone="tiny", pretrained=False, output_stride=8, input_scale=1.0,
                   crop_size=32, scales=[0.75, 1.0, 1.25], batch_size=4, epochs=2, lr=0.01, head_lr_mult=10.0,
                   num_workers=0, test_scales=[1.0], test_flip=False, test_crf=False)
    section.update(deeplab)
    return validate({"seed": 0, "device": "cpu", "deeplab": section})


def _eval_loss(model, dataset):
    model.eval()
    with torch.no_grad():
        losses = [train_deeplab.segmentation_loss(model(s["image"][None]), s["mask"][None])
                  for s in (dataset[i] for i in range(len(dataset)))]
    return float(torch.stack(losses).mean())


@pytest.mark.parametrize("loss_stride", [None, 4])
def test_one_epoch_lowers_the_loss(data_root, loss_stride):
    from icd_pipeline.data.voc import SegmentationDataset, VOCLayout

    torch.manual_seed(0)
    layout = VOCLayout.open(data_root)
    plain = SegmentationDataset(layout, "train")
    cfg = _config(lr=0.02)["deeplab"]
    model = build_deeplab("deeplab_largefov", "tiny", layout.num_classes, pretrained=False, output_stride=8)
    opt = train_deeplab.make_optimizer(model, cfg)
    loader = torch.utils.data.DataLoader(plain, batch_size=4, shuffle=True)
    before = _eval_loss(model, plain)
    for _ in range(3):  # three passes over 12 images = one "epoch" of 9 iterations
        train_deeplab.train_one_epoch(model, loader, opt, torch.device("cpu"), None, 0, 100, progress=False,
                                      loss_stride=loss_stride)
    after = _eval_loss(model, plain)  # at the full label size either way
    assert after < before * 0.9


def test_train_resume_and_infer(data_root, tmp_path, monkeypatch):
    cfg = _config(epochs=2)
    out = tmp_path / "full"
    # uninterrupted reference run
    ref = tmp_path / "ref"
    assert train_deeplab.main(["--config-json", json.dumps(cfg), "--data-root", str(data_root), "--split", "train",
                               "--out-dir", str(ref), "--no-progress"]) == 0
    for name in ("model.pt", "metrics.csv", "loss_curve.png", "checkpoints/last.pt"):
        assert (ref / name).is_file(), name
    with open(ref / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == set(train_deeplab.METRIC_COLUMNS)

    # interrupted after the first epoch, then rerun: resumes at epoch 2, same result
    real = train_deeplab.train_one_epoch
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_deeplab, "train_one_epoch", failing)
    with pytest.raises(KeyboardInterrupt):
        train_deeplab.train(cfg, data_root, "train", None, out, progress=False)
    assert not (out / "model.pt").exists()
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(train_deeplab, "train_one_epoch", real)
    resumed = []
    monkeypatch.setattr(train_deeplab, "train_one_epoch",
                        lambda *a, **k: resumed.append(k.get("desc")) or real(*a, **k))
    train_deeplab.train(cfg, data_root, "train", None, out, progress=False)
    assert resumed == ["epoch 2/2"]
    a = torch.load(ref / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)

    # inference + evaluation (multi-scale + flip), then the pictures
    pred = tmp_path / "pred"
    cfg_inf = _config(test_scales=[0.75, 1.0], test_flip=True)
    assert infer_deeplab.main(["--config-json", json.dumps(cfg_inf), "--data-root", str(data_root), "--split", "val",
                               "--checkpoint", str(out / "model.pt"), "--pred-dir", str(pred),
                               "--out-csv", str(tmp_path / "pc.csv"), "--out-json", str(tmp_path / "s.json"),
                               "--no-progress"]) == 0
    assert sorted(p.name for p in pred.iterdir()) == [f"val_{i:03d}.png" for i in range(4)]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert 0.0 <= summary["miou"] <= 1.0 and summary["images"] == 4
    assert summary["test_flip"] is True and summary["test_scales"] == [0.75, 1.0]
    assert deeplab_pictures.main(["--data-root", str(data_root), "--split", "val", "--pred-pseudo", str(pred),
                                  "--pred-full", str(pred), "--per-class-pseudo", str(tmp_path / "pc.csv"),
                                  "--per-class-full", str(tmp_path / "pc.csv"), "--out-grid",
                                  str(tmp_path / "grid.png"), "--out-bars", str(tmp_path / "bars.png"),
                                  "--num", "3"]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0 and (tmp_path / "bars.png").stat().st_size > 0


def test_infer_with_crf(data_root, tmp_path):
    model = build_deeplab("deeplab_largefov", "tiny", 3, pretrained=False, output_stride=8)
    save_deeplab(tmp_path / "m.pt", model, _config()["deeplab"], CLASSES)
    cfg = _config(test_crf=True, test_crf_params=dict(gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=20,
                                                      bilateral_srgb=13, bilateral_compat=10, iterations=2))
    summary = infer_deeplab.infer(cfg, data_root, "val", tmp_path / "m.pt", tmp_path / "pred", tmp_path / "pc.csv",
                                  tmp_path / "s.json", progress=False)
    assert summary["test_crf"] is True and summary["crf_params"]["bilateral_sxy"] == 20
    assert len(list((tmp_path / "pred").iterdir())) == 4


def test_missing_pseudo_mask_is_an_error(data_root, tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    rc = train_deeplab.main(["--config-json", json.dumps(_config()), "--data-root", str(data_root), "--split",
                             "train", "--mask-dir", str(masks), "--out-dir", str(tmp_path / "o"), "--no-progress"])
    assert rc == 1
    assert "train_000.png" in capsys.readouterr().err


def test_regenerated_pseudo_masks_start_afresh(data_root, tmp_path):
    """Pseudo-masks rewritten in the same folder (another seed threshold) must not let a
    finished checkpoint of the old masks be resumed."""
    import shutil
    import time

    from icd_pipeline.data.voc import VOCLayout

    masks = tmp_path / "masks"
    shutil.copytree(Path(data_root) / "SegmentationClass", masks)
    ids = VOCLayout.open(data_root).ids("train")
    stamp = train_deeplab.masks_stamp(str(masks), ids)
    assert stamp == train_deeplab.masks_stamp(str(masks), ids) and train_deeplab.masks_stamp(None, ids) is None
    time.sleep(0.01)
    (masks / f"{ids[0]}.png").write_bytes((masks / f"{ids[1]}.png").read_bytes())
    assert train_deeplab.masks_stamp(str(masks), ids) != stamp
    cfg = _config(epochs=1)["deeplab"]
    assert (train_deeplab.fingerprint(cfg, 0, "train", str(masks), str(data_root), stamp)
            != train_deeplab.fingerprint(cfg, 0, "train", str(masks), str(data_root),
                                         train_deeplab.masks_stamp(str(masks), ids)))
