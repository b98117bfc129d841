"""Train a DeepLab segmentation network on pseudo-masks or on the ground truth (spec section 6).

Entry point::

    python -m icd_pipeline.stages.train_deeplab --config-json JSON --data-root DIR --split train \
        [--mask-dir results/<ds>/<exp>/pseudo_masks/masks/icd_crf] --out-dir results/<ds>/<exp>/deeplab/<target>

``--mask-dir`` names a folder of palette PNG masks ``<id>.png`` (the pseudo-masks); left out
(or empty), the dataset's own ground-truth masks are used: the fully supervised upper bound.

Recipe (config section ``deeplab``; the CIAN/DeepLab practice of the ICD authors):

- model: ``models.deeplab.build_from_config`` (LargeFOV or v2 ASPP over the backbone), backbone
  BatchNorm frozen when ``freeze_bn``;
- augmentation: ``voc.TrainTransform`` with random scale from ``scales`` multiplied by
  ``input_scale`` (96-px images at input_scale 2 are seen at 192 px), horizontal flip,
  mean-padding (masks padded with 255) and a random ``crop_size`` crop;
- loss: cross-entropy with ``ignore_index=255`` on the logits upsampled bilinearly to the crop
  (pseudo-masks' 255 pixels and the void band of the ground truth give no gradient);
- SGD, momentum ``momentum``, weight decay ``weight_decay``; learning rate ``lr`` for the
  backbone and ``lr * head_lr_mult`` for the head; poly schedule with power 0.9 stepped **per
  iteration** (lr_i = lr * (1 - i / total_iterations) ** 0.9): with the few epochs of the CPU
  default a per-epoch step would keep the learning rate flat for most of the run);
- ``batch_size`` (the last incomplete batch of an epoch is dropped), ``epochs``, ``num_workers``;
- ``grad_clip`` (null: off, the recipe): clip each step's total gradient norm to it (after
  unscaling under AMP); metrics.csv's ``clipped_steps`` counts the clipped steps of an epoch
  and ``grad_norm`` is their mean norm before clipping;
- a NaN or infinite loss stops training at that iteration with an error naming the epoch,
  iteration and learning rate (exit status 1; no model.pt / metrics.csv; the checkpoint of the
  last finished epoch is kept).

Outputs in ``--out-dir`` (each written atomically): ``model.pt`` (weights and metadata: model,
backbone, class names, the ``deeplab`` config section; written last), ``metrics.csv`` (per
epoch: epoch, backbone lr at the epoch's start (the head's is ``head_lr_mult`` times it), mean
loss, pixel accuracy on the training crops, images per second, seconds, clipped_steps,
grad_norm), ``loss_curve.png`` and ``checkpoints/last.pt`` (model, optimizer and
metrics after every epoch). Rerun with the same inputs and config, training resumes from
``checkpoints/last.pt``; a checkpoint written with another config, split or mask folder is
ignored (training starts over). Data order, augmentation and dropout are seeded per epoch
from ``seed``, so a resumed run follows the same sequence as an uninterrupted one.

Device: ``device`` (auto: CUDA with AMP when present, else CPU with the thread count from
OMP_NUM_THREADS). Several processes (``torchrun``, or ``python -m icd_pipeline.misc.launch
--nproc N``): DDP over ``batch_size / N`` images each, the loss averaged over the global batch's
valid pixels, BatchNorm over the global batch (``sync_bn``); only rank 0 writes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ConfigError, add_config_args, config_from_args
from ..data.voc import VOID, DataError, SegmentationDataset, TrainTransform, VOCLayout
from ..feature_cache import CachedSegmentationDataset, CacheError, FeatureCache, check_cache_argument
from ..misc import distributed as D
from ..misc.commands import command_name
from ..misc.io import atomic_path, write_csv_rows
from ..misc.progress import progress as progress_bar
from ..misc.runtime import get_logger, seed_everything, select_device, set_threads
from ..misc.stability import ClipLog, NonFiniteLossError, backward_step, check_finite_losses, divergence_advice
from ..models.deeplab import DeepLab, build_from_config, save_deeplab

LOG = get_logger("train_deeplab")
METRIC_COLUMNS = ("epoch", "lr", "loss", "pixel_acc", "images_per_s", "seconds", "clipped_steps", "grad_norm")
POLY_POWER = 0.9


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, C, h, w), upsampled bilinearly in float32 to the
    target's size (B, H, W), pixels with target 255 ignored, averaged over the valid pixels
    of the *global* batch: each process divides its sum by the count summed over processes,
    times the number of processes, so DDP's gradient average equals the single-process loss on
    the whole batch (one process: the plain mean; 0 when no pixel is valid)."""
    logits = logits.float()
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    ce_sum = F.cross_entropy(logits, target, ignore_index=VOID, reduction="sum")
    count = D.all_reduce_sum((target != VOID).sum().to(torch.float32))
    return ce_sum * world_size / count.clamp(min=1)


