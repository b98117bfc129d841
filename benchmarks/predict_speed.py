"""Speed, memory and export fidelity of ``predict`` / ``export`` (issue 17).

    OMP_NUM_THREADS=2 python benchmarks/predict_speed.py [--model MODEL.pt] [--sample-root VOC2012]

Prints, on this machine's CPU (or CUDA with ``--device auto`` when present):

* predict images/s (wall clock; and images per CPU-second, the figure that survives a
  machine shared with other jobs) on the embedded val split (200 images of 96 px, generated here unless
  ``--embedded-root`` names a generated dataset) and on 50 real VOC sample photographs;
* peak memory (max RSS of a fresh ``python -m icd_pipeline.stages.predict`` process) on 50 and on
  200 real photographs: streaming means the two are about equal. With mixed image sizes the
  peak also grows with the number of distinct sizes (most likely per-shape kernel caches):
  ``--same-size`` keeps the photographs of one size to separate the two effects;
* the largest absolute difference between the ONNX file's logits (onnxruntime) and the PyTorch
  model's, on embedded and real images at their own sizes.

Without ``--model`` the model is the embedded default's DeepLab (``config.yaml`` ``deeplab``:
LargeFOV over efficientnet_lite0 with its ImageNet weights) with a **randomly initialised
head**: speed and memory do not depend on the weights, and the ONNX comparison uses logits
rescaled to a trained model's range (fc8 ~ N(0, 0.1^2)). Say so when quoting the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icd_pipeline.stages import export, predict  # noqa: E402
from icd_pipeline.config import load_config, validate  # noqa: E402
from icd_pipeline.data import synthetic  # noqa: E402
from icd_pipeline.data.voc import VOCLayout  # noqa: E402
from icd_pipeline.models.deeplab import build_from_config, save_deeplab  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "voc2012-sample" / "VOC2012"
RSS_WRAPPER = (
    "import resource, sys\n"
    "from icd_pipeline.stages import predict\n"
    "rc = predict.main(sys.argv[1:])\n"
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def random_head_model(config: dict, num_classes: int, class_names: list[str], path: Path) -> Path:
    torch.manual_seed(0)
    model = build_from_config(config["deeplab"], num_classes, pretrained=True)
    for branch in model.head:
        fc8 = getattr(branch, "fc8", None) or getattr(branch, "conv")
        torch.nn.init.normal_(fc8.weight, 0.0, 0.1)
    save_deeplab(path, model, config["deeplab"], class_names)
    return path


def link_images(sources: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for src in sources:
        (folder / src.name).symlink_to(src)
    return folder


def run_predict(model: Path, images: Path, out: Path, config_json: str) -> dict:
    """A fresh process: its images/s and max RSS."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-c", RSS_WRAPPER, "--model", str(model), "--images", str(images), "--out", str(out),
           "--config-json", config_json, "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["max_rss_mb"] = int(proc.stderr.split("MAXRSS_KB")[-1].split()[0]) / 1024
    return result


