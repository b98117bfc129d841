"""Stage ``infer_deeplab``: DeepLab inference and VOC mIoU on a split (spec section 6).

    python -m icd_pipeline.stages.infer_deeplab --config-json JSON --data-root DIR --split val \
        --checkpoint results/<ds>/<exp>/deeplab/<target>/model.pt --pred-dir .../predictions \
        --out-csv .../per_class.csv --out-json .../summary.json

Each image is segmented by ``inference.segment`` (softmax averaged over ``deeplab.test_scales``
and flips, the optional dense CRF, argmax). Predictions are palette PNGs ``<id>.png`` written
into ``--pred-dir`` as a whole folder (atomically), then scored with ``evaluate`` (VOC
protocol, confusion matrix over the split): per-class IoU CSV and a summary JSON (mIoU, pixel
accuracy, mean accuracy, and the test settings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..config import ConfigError, add_config_args, config_from_args
from ..data.voc import DataError, VOCLayout, read_image, write_palette_png
from ..evaluate import evaluate_dirs, write_results, write_unscored
from ..inference import TestSettings, load_for_inference, segment
from ..misc.commands import command_name
from ..misc.io import atomic_dir
from ..misc.progress import progress as progress_bar
from ..misc.runtime import get_logger, select_device, set_threads
from ..models.deeplab import CheckpointError

LOG = get_logger("infer_deeplab")


def _batches(layout: VOCLayout, ids: list[str], batch_size: int):
    """Consecutive images of the same size, up to ``batch_size`` at a time."""
    pending: list[tuple[str, np.ndarray]] = []
    for image_id in ids:
        image = read_image(layout.image_path(image_id))
        if pending and (len(pending) >= batch_size or pending[0][1].shape != image.shape):
            yield pending
            pending = []
        pending.append((image_id, image))
    if pending:
        yield pending


def infer(config: dict, data_root: str | Path, split: str, checkpoint: str | Path, pred_dir: str | Path,
          out_csv: str | Path, out_json: str | Path, progress: bool = True) -> dict:
    section = config["deeplab"]
    set_threads()
    device = select_device(config.get("device", "auto"))
    layout = VOCLayout.open(data_root)
    ids = layout.ids(split)
    model, meta = load_for_inference(checkpoint, device, num_classes=layout.num_classes)
    settings = TestSettings.from_config(config, meta)
    batch_size = max(1, int(section.get("batch_size", 8)))
    LOG.info("predicting %d %s images with %s (scales %s x input %.2f, flip %s, CRF %s) on %s",
             len(ids), split, checkpoint, list(settings.scales), settings.input_scale, settings.flip,
             settings.crf if settings.crf else "off", device)
    start = time.time()
    with atomic_dir(pred_dir) as tmp:
        bar = progress_bar(total=len(ids), desc="predict", disable=not progress, file=sys.stderr)
        for batch in _batches(layout, ids, batch_size):
            labels = segment(model, [img for _, img in batch], settings, device)
            for (image_id, _), label in zip(batch, labels):
                write_palette_png(tmp / f"{image_id}.png", label)
            bar.update(len(batch))
        bar.close()
    seconds = time.time() - start
    scored = layout.ids_with_masks(ids)  # a user's dataset may have masks for some images, or none
    extra = {"split": split, "checkpoint": str(checkpoint), "model": meta["model"], "backbone": meta["backbone"],
             **settings.as_dict(), "seconds": seconds, "predicted_images": len(ids)}
    if not scored:
        extra["reason"] = f"none of the {len(ids)} images of split {split} has a ground-truth mask"
        summary = write_unscored(layout.class_names, out_csv, out_json, extra)
        LOG.info("%d %s images predicted in %.1f s; not scored: %s", len(ids), split, seconds, extra["reason"])
        return summary
    ev = evaluate_dirs(layout, scored, pred_dir, ignore_pred_void=False, progress=progress)
    summary = write_results(ev, layout.class_names, out_csv, out_json, extra)
    LOG.info("%s mIoU %.4f (pixel acc %.4f) over %d of %d images, in %.1f s", split, summary["miou"],
             summary["pixel_acc"], len(scored), len(ids), seconds)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.infer_deeplab"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--data-root", required=True, help="dataset folder in VOC layout")
    parser.add_argument("--split", required=True, help="evaluation split list under ImageSets/Segmentation")
    parser.add_argument("--checkpoint", required=True, help="model.pt written by train_deeplab")
    parser.add_argument("--pred-dir", required=True, help="output folder of palette PNG predictions")
    parser.add_argument("--out-csv", required=True, help="per-class IoU CSV")
    parser.add_argument("--out-json", required=True, help="summary JSON")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        summary = infer(config, args.data_root, args.split, args.checkpoint, args.pred_dir, args.out_csv,
                        args.out_json, progress=not args.no_progress)
    except (DataError, ConfigError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: summary.get(k) for k in ("miou", "pixel_acc", "mean_acc", "images", "predicted_images")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