def shrink_labels(target: torch.Tensor, stride: int | None) -> torch.Tensor:
    """Label maps (B, H, W) at 1/``stride`` of their size, nearest to each output pixel's centre
    (``nearest-exact``: the pixel a bilinear resize to that size is centred on), as DeepLab's
    Caffe recipe shrinks its labels to the score map instead of upsampling the scores. The loss
    at full crop size costs more than a frozen-feature head's own step (bilinear resize and
    cross-entropy over every crop pixel); null or 1: unchanged."""
    if not stride or stride <= 1:
        return target
    h, w = target.shape[-2:]
    size = (max(1, round(h / stride)), max(1, round(w / stride)))
    small = F.interpolate(target[:, None].float(), size=size, mode="nearest-exact")
    return small[:, 0].to(target.dtype)


def poly_lr(base_lr: float, iteration: int, total: int, power: float = POLY_POWER) -> float:
    return base_lr * (1.0 - min(iteration, total) / max(total, 1)) ** power


def make_optimizer(model: DeepLab, section: dict) -> torch.optim.SGD:
    groups = [
        {"params": list(model.backbone_parameters()), "lr": section["lr"], "base_lr": section["lr"]},
        {"params": list(model.head_parameters()), "lr": section["lr"] * section["head_lr_mult"],
         "base_lr": section["lr"] * section["head_lr_mult"]},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(groups, lr=section["lr"], momentum=section["momentum"],
                           weight_decay=section["weight_decay"])


def set_lr(optimizer: torch.optim.Optimizer, iteration: int, total: int) -> float:
    """Set every group's poly learning rate; return the poly factor (1 at the start)."""
    for g in optimizer.param_groups:
        g["lr"] = poly_lr(g["base_lr"], iteration, total)
    return poly_lr(1.0, iteration, total)


def masks_stamp(mask_dir: str | None, ids) -> str | None:
    """Size and modification time of every training mask of a pseudo-mask folder: regenerated
    pseudo-masks (new seeds, another threshold) land in the same folder, and a checkpoint of
    the old ones must not be resumed on them."""
    if mask_dir is None:
        return None
    h = hashlib.sha256()
    for image_id in ids:
        st = (Path(mask_dir) / f"{image_id}.png").stat()
        h.update(f"{image_id}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def fingerprint(section: dict, seed: int, split: str, mask_dir: str | None, data_root: str,
                masks: str | None = None) -> str:
    """What a resumable checkpoint must match (config, seed, split, masks and their stamp, data)."""
    blob = json.dumps({"deeplab": section, "seed": seed, "split": split, "mask_dir": mask_dir, "masks": masks,
                       "data_root": str(Path(data_root).resolve())}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_metrics(path: Path, rows: list[dict]) -> None:
    write_csv_rows(path, rows, METRIC_COLUMNS)


def plot_curve(csv_path: Path, png_path: Path, title: str) -> None:
    from ..viz import plot_loss_curves

    plot_loss_curves(csv_path, png_path, ["loss", "pixel_acc", "lr"], title=title)


def check_masks(dataset) -> None:
    """Fail early, naming the first missing mask (pseudo-mask folders are often incomplete)."""
    if dataset.mask_dir is not None and not dataset.mask_dir.is_dir():
        raise DataError(f"{dataset.mask_dir}: mask folder is missing")
    for image_id in dataset.ids:
        path = dataset.mask_path(image_id)
        if not path.is_file():
            raise DataError(f"{path}: mask of training image {image_id} is missing")


def train_one_epoch(model, loader, optimizer, device, scaler, it0: int, total_its: int,
                    progress: bool = True, desc: str = "epoch", world_size: int = 1,
                    grad_clip: float | None = None, base_lr: float = 1.0, divergence: dict | None = None,
                    loss_stride: int | None = None) -> dict:
    """One pass over ``loader``; a non-finite loss raises NonFiniteLossError naming the
    iteration, the learning rate (``base_lr`` times the poly factor) and ``divergence``'s epoch,
    epochs, hint and note (misc.stability.check_finite_losses). ``grad_clip``: max gradient norm.
    ``loss_stride``: loss and pixel accuracy on labels shrunk by it (``shrink_labels``)."""
    divergence = {"stage": "train_deeplab", "epoch": 1, "epochs": 1, **(divergence or {})}
    model.train()
    use_amp = device.type == "cuda"
    loss_sum = 0.0
    n_images = 0
    correct = 0
    valid = 0
    it = it0
    start = time.time()
    lr0 = None
    clip_log = ClipLog(grad_clip)
    bar = progress_bar(loader, desc=desc, disable=not progress, file=sys.stderr, leave=False)
    for i, batch in enumerate(bar):
        factor = set_lr(optimizer, it, total_its)
        lr0 = factor if lr0 is None else lr0
        if "out" in batch:  # frozen-backbone features from the cache
            images = {"out": batch["out"].to(device, non_blocking=True)}
        else:
            images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        target = shrink_labels(batch["mask"].to(device, non_blocking=True), loss_stride)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            logits = model(images)
        up = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = segmentation_loss(up, target, world_size)
        check_finite_losses({"loss": loss}, iteration=i + 1, iterations=len(loader),
                            lr=f"{base_lr * factor:.3g} (deeplab.lr {base_lr:g} after the poly schedule; "
                            "x head_lr_mult on the head)", **divergence)
        clip_log.add(backward_step(loss, optimizer, scaler, model.parameters(), grad_clip))
        with torch.no_grad():
            keep = target != VOID
            correct += int(((up.argmax(1) == target) & keep).sum())
            valid += int(keep.sum())
        b = target.shape[0] * world_size
        loss_sum += float(loss.detach()) / world_size * b  # this process's share of the global mean
        n_images += b
        it += 1
        bar.set_postfix(loss=f"{loss_sum / n_images:.4f}", lr_factor=f"{factor:.3f}")
    seconds = time.time() - start
    if world_size > 1:
        loss_sum, correct, valid = D.all_reduce_sum(
            torch.tensor([loss_sum, correct, valid], dtype=torch.float64, device=device)).tolist()
    return {
        "lr_factor": float(lr0 if lr0 is not None else poly_lr(1.0, it0, total_its)),
        "loss": loss_sum / max(n_images, 1),
        "pixel_acc": correct / valid if valid else float("nan"),
        "images_per_s": n_images / seconds if seconds > 0 else float("nan"),
        "seconds": seconds,
        "iterations": it - it0,
        **clip_log.metrics(),
        "clip_log": clip_log.describe(),
    }


def train(config: dict, data_root: str | Path, split: str, mask_dir: str | Path | None, out_dir: str | Path,
          progress: bool = True, feature_cache: str | Path | None = None) -> dict:
    """Train (or resume) and write the outputs; return the last epoch's metrics row."""
    section = config["deeplab"]
    seed = int(config.get("seed", 0))
    out_dir = Path(out_dir)
    mask_dir = str(mask_dir) if mask_dir else None
    set_threads()
    ctx = D.init_distributed(select_device(config.get("device", "auto")))
    device = ctx.device
    if not ctx.is_main:
        LOG.setLevel("WARNING")
        progress = False
    seed_everything(seed)

    layout = VOCLayout.open(data_root)
    scale = float(section["input_scale"])
    transform = TrainTransform(crop_size=int(section["crop_size"]),
                               scales=[s * scale for s in section["scales"]], flip=bool(section["flip"]))
    check_cache_argument("deeplab", section, feature_cache)
    cache = None
    if feature_cache is not None:
        if not section.get("freeze_backbone", False):
            raise ConfigError("deeplab.feature_cache needs deeplab.freeze_backbone: true (the cache holds the "
                              "features of a fixed backbone)")
        cache = FeatureCache(feature_cache)
        cache.check_settings({**section, "out_block": None}, name="deeplab")
        dataset = CachedSegmentationDataset(cache, layout, split, int(section["crop_size"]), mask_dir=mask_dir,
                                            seed=seed)
    else:
        dataset = SegmentationDataset(layout, split, transform=transform, mask_dir=mask_dir, seed=seed)
    check_masks(dataset)
    bs = int(section["batch_size"])  # the global batch; each of the ctx.world_size processes takes local_bs
    local_bs = D.local_batch_size(bs, ctx, "deeplab.batch_size")
    if len(dataset) < bs:
        raise ValueError(f"split {split!r} has {len(dataset)} images, fewer than deeplab.batch_size={bs}")
    its_per_epoch = len(dataset) // ctx.world_size // local_bs
    epochs = int(section["epochs"])
    total_its = its_per_epoch * epochs

    model = build_from_config(section, layout.num_classes).to(device)
    model = model.to(memory_format=torch.channels_last)
    if cache is not None:
        cache.check_backbone(model.backbone)
    if ctx.distributed and section.get("sync_bn", True):
        D.convert_sync_batchnorm(model)
    net = D.wrap_ddp(model, ctx)
    optimizer = make_optimizer(model, section)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    grad_clip = None if section.get("grad_clip") is None else float(section["grad_clip"])

    ckpt_path = out_dir / "checkpoints" / "last.pt"
    fp = fingerprint(section, seed, split, mask_dir, str(data_root), masks_stamp(mask_dir, dataset.ids))
    rows: list[dict] = []
    start_epoch = 0
    if ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
            if ckpt.get("fingerprint") != fp:
                LOG.warning("%s was written with another config/split/mask folder: starting over", ckpt_path)
            else:
                model.load_state_dict(ckpt["model"])
                optimizer.load_state_dict(ckpt["optimizer"])
                if scaler is not None and ckpt.get("scaler"):
                    scaler.load_state_dict(ckpt["scaler"])
                rows = list(ckpt["rows"])
                start_epoch = int(ckpt["epoch"])
                LOG.info("resuming from %s after epoch %d", ckpt_path, start_epoch)
        except Exception as exc:  # noqa: BLE001 - a corrupt checkpoint must not block a rerun
            LOG.warning("%s is unreadable (%s): starting over", ckpt_path, exc)
            rows, start_epoch = [], 0

    LOG.info("training %s over %s on %s: %d images (%s), %d epochs x %d iterations, batch %d, device %s",
             section["model"], section["backbone"], split, len(dataset),
             f"masks from {mask_dir}" if mask_dir else "ground truth", epochs, its_per_epoch, bs, device)
    for epoch in range(start_epoch, epochs):
        dataset.set_epoch(epoch)
        # the order of a generator seeded with seed * 100003 + epoch, split between the processes
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=local_bs, sampler=D.sampler(dataset, ctx, seed * 100003, epoch), drop_last=True,
            num_workers=int(section["num_workers"]), pin_memory=device.type == "cuda",
            persistent_workers=False)
        torch.manual_seed(seed * 100003 + epoch + 7919 * ctx.rank)  # dropout (distinct per process)
        divergence = {"epoch": epoch + 1, "epochs": epochs, **divergence_advice("deeplab", section, ckpt_path, epoch)}
        stats = train_one_epoch(net, loader, optimizer, device, scaler, epoch * its_per_epoch, total_its,
                                progress=progress, desc=f"epoch {epoch + 1}/{epochs}", world_size=ctx.world_size,
                                grad_clip=grad_clip, base_lr=float(section["lr"]), divergence=divergence,
                                loss_stride=section["loss_stride"])
        row = {"epoch": epoch + 1, "lr": float(section["lr"]) * stats["lr_factor"],
               **{k: stats[k] for k in ("loss", "pixel_acc", "images_per_s", "seconds", "clipped_steps", "grad_norm")}}
        rows.append(row)
        if not ctx.is_main:
            continue
        LOG.info("epoch %d/%d: loss %.4f, pixel acc %.4f, lr %.2e, %.1f images/s, %.1f s%s", epoch + 1, epochs,
                 row["loss"], row["pixel_acc"], row["lr"], row["images_per_s"], row["seconds"],
                 stats["clip_log"])
        with atomic_path(ckpt_path) as tmp:
            torch.save({"epoch": epoch + 1, "fingerprint": fp, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else None, "rows": rows}, tmp)
        write_metrics(out_dir / "checkpoints" / "metrics.csv", rows)  # progress; the output comes at the end

    if not ctx.is_main:
        D.cleanup(ctx)
        return rows[-1] if rows else {}
    write_metrics(out_dir / "metrics.csv", rows)
    target = "pseudo-masks" if mask_dir else "ground truth"
    plot_curve(out_dir / "metrics.csv", out_dir / "loss_curve.png",
               f"DeepLab ({section['model']}, {section['backbone']}) on {target}")
    save_deeplab(out_dir / "model.pt", model, section, layout.class_names,
                 extra={"split": split, "mask_dir": mask_dir, "seed": seed, "epochs": epochs,
                        "final": rows[-1] if rows else None,
                        "train_seconds": float(sum(r["seconds"] for r in rows))})
    D.cleanup(ctx)
    return rows[-1] if rows else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.train_deeplab"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--data-root", required=True, help="dataset folder in VOC layout")
    parser.add_argument("--split", required=True, help="training split list under ImageSets/Segmentation")
    parser.add_argument("--mask-dir", default="", help="pseudo-mask folder (<id>.png); empty: ground truth")
    parser.add_argument("--out-dir", required=True, help="results/<dataset>/deeplab/<target>")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    parser.add_argument("--feature-cache", help="frozen-backbone features of the split (feature_cache stage); "
                        "required when deeplab.feature_cache is true")
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        row = train(config, args.data_root, args.split, args.mask_dir or None, args.out_dir,
                    progress=not args.no_progress, feature_cache=args.feature_cache)
    except (DataError, ConfigError, CacheError, ValueError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