def onnx_difference(model_path: Path, image_files: list[Path], work: Path) -> dict:
    """Largest |ONNX - PyTorch| logit, the largest |logit| (the scale it is relative to) and
    the share of pixels whose argmax class differs, over ``image_files`` at their own sizes."""
    import onnxruntime as ort

    onnx_path = work / "model.onnx"
    export.export(model_path, "onnx", onnx_path)
    wrapper, _ = export.build_export_module(model_path)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst, scale, flipped, pixels = 0.0, 0.0, 0, 0
    for f in image_files:
        x = torch.from_numpy(np.ascontiguousarray(predict.load_image(f).transpose(2, 0, 1))).float()[None] / 255
        with torch.no_grad():
            ref = wrapper(x).numpy()
        got = session.run(["logits"], {"images": x.numpy()})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        flipped += int((got.argmax(1) != ref.argmax(1)).sum())
        pixels += ref.shape[0] * ref.shape[2] * ref.shape[3]
    return {"max_abs": worst, "max_logit": scale, "argmax_changed": flipped / max(pixels, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a trained model.pt (default: random head, see above)")
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--embedded-root", type=Path, default=None, help="a generated embedded dataset")
    parser.add_argument("--sample-root", type=Path, default=SAMPLE, help="VOC-layout folder of real photographs")
    parser.add_argument("--device", default="cpu", help="cpu | auto | cuda")
    parser.add_argument("--sizes", type=int, nargs=2, default=[50, 200], help="real-image counts for memory")
    parser.add_argument("--same-size", action="store_true",
                        help="real photographs of the most common size only: memory without shape-keyed caches")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override predict.batch_size (1: peak memory without batch-fill effects)")
    args = parser.parse_args()

    config = load_config([args.config])
    config["device"] = args.device
    if args.batch_size is not None:
        config["predict"]["batch_size"] = args.batch_size
    config_json = json.dumps({"device": args.device, "deeplab": config["deeplab"], "predict": config["predict"]})
    print(f"# torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, device {args.device}, "
          f"predict.batch_size {config['predict']['batch_size']}")
    with tempfile.TemporaryDirectory(prefix="predict_speed_") as tmp:
        work = Path(tmp)
        if args.embedded_root is None:
            params = validate({"dataset": {"synthetic": dict(config["dataset"]["synthetic"], num_train=1)}})
            synthetic.generate(work / "embedded", params["dataset"]["synthetic"], seed=0, progress=False)
            args.embedded_root = work / "embedded"
        layout = VOCLayout.open(args.embedded_root)
        if args.model is None:
            args.model = random_head_model(config, layout.num_classes, layout.class_names, work / "model.pt")
            print("# model: embedded default DeepLab (efficientnet_lite0 ImageNet backbone) with a RANDOM head")
        else:
            print(f"# model: {args.model}")
        val = link_images([layout.image_path(i) for i in layout.ids(config["dataset"]["eval_split"])], work / "val")

        t = time.time()
        emb = run_predict(args.model, val, work / "out_val", config_json)
        print(f"embedded val: {emb['segmented']} images, {emb['images_per_s']:.2f} images/s, "
              f"{emb['segmented'] / emb['cpu_seconds']:.2f} images per CPU-second "
              f"(wall with start-up {time.time() - t:.1f} s), max RSS {emb['max_rss_mb']:.0f} MB")
        real = sorted((args.sample_root / "JPEGImages").glob("*.jpg")) if args.sample_root.is_dir() else []
        if args.same_size and real:
            from collections import Counter

            from PIL import Image
            sizes = {f: Image.open(f).size for f in real}
            common = Counter(sizes.values()).most_common(1)[0][0]
            real = [f for f in real if sizes[f] == common]
            print(f"# real photographs of {common[0]}x{common[1]} only: {len(real)}")
        small_n, large_n = args.sizes
        if len(real) < large_n:
            print(f"# real photographs: {len(real)} under {args.sample_root}, need {large_n}; skipped")
        else:
            for n in (small_n, large_n):
                folder = link_images(real[:n], work / f"real{n}")
                res = run_predict(args.model, folder, work / f"out_real{n}", config_json)
                print(f"real photographs x{n}: {res['images_per_s']:.2f} images/s, "
                      f"{res['segmented'] / res['cpu_seconds']:.2f} images per CPU-second, "
                      f"max RSS {res['max_rss_mb']:.0f} MB")
        diff_files = [layout.image_path(i) for i in layout.ids(config["dataset"]["eval_split"])[:5]] + real[:5]
        diff = onnx_difference(args.model, diff_files, work)
        print(f"ONNX (onnxruntime CPU) vs PyTorch logits on {len(diff_files)} images: max abs difference "
              f"{diff['max_abs']:.3g} (largest |logit| {diff['max_logit']:.3g}, relative "
              f"{diff['max_abs'] / max(diff['max_logit'], 1e-12):.2g}); argmax class differs on "
              f"{diff['argmax_changed']:.2%} of pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
