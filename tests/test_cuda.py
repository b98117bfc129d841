"""The CUDA path of each GPU stage (training under AMP; whole-image passes in float32 without
cuDNN, ``misc.runtime.whole_image_inference``) against the CPU path.

Skipped where no GPU is visible (CI); run on a GPU machine with
``pytest tests/test_cuda.py``. Each stage runs on CUDA and on the CPU from the same inputs,
and the results must agree to float16's precision: a stage that silently computes something
else on a GPU (a dtype, a device, a padding that only CUDA takes) fails here. Passed on an
H200 (torch 2.11, 2026-11-28) with the inference still in float16.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_deeplab import _config as deeplab_config
from test_deeplab import _make_dataset
from test_train_icd import icd_config, make_voc, read_rows

from icd_pipeline.stages import extract_maps, infer_deeplab, train_deeplab, train_icd
from icd_pipeline import feature_cache as FC
from icd_pipeline.stages import feature_cache as feature_cache_stage
from icd_pipeline.config import validate
from icd_pipeline.maps_io import MapsReader
from icd_pipeline.misc.runtime import select_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_voc(tmp_path_factory.mktemp("cuda_voc") / "data", n=16)


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def test_auto_device_is_the_gpu():
    assert select_device("auto").type == "cuda"


def test_icd_trains_on_cuda_and_its_maps_match_the_cpu_extraction(voc, tmp_path):
    cfg = icd_config(epochs=3)
    cfg["device"] = "cuda"
    out = tmp_path / "icd"
    assert train_icd.main(["--config-json", json.dumps(cfg), "--data-root", str(voc), "--split", "train",
                           "--grid-superpixels", "8", "--out-dir", str(out)]) == 0
    rows = read_rows(out / "metrics.csv")
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)
    assert float(rows[-1]["loss_cls"]) < float(rows[0]["loss_cls"])

    maps = {}
    for device in ("cpu", "cuda"):
        maps[device] = tmp_path / f"maps_{device}.h5"
        mcfg = {"device": device, "maps": {"scales": [1.0, 1.5], "flip": True, "batch_size": 4, "num_workers": 0}}
        assert extract_maps.main(["--config-json", json.dumps(mcfg), "--data-root", str(voc), "--split", "train",
                                  "--checkpoint", str(out / "model.pt"), "--out", str(maps[device]),
                                  "--no-progress"]) == 0
    with MapsReader(maps["cpu"]) as cpu, MapsReader(maps["cuda"]) as gpu:
        assert cpu.ids == gpu.ids
        for image_id in cpu.ids:
            a, b = gpu.read(image_id), cpu.read(image_id)
            assert list(a["class_ids"]) == list(b["class_ids"]) and a["valid_hw"] == b["valid_hw"]
            # the same weights through CUDA and CPU kernels, then the int8 store: within a few per cent
            assert _relative_error(a["cam"], b["cam"]) < 0.05, image_id
            assert _relative_error(a["td"], b["td"]) < 0.05, image_id
            # the ICD seed is the sign of td: it may differ only where td is near zero
            strong = np.abs(b["td"]) > 0.1 * np.abs(b["td"]).max()
            assert (np.sign(a["td"][strong]) == np.sign(b["td"][strong])).all(), image_id


def test_feature_cache_on_cuda_matches_the_cpu_cache(voc, tmp_path):
    caches = {}
    for device in ("cpu", "cuda"):
        cfg = validate(icd_config(frozen_stages=4, freeze_bn=True, feature_cache=True, scales=[1.0, 1.5]))
        cfg["device"] = device
        caches[device] = tmp_path / f"{device}.h5"
        feature_cache_stage.build(cfg, voc, "train", caches[device], progress=False)
    cpu, gpu = FC.FeatureCache(caches["cpu"]), FC.FeatureCache(caches["cuda"])
    assert cpu.ids == gpu.ids and cpu.variants == gpu.variants
    np.testing.assert_array_equal(cpu.index, gpu.index)
    for i in range(len(cpu.ids)):
        for v in range(len(cpu.variants)):
            for a, b in zip(gpu.features(i, v), cpu.features(i, v)):
                assert a.shape == b.shape
                assert _relative_error(a.astype(np.float32), b.astype(np.float32)) < 0.02, (i, v)


def test_deeplab_trains_on_cuda_with_amp_and_infers_as_on_the_cpu(tmp_path_factory, tmp_path):
    data = _make_dataset(tmp_path_factory.mktemp("cuda_deeplab") / "voc")
    cfg = deeplab_config(epochs=3, lr=0.02)
    cfg["device"] = "cuda"
    out = tmp_path / "full"
    assert train_deeplab.main(["--config-json", json.dumps(cfg), "--data-root", str(data), "--split", "train",
                               "--out-dir", str(out), "--no-progress"]) == 0
    rows = read_rows(out / "metrics.csv")
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])

    summaries, preds = {}, {}
    for device in ("cpu", "cuda"):
        icfg = deeplab_config(test_scales=[0.75, 1.0], test_flip=True)
        icfg["device"] = device
        preds[device] = tmp_path / f"pred_{device}"
        summary = tmp_path / f"{device}.json"
        assert infer_deeplab.main(["--config-json", json.dumps(icfg), "--data-root", str(data), "--split", "val",
                                   "--checkpoint", str(out / "model.pt"), "--pred-dir", str(preds[device]),
                                   "--out-csv", str(tmp_path / f"{device}.csv"), "--out-json", str(summary),
                                   "--no-progress"]) == 0
        summaries[device] = json.loads(summary.read_text())
    agree = total = 0
    for png in sorted(preds["cpu"].iterdir()):
        a = np.asarray(Image.open(preds["cuda"] / png.name))
        b = np.asarray(Image.open(png))
        agree += int((a == b).sum())
        total += b.size
    assert agree / total > 0.98
    assert abs(summaries["cuda"]["miou"] - summaries["cpu"]["miou"]) < 0.02
