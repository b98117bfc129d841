"""CAM and ICD (top-down) logits of a trained ICD model for every image of a split -> HDF5.

Spec 5.1: no augmentation, single scale by default; each image is resized by the model's
``input_scale`` (the ``icd`` section stored in the checkpoint) and padded bottom/right with
the ImageNet mean (voc.PAD_RGB) to a common size per batch (a multiple of the output
stride); the maps of the classes present in the image-level label are kept, cropped to the
cells that cover the image (see maps_io for the geometry). With ``maps.scales`` /
``maps.flip`` the logits of every scale (and of the flipped image) are resampled to the
scale-1 grid and averaged.

Entry point::

    python -m icd_pipeline.stages.extract_maps --config-json JSON --data-root DIR --split train \
        --checkpoint results/<ds>/icd/<key>/model.pt --out results/<ds>/maps/<key>/train.h5 \
        [--benchmark-forward [--benchmark-batches 20]]

Maps are written batch by batch (memory does not grow with the split). ``--benchmark-forward``
also times the bare model forward (all scale/flip passes, inputs already on the device) on
the first batches and prints both throughputs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import METHOD_VERSION
from ..config import ConfigError, add_config_args, config_from_args
from ..data.voc import PAD_RGB, ClassificationDataset, DataError, VOCLayout, image_size
from ..maps_io import MapsWriter
from ..misc.commands import command_name
from ..misc.io import sha256_file
from ..misc.progress import progress as progress_bar
from ..misc.runtime import get_logger, select_device, set_threads, whole_image_inference

log = get_logger("extract_maps")


# --------------------------------------------------------------------------- batching


def scaled_size(hw: Sequence[int], scale: float) -> tuple[int, int]:
    return max(1, int(round(int(hw[0]) * scale))), max(1, int(round(int(hw[1]) * scale)))


def _round_up(n: int, m: int) -> int:
    return int(math.ceil(n / m) * m)


@dataclass
class InferenceCollate:
    """Resize each image by ``input_scale * s`` for every ``s`` in ``scales`` and pad the
    batch bottom/right with PAD_RGB to a common size that is a multiple of ``stride``.
    Runs in the DataLoader workers; picklable."""

    input_scale: float
    scales: Sequence[float]
    stride: int

    def __call__(self, samples: list[dict]) -> dict:
        sizes = [tuple(int(v) for v in s["image"].shape[1:]) for s in samples]
        batch = {
            "ids": [s["id"] for s in samples],
            "labels": torch.stack([s["label"] for s in samples]),
            "image_hw": torch.tensor(sizes, dtype=torch.int64),
            "scaled_hw": torch.tensor([scaled_size(hw, self.input_scale) for hw in sizes], dtype=torch.int64),
            "inputs": [],
            "input_hw": [],
        }
        pad = torch.tensor(PAD_RGB, dtype=torch.float32).view(3, 1, 1)
        for s in self.scales:
            hws = [scaled_size(hw, self.input_scale * s) for hw in sizes]
            ph = _round_up(max(h for h, _ in hws), self.stride)
            pw = _round_up(max(w for _, w in hws), self.stride)
            x = pad.expand(len(samples), 3, ph, pw).clone()
            for i, (sample, (h, w)) in enumerate(zip(samples, hws)):
                img = sample["image"]
                if (h, w) != tuple(img.shape[1:]):
                    img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False,
                                        antialias=True)[0].clamp_(0.0, 1.0)
                x[i, :, :h, :w] = img
            batch["inputs"].append(x)
            batch["input_hw"].append(torch.tensor(hws, dtype=torch.int64))
        return batch


def valid_cells(hw: Sequence[int], grid_hw: Sequence[int], padded_hw: Sequence[int]) -> tuple[int, int]:
    """Map cells covering an image of size ``hw`` inside a padded input of ``padded_hw``
    whose output grid is ``grid_hw``: ceil(h * grid / padded)."""
    return (max(1, min(grid_hw[0], math.ceil(hw[0] * grid_hw[0] / padded_hw[0]))),
            max(1, min(grid_hw[1], math.ceil(hw[1] * grid_hw[1] / padded_hw[1]))))


# --------------------------------------------------------------------------- inference


def forward_passes(model, inputs: list[torch.Tensor], flip: bool, device: torch.device):
    """Yield (scale index, cam, td) float32 logits on ``device`` for every pass, flipped
    passes already flipped back; a pass covers the whole padded batch."""
    for si, x in enumerate(inputs):
        x = x.to(device, non_blocking=True)
        with whole_image_inference(device):
            cam, td = model.predict(x)
        yield si, cam.float(), td.float()
        if flip:
            with whole_image_inference(device):
                cam_f, td_f = model.predict(torch.flip(x, dims=[3]))
            yield si, torch.flip(cam_f.float(), dims=[3]), torch.flip(td_f.float(), dims=[3])


def batch_maps(model, batch: dict, flip: bool, device: torch.device) -> list[dict]:
    """Averaged maps of one collated batch, per image: dict(id, cam, td, class_ids,
    image_hw, scaled_hw, valid_hw) with (k, vh, vw) float32 numpy arrays of the present classes."""
    B = len(batch["ids"])
    scaled_hw = batch["scaled_hw"].tolist()
    labels = batch["labels"]
    present = [(torch.nonzero(labels[i] > 0.5).flatten() + 1).tolist() for i in range(B)]
    # reference grid: scale 1 (computed from the first pass' grid/pad ratio; it is the
    # same ratio, 1 / stride, for every pass)
    sums: list[torch.Tensor | None] = [None] * B
    valid_ref: list[tuple[int, int]] = [None] * B  # type: ignore[list-item]
    passes = 0
    for si, cam, td in forward_passes(model, batch["inputs"], flip, device):
        passes += 1
        padded = batch["inputs"][si].shape[2:]
        grid = cam.shape[2:]
        input_hw = batch["input_hw"][si].tolist()
        for i in range(B):
            if valid_ref[i] is None:
                valid_ref[i] = valid_cells(scaled_hw[i], grid, padded)
            idx = torch.as_tensor([c - 1 for c in present[i]], dtype=torch.long, device=cam.device)
            vh, vw = valid_cells(input_hw[i], grid, padded)
            pair = torch.stack([cam[i, idx, :vh, :vw], td[i, idx, :vh, :vw]])  # (2, k, vh, vw)
            if (vh, vw) != valid_ref[i]:
                k = pair.shape[1]
                if k:
                    pair = F.interpolate(pair.reshape(1, 2 * k, vh, vw), size=valid_ref[i], mode="bilinear",
                                         align_corners=False).reshape(2, k, *valid_ref[i])
                else:
                    pair = pair.new_zeros((2, 0, *valid_ref[i]))
            sums[i] = pair if sums[i] is None else sums[i] + pair
    # one device -> host copy per batch
    flat = torch.cat([p.flatten() for p in sums]) / passes if passes > 1 else torch.cat([p.flatten() for p in sums])
    flat = flat.cpu().numpy()
    out, pos = [], 0
    for i in range(B):
        shape = tuple(sums[i].shape)
        size = int(np.prod(shape))
        pair = flat[pos:pos + size].reshape(shape)
        pos += size
        out.append({
            "id": batch["ids"][i], "cam": pair[0], "td": pair[1], "class_ids": present[i],
            "image_hw": tuple(batch["image_hw"][i].tolist()), "scaled_hw": tuple(scaled_hw[i]),
            "valid_hw": tuple(int(v) for v in shape[2:]),
        })
    return out


def cached_variants(cache, input_scale: float, scales: Sequence[float], flip: bool) -> list[int] | None:
    """Cache variant indices of every extraction pass (scale x flip), or None when the cache
    lacks one of them (extraction then runs the backbone)."""
    wanted = [(float(s) * input_scale, f) for s in scales for f in ((False, True) if flip else (False,))]
    found = [cache.variant_of(s, f) for s, f in wanted]
    return None if any(v is None for v in found) else found


@torch.no_grad()
def cached_image_maps(model, cache, image_id: str, class_ids: Sequence[int], image_hw: Sequence[int],
                      input_scale: float, variant_ids: Sequence[int], device: torch.device) -> dict:
    """The maps of one image from its cached backbone features: the heads on every variant,
    mirrored passes flipped back, each resampled to the scale-1 grid ceil(scaled_hw / stride)
    (the cells covering the image, as in :func:`batch_maps`) and averaged."""
    ci = cache.position[image_id]
    shw = scaled_size(image_hw, input_scale)
    ref = (math.ceil(shw[0] / cache.stride), math.ceil(shw[1] / cache.stride))
    idx = torch.as_tensor([c - 1 for c in class_ids], dtype=torch.long, device=device)
    total = None
    for v in variant_ids:
        out, icd = cache.features(ci, v)
        feats = {"out": torch.from_numpy(out.astype(np.float32)).permute(2, 0, 1)[None].to(device),
                 "icd": torch.from_numpy(icd.astype(np.float32)).permute(2, 0, 1)[None].to(device)}
        with whole_image_inference(device):
            cam, td = model.predict(feats)
        pair = torch.stack([cam[0, idx].float(), td[0, idx].float()])  # (2, k, h, w)
        if cache.variants[v][1]:
            pair = torch.flip(pair, dims=[3])
        if tuple(pair.shape[2:]) != ref:
            k = pair.shape[1]
            pair = F.interpolate(pair.reshape(1, 2 * k, *pair.shape[2:]), size=ref, mode="bilinear",
                                 align_corners=False).reshape(2, k, *ref) if k else pair.new_zeros((2, 0, *ref))
        total = pair if total is None else total + pair
    pair = (total / len(variant_ids)).cpu().numpy()
    return {"id": image_id, "cam": pair[0], "td": pair[1], "class_ids": list(class_ids),
            "image_hw": tuple(int(v) for v in image_hw), "scaled_hw": shw, "valid_hw": ref}


def extract_from_cache(model, cache, layout: VOCLayout, split: str, input_scale: float, variant_ids: Sequence[int],
                       writer: MapsWriter, device: torch.device, progress: bool = True) -> dict:
    model.eval()
    ids = layout.ids(split)
    t0 = time.perf_counter()
    for image_id in progress_bar(ids, desc="extract maps (feature cache)", unit="img", disable=not progress,
                                 file=sys.stderr):
        if image_id not in cache.position:
            raise DataError(f"{cache.path}: no cached features for {image_id} of split {split!r}")
        rec = cached_image_maps(model, cache, image_id, layout.labels(image_id), image_size(layout.image_path(image_id)),
                                input_scale, variant_ids, device)
        writer.write(rec["id"], rec["cam"], rec["td"], rec["class_ids"], rec["image_hw"],
                     scaled_hw=rec["scaled_hw"], valid_hw=rec["valid_hw"])
    seconds = time.perf_counter() - t0
    return {"images": len(ids), "seconds": seconds, "images_per_s": len(ids) / seconds if seconds > 0 else float("nan")}


def make_loader(dataset, input_scale: float, scales: Sequence[float], stride: int, batch_size: int,
                num_workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=InferenceCollate(input_scale, list(scales), stride),
        pin_memory=device.type == "cuda", persistent_workers=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def extract(model, loader, writer: MapsWriter, flip: bool, device: torch.device, progress: bool = True) -> dict:
    """Run the model over ``loader`` and stream every image's maps into ``writer``."""
    model.eval()
    n = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        bar = progress_bar(loader, desc="extract maps", unit="batch", disable=not progress, file=sys.stderr)
        for batch in bar:
            for rec in batch_maps(model, batch, flip, device):
                writer.write(rec["id"], rec["cam"], rec["td"], rec["class_ids"], rec["image_hw"],
                             scaled_hw=rec["scaled_hw"], valid_hw=rec["valid_hw"])
                n += 1
            bar.set_postfix(img_s=f"{n / max(time.perf_counter() - t0, 1e-9):.1f}")
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds if seconds > 0 else float("nan")}


