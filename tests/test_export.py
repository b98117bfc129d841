"""export: ONNX and TorchScript files reproduce the PyTorch model's logits at any input size."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from icd_pipeline.stages import export
from icd_pipeline.data.voc import palette_array
from icd_pipeline.models.deeplab import build_deeplab, load_deeplab, save_deeplab

CLASSES = ["background", "cat", "dog"]
SIZES = [(1, 3, 64, 48), (2, 3, 77, 101)]  # the second: another batch and odd, non-square size


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """efficientnet_lite0 (the default backbone: its TF-SAME padding depends on the input size)
    with an input scale of 1.5, as the embedded default trains it."""
    torch.manual_seed(0)
    model = build_deeplab("deeplab_largefov", "efficientnet_lite0", 3, pretrained=True, output_stride=16)
    torch.nn.init.normal_(model.head[0].fc8.weight, 0.0, 0.1)  # logits of a few units, as a trained model's
    path = tmp_path_factory.mktemp("export") / "model.pt"
    save_deeplab(path, model, {"input_scale": 1.5, "test_scales": [0.75, 1.0], "test_flip": True}, CLASSES)
    return path


def reference_logits(checkpoint, images: torch.Tensor) -> np.ndarray:
    """The PyTorch model as predict_probs runs it (scale 1 x input scale 1.5, logits resized back)."""
    model, _ = load_deeplab(checkpoint)
    model.eval()
    h, w = images.shape[-2:]
    with torch.no_grad():
        x = F.interpolate(images, size=(int(h * 1.5), int(w * 1.5)), mode="bilinear", align_corners=False)
        return F.interpolate(model(x), size=(h, w), mode="bilinear", align_corners=False).numpy()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(*s, generator=g) for s in SIZES]


def test_traceable_padding_matches_the_original():
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    conv = Conv2dDynamicSamePadding(3, 4, 3, stride=2)
    copy = Conv2dDynamicSamePadding(3, 4, 3, stride=2)
    copy.load_state_dict(conv.state_dict())
    export.make_traceable(copy)
    assert type(copy) is export.TraceableSamePadConv2d
    for size in (8, 9):
        x = torch.rand(1, 3, size, size + 3)
        torch.testing.assert_close(copy(x), conv(x), rtol=0, atol=0)


def test_onnx_matches_pytorch(checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    assert export.main(["--model", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    for images in _inputs():
        logits = session.run(["logits"], {"images": images.numpy()})[0]
        ref = reference_logits(checkpoint, images)
        assert logits.shape == ref.shape == (images.shape[0], 3, *images.shape[-2:])
        assert np.abs(ref).max() > 1.0
        assert np.abs(logits - ref).max() < 1e-4
    info = json.loads((tmp_path / "model.onnx.json").read_text())
    assert info["class_names"] == CLASSES
    assert info["palette"] == palette_array()[:3].tolist()
    assert info["test_scales"] == [0.75, 1.0] and info["test_flip"] is True and info["input_scale"] == 1.5
    assert info["normalisation"]["mean"] == pytest.approx([127 / 255] * 3)
    assert info["input"]["range"] == [0.0, 1.0]


def test_torchscript_runs_without_the_package(checkpoint, tmp_path):
    out = tmp_path / "model.ts"
    assert export.main(["--model", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    for i, images in enumerate(_inputs()):
        np.save(tmp_path / f"in{i}.npy", images.numpy())
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        model = torch.jit.load({str(out)!r})
        for i in range({len(SIZES)}):
            x = torch.from_numpy(np.load(f"in{{i}}.npy"))
            with torch.no_grad():
                np.save(f"out{{i}}.npy", model(x).numpy())
        assert not [m for m in sys.modules if m.startswith("icd_pipeline")], "icd_pipeline was imported"
    """)
    # a clean environment: no PYTHONPATH, run from a folder outside the repository
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i, images in enumerate(_inputs()):
        logits = np.load(tmp_path / f"out{i}.npy")
        assert np.abs(logits - reference_logits(checkpoint, images)).max() < 1e-4


def test_bad_model_and_format(tmp_path, capsys):
    assert export.main(["--model", str(tmp_path / "none.pt"), "--format", "onnx", "--out",
                        str(tmp_path / "m.onnx")]) == 1
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(SystemExit):
        export.main(["--model", "x", "--format", "tflite", "--out", "y"])
