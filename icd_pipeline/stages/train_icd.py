"""Train the ICD model (CAM classifier + Intra-Class Discriminator), spec sections 2 and 4.

    python -m icd_pipeline.stages.train_icd --config-json JSON --data-root DIR --split train \
        --superpixels results/<ds>/superpixels/<key>/train.h5 --out-dir results/<ds>/icd

Reads the ``icd`` section (and ``seed``, ``device``). Writes ``model.pt`` (final model,
``models.icd.load_icd_model``), ``metrics.csv`` (one row per epoch), ``loss_curve.png`` and
``checkpoints/last.pt`` (after every epoch, atomically; a rerun with the same config resumes
from the next epoch). CUDA runs use torch.autocast + GradScaler; CPU runs use
OMP_NUM_THREADS threads.

A NaN or infinite loss term stops training at that iteration with an error naming the epoch,
iteration, term and learning rate (exit status 1; no model.pt / metrics.csv; the checkpoint of
the last finished epoch is kept). ``grad_clip`` (null: off, the paper's recipe) clips the total
gradient norm of each step; metrics.csv's ``clipped_steps`` counts the clipped steps of an epoch
and ``grad_norm`` is their mean norm before clipping.

One training step (spec 2.7): L = L_cls + L_bu + omega(k) L_td, where L_bu (x bu_weight)
trains only the directions W on single-label images (``bottom_up_images: single``, the paper;
``all`` also uses multi-label images over each class's ``bottom_up_region``, losses.py), the sign
EMA and superpixel refinement build the top-down targets without gradient, and omega ramps up
over ``warmup_epochs``.
Images are resized by ``input_scale`` (the random scales of TrainTransform are multiplied by
it) before the random crop of ``crop_size``.

Several processes (``torchrun``, or ``python -m icd_pipeline.misc.launch --nproc N``): DDP over
``batch_size / N`` images each, the same global batches as one process, BatchNorm and sign
statistics over the global batch (``sync_bn``); only rank 0 writes (``misc.distributed``).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import ConfigError, add_config_args, config_from_args
from ..data.voc import ClassificationDataset, DataError, TrainTransform, VOCLayout, multi_hot, read_image
from ..diagnostics import DIAGNOSTIC_COLUMNS, EpochDiagnostics, batch_diagnostics
from ..directions import candidate_bottom_up, check_switch, track_agreement
from ..evaluate import average_precision, class_average_precision
from ..feature_cache import CachedTrainDataset, CacheError, FeatureCache, check_backbone_frozen, check_cache_argument
from ..losses import (
    bottom_up_region,
    bu_loss,
    bu_loss_regions,
    bu_negative_loss,
    cls_loss,
    param_groups,
    poly_lr,
    pos_neg_normalize,
    set_lr,
    sp_refine,
    td_loss,
    td_targets,
    update_sign,
    warmup_iterations,
    warmup_weight,
)
from ..misc import distributed as D
from ..misc.commands import command_name
from ..misc.io import atomic_path, write_csv_rows, write_json
from ..misc.runtime import get_logger, seed_everything, select_device, set_threads, whole_image_inference
from ..misc.stability import ClipLog, NonFiniteLossError, backward_step, check_finite_losses, divergence_advice
from ..models.icd import CheckpointError, ICDModel, build_icd_model, save_icd_checkpoint
from ..superpixels import GridSuperpixels, open_superpixels

LOG = get_logger("train_icd")
METRIC_COLUMNS = ("epoch", "lr", "loss", "loss_cls", "loss_bu", "loss_td", "warmup", "train_map",
                  "td_pos_frac", "target_pos_frac", "sign_neg", "images_per_s", "seconds",
                  "clipped_steps", "grad_norm")
LOSS_TERMS = ("loss_cls", "loss_bu", "loss_td", "loss")  # checked every iteration (misc.stability)
PLOT_COLUMNS = ("loss_cls", "loss_bu", "loss_td", "train_map")


@torch.no_grad()
def evaluate_classifier(model: ICDModel, layout: VOCLayout, split: str, input_scale: float,
                        device: torch.device) -> dict:
    """Image-level mAP of the CAM classifier (GAP of the CAM logits) on ``split``: each image
    resized by ``input_scale``, single scale, no flip, the model in eval mode."""
    from ..feature_cache import variant_image

    ids = layout.ids(split)
    scores, labels = [], []
    model.eval()
    for image_id in ids:
        x = variant_image(read_image(layout.image_path(image_id)), input_scale, False)[None].to(device)
        with whole_image_inference(device):  # float32: each image has its own size
            cam, _ = model.predict(x)
        scores.append(cam.float().mean(dim=(2, 3)).cpu().numpy()[0])
        labels.append(multi_hot(layout.labels(image_id), layout.num_fg))
    aps = class_average_precision(np.stack(scores), np.stack(labels))
    names = list(layout.class_names)[1:] if layout.class_names[0] == "background" else list(layout.class_names)
    return {"split": split, "images": len(ids), "map": float(np.mean(list(aps.values()))) if aps else float("nan"),
            "ap": {names[c]: ap for c, ap in aps.items()}}


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": _to_lists(random.getstate()),
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_metrics(path: Path, rows: list[dict]) -> None:
    write_csv_rows(path, rows, METRIC_COLUMNS)


def train_step(model: ICDModel, images: torch.Tensor | dict, y: torch.Tensor, sp: torch.Tensor, cfg: dict,
               omega: float, amp: bool, net: torch.nn.Module | None = None) -> dict:
    """Forward + losses of one iteration (spec 2.7); returns the losses and monitors. ``images``:
    a batch of images, or the frozen backbone's features of them (``{"out", "icd"}``, the
    feature cache). ``net`` is
    ``model`` wrapped in DistributedDataParallel when several processes train: the forward goes
    through it and the sign statistics are summed over the processes (the global batch's)."""
    device_type = (images["icd"] if isinstance(images, dict) else images).device.type
    with torch.autocast(device_type=device_type, enabled=amp):
        out = (net or model)(images)
    cam = out["cam"].float()
    b = out["bu"]
    T = out["td"].float()
    l_cls = cls_loss(cam, y)
    region = None  # the paper: L_bu from single-label images, sign and targets over every pixel
    if cfg["bottom_up_images"] == "all":
        region = bottom_up_region(cam.detach().relu(), y, cfg["bottom_up_region"], cfg["bottom_up_floor"])
    if "bu_candidates" in out:  # icd.directions > 1: every candidate learns, the CAM picks one
        l_bu, b, sigma = candidate_bottom_up(model, out["bu_candidates"], cam.detach().relu(), y, region, cfg,
                                             reduce=D.all_reduce_sum)
    elif region is not None:
        l_bu = bu_loss_regions(b, y, region, weight=cfg["bu_weight"])
    else:
        l_bu = bu_loss(b, y, weight=cfg["bu_weight"])
    if cfg["bottom_up_region"] == "owned_negatives" and region is not None:  # other classes' pixels: background
        l_bu = l_bu + bu_negative_loss(b, y, region, model.sign(),
                                       weight=cfg["bu_weight"] * cfg["bottom_up_negative_weight"])
    with torch.no_grad():
        if "bu_candidates" not in out:
            sigma = update_sign(model.sign_acc, b.detach(), cam.detach().relu(), y, momentum=0.9,
                                reduce=D.all_reduce_sum, region=region)  # reduce: a no-op in one process
            track_agreement(model, b.detach(), sigma, cam.detach().relu(), y, cfg["bottom_up_floor"],
                            reduce=D.all_reduce_sum)  # a statistic with one direction (directions.py)
        s = b.detach() * sigma[None, :, None, None] * y[:, :, None, None]
        if region is not None:  # targets from the same pixels: none where another class owns
            s = s * region
        r_n = pos_neg_normalize(sp_refine(s, sp, y))
    l_td = td_loss(T, r_n, y, threshold=cfg["td_mask_threshold"], weight=omega)
    with torch.no_grad():
        tgt, mask = td_targets(r_n, y, cfg["td_mask_threshold"])
        present = y.sum()
        td_pos = ((T > 0).float().mean(dim=(2, 3)) * y).sum() / present.clamp(min=1)
        tgt_pos = ((tgt * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3)).clamp(min=1) * y).sum() / present.clamp(min=1)
        diag = batch_diagnostics(b.detach(), sigma, T.detach(), cam.detach().relu(), y, cfg["bottom_up_floor"])
    return {"diag": diag, "loss": l_cls + l_bu + l_td, "loss_cls": l_cls, "loss_bu": l_bu, "loss_td": l_td,
            "logits": cam.detach().mean(dim=(2, 3)), "td_pos_frac": td_pos, "target_pos_frac": tgt_pos,
            "sign_neg": float((sigma < 0).sum().item())}


