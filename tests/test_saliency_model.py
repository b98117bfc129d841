"""The ONNX saliency runner (models/saliency.py) and the saliency stage, on tiny models built here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from saliency_onnx import export_float16, export_tiny

from icd_pipeline.models.saliency import (KNOWN_MODELS, MissingModelError, SaliencyModelError, SaliencyRunner,
                                          foreground_iou, preprocess, resolve_model)

NORM = dict(mean=(128.0, 128.0, 128.0), std=(256.0, 256.0, 256.0))


def _torch_map(model, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(batch))[0].numpy()[:, 0]


def test_runs_at_the_file_size_and_at_other_sizes_like_the_network(tmp_path):
    """The file fixes 32 x 32; at 32, 64 and 48 the runner's maps equal the torch module's at
    that size (the traced Resize sizes became scale factors), for a batch of 2 too."""
    path = tmp_path / "tiny.onnx"
    model = export_tiny(path, size=32)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    for size in (32, 64, 48):
        runner = SaliencyRunner(path, size, threads=1, batch_size=2, **NORM)
        batch = x[:, :, :size, :size]
        np.testing.assert_allclose(runner.raw(batch), _torch_map(model, batch), atol=1e-5)
    assert runner.size_multiple == 4  # two 2x poolings before the upsampling
    with pytest.raises(SaliencyModelError, match="multiple of 4"):
        SaliencyRunner(path, 30, threads=1, **NORM)


def test_maps_come_back_at_each_image_size_in_0_1(tmp_path):
    path = tmp_path / "tiny.onnx"
    model = export_tiny(path, size=32)
    images = [np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
              for i, (h, w) in enumerate([(30, 50), (41, 23), (32, 32)])]
    runner = SaliencyRunner(path, 64, threads=1, batch_size=2, **NORM)
    maps = runner(images)
    assert [m.shape for m in maps] == [(30, 50), (41, 23), (32, 32)]
    assert all(m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1 for m in maps)
    # the map is the network's at 64 x 64, resized back (bilinear)
    net = _torch_map(model, preprocess(images[0], 64, NORM["mean"], NORM["std"])[None])[0]
    expected = np.asarray(Image.fromarray(net, mode="F").resize((50, 30), Image.BILINEAR))
    np.testing.assert_allclose(maps[0], np.clip(expected, 0, 1), atol=1e-5)
    # preprocessing is (rgb - mean) / std on the resized image
    flat = np.full((8, 8, 3), 200, np.uint8)
    np.testing.assert_allclose(preprocess(flat, 4, (100, 150, 200), (2, 5, 10))[:, 0, 0], [50, 10, 0])


def test_float16_weights_run_in_float32(tmp_path):
    path = tmp_path / "fp16.onnx"
    w = export_float16(path, size=16)
    x = np.random.default_rng(1).standard_normal((1, 3, 24, 24)).astype(np.float32)
    runner = SaliencyRunner(path, 24, threads=1, **NORM)
    expected = torch.sigmoid(F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1)).numpy()[:, 0]
    np.testing.assert_allclose(runner.raw(x), expected, atol=1e-5)
    assert runner.session.get_inputs()[0].type == "tensor(float)"


@pytest.mark.parametrize("kind, message", [
    ("channels", r"input 'input' has shape \[1, 1, 32, 32\]"),
    ("outputs", r"output 'output' has shape \[1, 2, 32, 32\]"),
    ("logits", r"values in .*not a \[0, 1\] map"),
    ("not_onnx", "not a readable ONNX file"),
])
def test_a_file_that_is_not_a_saliency_model_is_refused(tmp_path, kind, message):
    path = tmp_path / f"{kind}.onnx"
    if kind == "channels":
        export_tiny(path, in_channels=1)
    elif kind == "outputs":
        export_tiny(path, out_channels=2)
    elif kind == "logits":
        export_tiny(path, sigmoid=False)
    else:
        path.write_bytes(b"not an onnx file")
    with pytest.raises(SaliencyModelError, match=message) as err:
        runner = SaliencyRunner(path, 32, threads=1, **NORM)
        runner([np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)])
    assert str(path) in str(err.value)


def test_named_output_and_missing_models(tmp_path, monkeypatch):
    path = tmp_path / "tiny.onnx"
    export_tiny(path)
    with pytest.raises(SaliencyModelError, match="no output named 'nope'"):
        SaliencyRunner(path, 32, output="nope", **NORM)
    with pytest.raises(SaliencyModelError, match=r"output 'side' has shape \[1, 4, 32, 32\]"):
        SaliencyRunner(path, 32, output="side", **NORM)
    monkeypatch.setenv("ICD_PIPELINE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MissingModelError, match="make saliency-model") as err:
        resolve_model("isnet-medium")
    assert str(tmp_path / "cache" / "saliency" / "isnet-medium.onnx") in str(err.value)
    assert "fetch_saliency_model --model isnet-medium" in str(err.value)
    with pytest.raises(MissingModelError, match="no such file, and not a known model name"):
        resolve_model(str(tmp_path / "absent.onnx"))
    assert set(KNOWN_MODELS) == {"isnet-medium", "isnet-small"}
    assert all(len(m.sha256) == 64 and "MIT" in m.licence for m in KNOWN_MODELS.values())


def test_foreground_iou_leaves_void_out():
    smap = np.array([[0.9, 0.9, 0.1], [0.1, 0.8, 0.2]], np.float32)
    mask = np.array([[3, 0, 0], [3, 255, 0]], np.uint8)
    assert foreground_iou(smap, mask) == (1, 3)


def test_saliency_stage_writes_one_png_per_image_and_a_manifest(tmp_path, monkeypatch, capsys):
    from icd_pipeline.data.synthetic import generate, resolve_params
    from icd_pipeline.stages import saliency as stage

    params = resolve_params({"num_classes": 2, "image_size": 40, "num_train": 3, "num_val": 1})
    generate(tmp_path / "d", params, seed=0, progress=False)
    export_tiny(tmp_path / "tiny.onnx")
    cfg = json.dumps({"saliency": {"model": str(tmp_path / "tiny.onnx"), "input_size": 16, "batch_size": 2}})
    out = tmp_path / "maps"
    assert stage.main(["--config-json", cfg, "--data-root", str(tmp_path / "d"), "--split", "train",
                       "--out-dir", str(out), "--no-progress"]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"train_{i:05d}.png" for i in range(3)]
    img = Image.open(out / pngs[0])
    assert img.mode == "L" and img.size == (40, 40)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_images"] == 3 and manifest["input_size"] == 16 and len(manifest["model_sha256"]) == 64
    # a missing model: exit 1, the message names the fetch command, no output folder
    cfg = json.dumps({"saliency": {"model": "isnet-small"}})
    bad = tmp_path / "bad"
    monkeypatch.setenv("ICD_PIPELINE_CACHE", str(tmp_path / "empty-cache"))
    capsys.readouterr()
    assert stage.main(["--config-json", cfg, "--data-root", str(tmp_path / "d"), "--out-dir", str(bad)]) == 1
    assert "make saliency-model" in capsys.readouterr().err
    assert not bad.exists()