def benchmark_forward(model, loader, flip: bool, device: torch.device, max_batches: int = 20,
                      repeats: int = 1) -> dict:
    """Time the bare model forward (every scale/flip pass of extraction) on the first
    ``max_batches`` batches, with the inputs already on the device and one warm-up batch."""
    model.eval()
    inputs = []
    for b, batch in enumerate(loader):
        if b >= max_batches:
            break
        inputs.append([x.to(device) for x in batch["inputs"]])
    if not inputs:
        return {"images": 0, "seconds": 0.0, "images_per_s": float("nan")}
    images = sum(xs[0].shape[0] for xs in inputs) * repeats
    with torch.inference_mode():
        for _ in forward_passes(model, inputs[0], flip, device):  # warm-up (allocator, lazy initialisation)
            pass
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            for xs in inputs:
                for _ in forward_passes(model, xs, flip, device):
                    pass
        _sync(device)
        seconds = time.perf_counter() - t0
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds if seconds > 0 else float("nan")}


# --------------------------------------------------------------------------- entry point


def load_model(path, device):
    """Indirection so that tests can substitute a small model."""
    from ..models.icd import load_icd_model

    return load_icd_model(path, map_location=device)


def run(config: dict, data_root: str, split: str, checkpoint: str, out: str,
        benchmark: bool = False, benchmark_batches: int = 20, progress: bool = True,
        feature_cache: str | None = None) -> dict:
    set_threads()
    maps_cfg = config["maps"]
    device = select_device(config.get("device", "auto"))
    layout = VOCLayout.open(data_root)
    dataset = ClassificationDataset(layout, split, transform=None)
    model, meta = load_model(checkpoint, device)
    if int(meta["num_classes"]) != layout.num_fg:
        raise DataError(f"{checkpoint}: model has {meta['num_classes']} classes but {data_root} has "
                        f"{layout.num_fg}: it was trained on another dataset")
    model = model.to(device).eval()
    icd_cfg = dict(meta.get("config", {}))
    input_scale = float(icd_cfg.get("input_scale", 1.0))
    stride = int(getattr(getattr(model, "backbone", None), "stride", 0) or icd_cfg.get("output_stride", 8))
    scales, flip = [float(s) for s in maps_cfg["scales"]], bool(maps_cfg["flip"])
    loader = make_loader(dataset, input_scale, scales, stride, maps_cfg["batch_size"],
                         maps_cfg.get("num_workers", 0), device)
    attrs = {
        "method_version": METHOD_VERSION,
        "checkpoint_sha256": sha256_file(checkpoint),
        "config": json.dumps({"maps": maps_cfg, "icd": icd_cfg}, sort_keys=True),
        "class_names": list(layout.class_names),
        "scales": scales,
        "flip": flip,
        "input_scale": input_scale,
        "stride": stride,
        "backbone": str(meta.get("backbone", "")),
        "split": split,
    }
    if hasattr(model, "working_agreement"):  # per class, for seeds.cam_fallback_below (issue 33)
        attrs["class_agreement"] = [float(a) for a in model.working_agreement().cpu()]
    log.info("extracting maps for %d images of %s/%s on %s (backbone %s, stride %d, input_scale %g, "
             "scales %s, flip %s, batch %d)", len(dataset), data_root, split, device, attrs["backbone"],
             stride, input_scale, scales, flip, maps_cfg["batch_size"])
    cache, variant_ids = None, None
    if feature_cache:
        from ..feature_cache import FeatureCache

        cache = FeatureCache(feature_cache, icd_cfg=icd_cfg)
        cache.check_backbone(model.backbone)
        variant_ids = cached_variants(cache, input_scale, scales, flip)
        if variant_ids is None:
            log.info("feature cache %s lacks some of maps.scales %s x flip %s: running the backbone", feature_cache,
                     scales, flip)
        else:
            log.info("maps from the cached backbone features %s (%d passes per image)", feature_cache,
                     len(variant_ids))
            attrs["feature_cache"] = str(feature_cache)
    with MapsWriter(out, attrs=attrs, encoding=maps_cfg.get("encoding", "int8")) as writer:
        if variant_ids is not None:
            stats = extract_from_cache(model, cache, layout, split, input_scale, variant_ids, writer, device,
                                       progress=progress)
        else:
            stats = extract(model, loader, writer, flip, device, progress=progress)
    log.info("wrote %s: %d images in %.1f s (%.1f images/s)", out, stats["images"], stats["seconds"],
             stats["images_per_s"])
    result = {"extract_images": stats["images"], "extract_seconds": round(stats["seconds"], 3),
              "extract_images_per_s": round(stats["images_per_s"], 2), "device": str(device)}
    if benchmark:
        fwd = benchmark_forward(model, loader, flip, device, max_batches=benchmark_batches)
        log.info("bare forward: %d images in %.2f s (%.1f images/s)", fwd["images"], fwd["seconds"],
                 fwd["images_per_s"])
        result.update(forward_images=fwd["images"], forward_seconds=round(fwd["seconds"], 3),
                      forward_images_per_s=round(fwd["images_per_s"], 2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.extract_maps"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--data-root", required=True, help="dataset folder in VOC layout")
    parser.add_argument("--split", required=True, help="split list name under ImageSets/Segmentation")
    parser.add_argument("--checkpoint", required=True, help="ICD model checkpoint (model.pt)")
    parser.add_argument("--out", required=True, help="output HDF5 file")
    parser.add_argument("--benchmark-forward", action="store_true",
                        help="also time the bare model forward on the first batches and print both rates")
    parser.add_argument("--benchmark-batches", type=int, default=20)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--feature-cache", help="frozen-backbone features of the split (feature_cache stage): "
                        "the passes it holds are read from it instead of running the backbone")
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        result = run(config, args.data_root, args.split, args.checkpoint, args.out,
                     benchmark=args.benchmark_forward, benchmark_batches=args.benchmark_batches,
                     progress=not args.no_progress, feature_cache=args.feature_cache)
    except (DataError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