def train(config: dict, data_root: str | Path, split: str, out_dir: str | Path,
          superpixels_path: str | Path | None = None, grid_superpixels: int | None = None,
          feature_cache: str | Path | None = None, eval_split: str | None = None) -> dict:
    cfg = config["icd"]
    check_switch(cfg)
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    set_threads()
    seed = int(config.get("seed", 0))
    seed_everything(seed)
    ctx = D.init_distributed(select_device(config.get("device", "auto")))
    device = ctx.device
    amp = device.type == "cuda"
    if not ctx.is_main:
        LOG.setLevel("WARNING")

    layout = VOCLayout.open(data_root)
    if superpixels_path is not None:
        store = open_superpixels(superpixels_path)
    elif grid_superpixels is not None:
        store = GridSuperpixels(layout, grid_superpixels)
    else:
        raise ValueError("superpixels are required: pass --superpixels FILE.h5")
    scales = [float(s) * float(cfg["input_scale"]) for s in cfg["scales"]]
    check_cache_argument("icd", cfg, feature_cache)
    cache = None
    if feature_cache is not None:
        cache = FeatureCache(feature_cache, icd_cfg=cfg)
        dataset = CachedTrainDataset(cache, layout, split, cfg["crop_size"], store, seed=seed)
    else:
        dataset = ClassificationDataset(layout, split, TrainTransform(cfg["crop_size"], scales, base_size=None),
                                        superpixels=store, seed=seed)
    bs = int(cfg["batch_size"])  # the global batch; each of the ctx.world_size processes takes local_bs
    local_bs = D.local_batch_size(bs, ctx, "icd.batch_size")
    iters_per_epoch = len(dataset) // ctx.world_size // local_bs
    if iters_per_epoch == 0:
        raise ValueError(f"split {split!r} has {len(dataset)} images, fewer than icd.batch_size={bs}")
    epochs = int(cfg["epochs"])
    warmup_iters = warmup_iterations(cfg["warmup_epochs"], len(dataset), bs)

    model = build_icd_model(cfg, layout.num_fg).to(device)
    if cache is not None:
        check_backbone_frozen(model)
        cache.check_backbone(model.backbone)
    if ctx.distributed and cfg.get("sync_bn", True):
        D.convert_sync_batchnorm(model)
    net = D.wrap_ddp(model, ctx)
    optimizer = torch.optim.SGD(param_groups(model, cfg["lr"], cfg["weight_decay"]), lr=cfg["lr"],
                                momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    grad_clip = None if cfg.get("grad_clip") is None else float(cfg["grad_clip"])
    identity = {"config": dict(cfg), "seed": seed, "data_root": str(Path(data_root).resolve()), "split": split,
                "superpixels": str(superpixels_path) if superpixels_path else f"grid:{grid_superpixels}",
                "feature_cache": str(feature_cache) if feature_cache else None}

    start_epoch, it, rows, diag_rows = 0, 0, [], []
    fg_names = [n for n in layout.class_names if n != "background"]
    if ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            LOG.warning("ignoring unreadable checkpoint %s (%s)", ckpt_path, exc)
            ckpt = None
        if ckpt is not None and ckpt.get("identity") == identity:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if amp and "scaler" in ckpt:
                scaler.load_state_dict(ckpt["scaler"])
            _set_rng_state(ckpt["rng"])
            start_epoch, it, rows = int(ckpt["epoch"]) + 1, int(ckpt["iteration"]), list(ckpt["metrics"])
            diag_rows = list(ckpt.get("diagnostics", []))
            LOG.info("resuming from %s: epoch %d/%d, iteration %d", ckpt_path, start_epoch + 1, epochs, it)
        elif ckpt is not None:
            LOG.warning("checkpoint %s was written with another config or data; starting afresh", ckpt_path)

    LOG.info("ICD training: %s on %s (%d images, %d classes), %d epochs x %d iterations, batch %d, "
             "crop %d, scales %s, warm-up %d iterations, device %s%s%s%s", cfg["backbone"], data_root, len(dataset),
             layout.num_fg, epochs, iters_per_epoch, bs, cfg["crop_size"], scales, warmup_iters, device,
             " (AMP)" if amp else "", f", {ctx.world_size} processes x {local_bs} images" if ctx.distributed else "",
             f", heads on cached frozen-backbone features {feature_cache}" if cache is not None else "")
    from ..misc.progress import progress as progress_bar

    for epoch in range(start_epoch, epochs):
        lr = poly_lr(cfg["lr"], epoch, epochs)
        set_lr(optimizer, lr)
        dataset.set_epoch(epoch)
        # the order of a generator seeded with seed * 100003 + epoch, split between the processes
        loader = DataLoader(dataset, batch_size=local_bs, sampler=D.sampler(dataset, ctx, seed * 100003, epoch),
                            drop_last=True, num_workers=int(cfg["num_workers"]), pin_memory=amp)
        model.train()
        sums = {k: 0.0 for k in ("loss", "loss_cls", "loss_bu", "loss_td", "td_pos_frac", "target_pos_frac")}
        scores, labels = [], []
        t0 = time.time()
        omega = warmup_weight(it, warmup_iters)
        sign_neg = 0.0
        diag = EpochDiagnostics(layout.num_fg)
        clip_log = ClipLog(grad_clip)
        advice = divergence_advice("icd", cfg, ckpt_path, epoch)  # what a non-finite loss error suggests
        bar = progress_bar(loader, desc=f"icd epoch {epoch + 1}/{epochs}", file=sys.stderr, leave=False,
                           dynamic_ncols=True,
                   disable=not ctx.is_main)
        for i, batch in enumerate(bar):
            if cache is not None:  # the heads' inputs straight from the cache
                images = {"out": batch["out"].to(device, non_blocking=True),
                          "icd": batch["icd"].to(device, non_blocking=True)}
            else:
                images = batch["image"].to(device, non_blocking=True)
            y = batch["label"].to(device).float()
            sp = batch["superpixels"].to(device)
            omega = warmup_weight(it, warmup_iters)
            res = train_step(model, images, y, sp, cfg, omega, amp, net=net)
            check_finite_losses({k: res[k] for k in LOSS_TERMS}, stage="train_icd", epoch=epoch + 1, epochs=epochs,
                                iteration=i + 1, iterations=iters_per_epoch,
                                lr=f"{lr:.3g} (icd.lr {cfg['lr']:g} after the poly schedule; x10 on fc8/conv_ft)",
                                **advice)
            norm = backward_step(res["loss"], optimizer, scaler, model.parameters(), grad_clip)
            clip_log.add(norm)
            it += 1
            for k in sums:
                v = res[k]
                sums[k] += v.detach().item() if torch.is_tensor(v) else float(v)
            sign_neg = res["sign_neg"]
            diag.add(res["diag"])
            scores.append(res["logits"].cpu())
            labels.append(y.cpu())
            bar.set_postfix(cls=f"{res['loss_cls'].item():.3f}", td=f"{res['loss_td'].item():.4f}")
        bar.close()
        seconds = time.time() - t0
        n = iters_per_epoch * ctx.world_size  # per-process sums of per-process means
        totals = D.all_reduce_sum(torch.tensor([sums[k] for k in sums], dtype=torch.float64, device=device)).tolist()
        sums = dict(zip(sums, totals))
        scores = D.all_gather_cat(torch.cat(scores).to(device), ctx).cpu()
        labels = D.all_gather_cat(torch.cat(labels).to(device), ctx).cpu()
        row = {"epoch": epoch + 1, "lr": lr, **{k: v / n for k, v in sums.items()}, "warmup": omega,
               "train_map": average_precision(scores.numpy(), labels.numpy()),
               "sign_neg": sign_neg, "images_per_s": iters_per_epoch * bs / max(seconds, 1e-9), "seconds": seconds,
               **clip_log.metrics()}
        rows.append(row)
        diag.load_state(D.all_reduce_sum(diag.state().to(device)))
        diag_rows.extend(diag.rows(epoch + 1, fg_names, model.working_sign_acc(),
                                   model.working_agreement(), model.direction))
        LOG.info("epoch %d/%d lr %.2e: cls %.4f bu %.4f td %.4f (w %.3g) mAP %.3f, td+ %.2f target+ %.2f, "
                 "%.1f img/s, %.0f s%s", epoch + 1, epochs, lr, row["loss_cls"], row["loss_bu"], row["loss_td"],
                 omega, row["train_map"], row["td_pos_frac"], row["target_pos_frac"], row["images_per_s"], seconds,
                 clip_log.describe())
        if not ctx.is_main:
            continue
        _write_metrics(out_dir / "checkpoints" / "metrics.csv", rows)  # progress; the output comes at the end
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "iteration": it, "rng": _rng_state(), "metrics": rows, "diagnostics": diag_rows,
                 "identity": identity}
        if amp:
            state["scaler"] = scaler.state_dict()
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)

    if not ctx.is_main:
        D.cleanup(ctx)
        return {"rows": rows, "iterations": it}
    _write_metrics(out_dir / "metrics.csv", rows)
    write_csv_rows(out_dir / "diagnostics.csv", diag_rows, DIAGNOSTIC_COLUMNS)  # per class and epoch (diagnostics.py)
    try:
        from ..viz import plot_loss_curves

        plot_loss_curves(out_dir / "metrics.csv", out_dir / "loss_curve.png", PLOT_COLUMNS,
                         title=f"ICD training ({cfg['backbone']})")
    except Exception as exc:  # noqa: BLE001 - a figure must not fail the stage
        LOG.warning("could not draw the loss curve: %s", exc)
    if eval_split:
        classifier = evaluate_classifier(model, layout, eval_split, float(cfg["input_scale"]), device)
        write_json(out_dir / "classifier.json", classifier)
        LOG.info("image-level classifier on %s: mAP %.3f over %d classes with positives (%d images)",
                 eval_split, classifier["map"], len(classifier["ap"]), classifier["images"])
    save_icd_checkpoint(out_dir / "model.pt", model, cfg, layout.class_names,
                        extra={"epochs": epochs, "iterations": it, "data_root": identity["data_root"],
                               "split": split, "seed": seed, "final_metrics": rows[-1] if rows else {}})
    LOG.info("wrote %s", out_dir / "model.pt")
    D.cleanup(ctx)
    return {"rows": rows, "iterations": it}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.train_icd"), description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--data-root", required=True, help="dataset folder in VOC layout")
    parser.add_argument("--split", default="train", help="image list under ImageSets/Segmentation")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--superpixels", help="superpixel HDF5 file of the split (superpixels stage)")
    group.add_argument("--grid-superpixels", type=int, metavar="N",
                       help="testing only: square N-pixel blocks instead of real superpixels")
    parser.add_argument("--out-dir", required=True, help="output folder (results/<dataset>/icd)")
    parser.add_argument("--feature-cache", help="frozen-backbone features of the split (feature_cache stage); "
                        "required when icd.feature_cache is true")
    parser.add_argument("--eval-split", help="also write classifier.json: image-level mAP of the classifier on "
                        "this split (single scale, no flip)")
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        train(config, args.data_root, args.split, args.out_dir, args.superpixels, args.grid_superpixels,
              feature_cache=args.feature_cache, eval_split=args.eval_split)
    except (DataError, ConfigError, CheckpointError, CacheError, ValueError, RuntimeError,
            NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
