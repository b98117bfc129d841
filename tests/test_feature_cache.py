"""Frozen-backbone feature cache: exact features, a head step from the cache equals the same
step through the frozen backbone, training and extraction from it, and refusals."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch
from test_train_icd import icd_config, make_voc

from icd_pipeline import feature_cache as FC
from icd_pipeline.stages import feature_cache as feature_cache_stage
from icd_pipeline.stages import extract_maps, train_icd
from icd_pipeline.config import ConfigError, validate
from icd_pipeline.data.voc import VOCLayout, read_image
from icd_pipeline.maps_io import MapsReader
from icd_pipeline.models.icd import build_icd_model
from icd_pipeline.stages.train_icd import train_step
from icd_pipeline.superpixels import GridSuperpixels

FROZEN = dict(frozen_stages=4, freeze_bn=True, feature_cache=True, scales=[1.0, 1.5], epochs=2)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), n=8)


@pytest.fixture(scope="module")
def cache_file(voc, tmp_path_factory):
    cfg = validate(icd_config(**FROZEN))
    out = tmp_path_factory.mktemp("cache") / "train.h5"
    feature_cache_stage.build(cfg, voc, "train", out, progress=False)
    return cfg, out


def test_cache_holds_the_backbone_features_of_every_variant(voc, cache_file):
    cfg, path = cache_file
    cache = FC.FeatureCache(path, icd_cfg=cfg["icd"])
    assert cache.variants == [(1.0, False), (1.0, True), (1.5, False), (1.5, True)]
    torch.manual_seed(cfg["seed"])
    model = build_icd_model(cfg["icd"], 2).eval()
    layout = VOCLayout.open(voc)
    image = read_image(layout.image_path(cache.ids[3]))
    for v, (scale, flip) in enumerate(cache.variants):
        with torch.no_grad():
            f = model.backbone(FC.variant_image(image, scale, flip)[None])
        out, icd = cache.features(3, v)
        assert out.shape[:2] == tuple(f["out"].shape[2:])
        np.testing.assert_allclose(out, f["out"][0].permute(1, 2, 0).numpy(), rtol=1e-2, atol=1e-2)
        np.testing.assert_allclose(icd, f["icd"][0].permute(1, 2, 0).numpy(), rtol=1e-2, atol=1e-2)
        assert tuple(cache.index[3, v, 3:5]) == FC.scaled_hw(image.shape[:2], scale)


def test_head_step_from_cache_equals_step_through_frozen_backbone(voc, cache_file):
    cfg, path = cache_file
    cache = FC.FeatureCache(path)
    layout = VOCLayout.open(voc)
    idx = [0, 1, 2, 3]
    images = torch.stack([FC.variant_image(read_image(layout.image_path(cache.ids[i])), 1.0, False) for i in idx])
    cached = {k: torch.stack([torch.from_numpy(cache.features(i, 0)[j].astype(np.float32)).permute(2, 0, 1)
                              for i in idx]) for j, k in enumerate(("out", "icd"))}
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    sp = torch.from_numpy(np.stack([GridSuperpixels(layout, 8)(cache.ids[i]) for i in idx]))
    torch.manual_seed(cfg["seed"])
    base = build_icd_model(cfg["icd"], 2)
    cache.check_backbone(base.backbone)
    # the frozen backbone as the cache stage runs it (BN folded into the convs, inference_copy;
    # each image's variants of one scale in one batch), stored as the cache stores it (float16);
    # the step through the backbone itself (loss_img, below) differs by that rounding only
    fast = base.backbone.inference_copy()
    feats = [FC.compute_features(fast, read_image(layout.image_path(cache.ids[i])), cache.variants,
                                 torch.device("cpu"))[0] for i in idx]
    live = {k: torch.stack([torch.from_numpy(f[j].astype(np.float32)).permute(2, 0, 1) for f in feats])
            for j, k in enumerate(("out", "icd"))}

    def step(inputs):
        model = copy.deepcopy(base).train()
        torch.manual_seed(1)  # same dropout masks
        res = train_step(model, inputs, y, sp, cfg["icd"], omega=0.5, amp=False)
        res["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert grads and not any(n.startswith("backbone.") for n in grads)
        return [float(res[k].detach()) for k in ("loss_cls", "loss_bu", "loss_td")], grads

    loss_img, grad_img = step(images)
    loss_live, grad_live = step(live)
    loss_cache, grad_cache = step(cached)
    np.testing.assert_allclose(loss_cache, loss_live, rtol=1e-5, atol=1e-7)
    assert grad_cache.keys() == grad_live.keys()
    for name in grad_live:
        torch.testing.assert_close(grad_cache[name], grad_live[name], rtol=1e-4, atol=1e-6, msg=name)
    # and the float16 storage itself moves the losses by far less than a training step does
    np.testing.assert_allclose(loss_cache, loss_img, rtol=2e-3, atol=1e-5)
    for name in grad_img:  # float16 features move fc6's gradient by ~3 % of its largest entry
        scale = float(grad_img[name].abs().max())
        torch.testing.assert_close(grad_cache[name], grad_img[name], rtol=0.0, atol=0.05 * scale)


def test_training_from_cache_writes_a_model_and_extraction_reads_the_cache(voc, cache_file, tmp_path):
    cfg, path = cache_file
    res = train_icd.train(cfg, voc, "train", tmp_path / "icd", grid_superpixels=8, feature_cache=path,
                          eval_split="train")
    assert len(res["rows"]) == 2 and all(np.isfinite(r["loss"]) for r in res["rows"])
    assert (tmp_path / "icd" / "model.pt").is_file()
    classifier = json.loads((tmp_path / "icd" / "classifier.json").read_text())
    assert 0.0 <= classifier["map"] <= 1.0 and set(classifier["ap"]) <= {"square", "disc"}
    # maps from the cache (scales 1 and 1.5, flip) match the maps through the backbone
    maps_cfg = validate({"maps": {"scales": [1.0, 1.5], "flip": True, "batch_size": 4, "num_workers": 0,
                                  "encoding": "float16"}, "device": "cpu"})
    model_pt = str(tmp_path / "icd" / "model.pt")
    extract_maps.run(maps_cfg, str(voc), "train", model_pt, str(tmp_path / "live.h5"), progress=False)
    extract_maps.run(maps_cfg, str(voc), "train", model_pt, str(tmp_path / "cached.h5"), progress=False,
                     feature_cache=str(path))
    with MapsReader(tmp_path / "live.h5") as live, MapsReader(tmp_path / "cached.h5") as cached:
        assert live.ids == cached.ids
        for image_id in live.ids:
            a, b = live.read(image_id), cached.read(image_id)
            assert a["valid_hw"] == b["valid_hw"] and a["class_ids"] == b["class_ids"]
            for key in ("cam", "td"):
                scale = max(float(np.abs(a[key]).max()), 1e-3)
                np.testing.assert_allclose(b[key] / scale, a[key] / scale, atol=0.05, err_msg=f"{image_id} {key}")


def test_cache_crop_window_and_superpixels():
    rng = random.Random(0)
    feat = np.arange(3 * 5 * 2, dtype=np.float16).reshape(3, 5, 2)
    top, left = FC.crop_window(feat.shape[:2], 4, rng)
    assert top == 0 and 0 <= left <= 1
    crop = FC.crop_features(feat, top, left, 4)
    assert crop.shape == (2, 4, 4) and float(crop[:, 3].abs().sum()) == 0.0  # row 3 is padding
    np.testing.assert_array_equal(crop[:, :3, :4].numpy(), feat[:, left:left + 4].transpose(2, 0, 1))
    sp = np.array([[0, 1], [2, 3]])
    win = FC.crop_superpixels(sp, (4, 4), True, 0, 0, 3, 2).numpy()
    assert win.shape == (6, 6)
    np.testing.assert_array_equal(win[:4, :4], [[1, 1, 0, 0], [1, 1, 0, 0], [3, 3, 2, 2], [3, 3, 2, 2]])
    assert (win[4:] == 4).all() and (win[:, 4:] == 4).all()


def test_cache_refused_for_a_training_backbone_or_other_settings(voc, cache_file, tmp_path):
    cfg, path = cache_file
    trainable = validate(icd_config(**dict(FROZEN, frozen_stages=2)))
    with pytest.raises(ConfigError, match="frozen_stages"):
        feature_cache_stage.build(trainable, voc, "train", tmp_path / "x.h5", progress=False)
    assert not (tmp_path / "x.h5").exists()
    other = copy.deepcopy(cfg)
    other["icd"]["scales"] = [1.0]
    with pytest.raises(FC.CacheError, match="scales"):
        train_icd.train(other, voc, "train", tmp_path / "icd", grid_superpixels=8, feature_cache=path)
    off = copy.deepcopy(cfg)
    off["icd"]["feature_cache"] = False
    with pytest.raises(ConfigError, match="feature_cache"):
        train_icd.train(off, voc, "train", tmp_path / "icd", grid_superpixels=8, feature_cache=path)


def test_deeplab_head_trains_from_the_cache(voc, cache_file, tmp_path):
    from icd_pipeline.stages import train_deeplab

    cfg, path = cache_file
    deeplab = {"backbone": "tiny", "pretrained": False, "output_stride": 8, "input_scale": 1.0, "crop_size": 64,
               "scales": [1.0, 1.5], "batch_size": 4, "epochs": 2, "num_workers": 0, "freeze_backbone": True,
               "feature_cache": True, "lr": 0.01}
    config = validate({"seed": cfg["seed"], "device": "cpu", "deeplab": deeplab})
    row = train_deeplab.train(config, voc, "train", None, tmp_path / "dl", progress=False, feature_cache=path)
    assert np.isfinite(row["loss"]) and (tmp_path / "dl" / "model.pt").is_file()
    cache = FC.FeatureCache(path)
    sample = FC.CachedSegmentationDataset(cache, VOCLayout.open(voc), "train", 64)[0]
    assert sample["out"].shape[1:] == (8, 8) and sample["mask"].shape == (64, 64)
    assert set(sample["mask"].unique().tolist()) <= {0, 1, 2, 255}
    config["deeplab"]["freeze_backbone"] = False
    with pytest.raises(ConfigError, match="freeze_backbone"):
        train_deeplab.train(config, voc, "train", None, tmp_path / "dl2", progress=False, feature_cache=path)
