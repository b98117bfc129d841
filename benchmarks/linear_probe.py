#!/usr/bin/env python
"""How good can an image classifier on these frozen features be? A linear-probe reference.

    .venv/bin/python benchmarks/linear_probe.py --data-root ../shared/data/voc2012-sample/VOC2012 \
        --configfile workflow/presets/voc2012_sample.yaml \
        --classifier results/voc2012-sample/default/icd/classifier.json

Fits an image-level logistic regression (one sigmoid per class, L-BFGS, L2 penalty) on the
global average of the ICD backbone's ``out`` features: each image resized by
``icd.input_scale``, one scale, no flip, the backbone in eval mode, exactly as
``train_icd.evaluate_classifier`` scores the trained classifier. The L2 weight is chosen on a
seeded fifth of ``--train-split`` held apart (mean AP there), never on the evaluation split;
the probe is then refitted on the whole training split and scored on ``--eval-split``.

Prints, per class, the number of training and evaluation images that show it, the probe's AP
and (with ``--classifier``) the trained classifier's AP, and writes them to
``results/benchmark/linear_probe_<dataset>.csv``. Where the probe is far above the classifier,
the classifier's training loses what the features hold; where both are low, the features or the
number of examples are the limit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icd_pipeline.config import resolve_workflow_config  # noqa: E402
from icd_pipeline.data.voc import VOCLayout, multi_hot, read_image  # noqa: E402
from icd_pipeline.feature_cache import variant_image  # noqa: E402
from icd_pipeline.misc.progress import progress  # noqa: E402
from icd_pipeline.misc.runtime import seed_everything, set_threads  # noqa: E402
from icd_pipeline.models.icd import build_icd_model  # noqa: E402
from icd_pipeline.summary import to_markdown  # noqa: E402
from icd_pipeline.evaluate import average_precision, class_average_precision  # noqa: E402

L2_WEIGHTS = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


@torch.no_grad()
def pooled_features(backbone, layout: VOCLayout, ids: list[str], input_scale: float, desc: str) -> np.ndarray:
    rows = []
    for image_id in progress(ids, desc=desc, unit="img", file=sys.stderr):
        x = variant_image(read_image(layout.image_path(image_id)), input_scale, False)[None]
        rows.append(backbone(x)["out"].float().mean(dim=(2, 3))[0].numpy())
    return np.stack(rows)


def fit_probe(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression per class: mean BCE + l2 * |W|^2, L-BFGS to convergence."""
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def scores(x: np.ndarray, probe) -> np.ndarray:
    w, b = probe
    return (torch.tensor(x, dtype=torch.float64) @ w + b).numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--configfile", default=str(ROOT / "workflow" / "presets" / "voc2012_sample.yaml"))
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--eval-split", default="val")
    parser.add_argument("--classifier", help="a train_icd classifier.json to compare with (same eval split)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    set_threads()
    cfg, _ = resolve_workflow_config([args.configfile])
    layout = VOCLayout.open(args.data_root)
    seed_everything(args.seed)
    backbone = build_icd_model(cfg["icd"], layout.num_fg).backbone.eval()
    scale = float(cfg["icd"]["input_scale"])
    train_ids, eval_ids = layout.ids(args.train_split), layout.ids(args.eval_split)
    x_train = pooled_features(backbone, layout, train_ids, scale, args.train_split)
    x_eval = pooled_features(backbone, layout, eval_ids, scale, args.eval_split)
    y_train = np.stack([multi_hot(layout.labels(i), layout.num_fg) for i in train_ids])
    y_eval = np.stack([multi_hot(layout.labels(i), layout.num_fg) for i in eval_ids])

    # the L2 weight: chosen on a fifth of the training split held apart
    order = np.random.default_rng(args.seed).permutation(len(train_ids))
    held, fit = order[: len(order) // 5], order[len(order) // 5:]
    held_map = {l2: average_precision(scores(x_train[held], fit_probe(x_train[fit], y_train[fit], l2)), y_train[held])
                for l2 in L2_WEIGHTS}
    best = max(held_map, key=held_map.get)
    probe = fit_probe(x_train, y_train, best)
    probe_ap = class_average_precision(scores(x_eval, probe), y_eval)
    names = [n for n in layout.class_names if n != "background"]
    classifier = json.loads(Path(args.classifier).read_text()) if args.classifier else None

    rows = []
    for c, name in enumerate(names):
        if c not in probe_ap:
            continue
        row = {"class": name, f"{args.train_split} images": int(y_train[:, c].sum()),
               f"{args.eval_split} images": int(y_eval[:, c].sum()), "probe AP": probe_ap[c]}
        if classifier:
            row["classifier AP"] = classifier["ap"].get(name, float("nan"))
        rows.append(row)
    table = pd.DataFrame(rows)
    mean = {"class": "mean (mAP)", "probe AP": float(np.mean(list(probe_ap.values())))}
    if classifier:
        mean["classifier AP"] = float(classifier["map"])
    table = pd.concat([table, pd.DataFrame([mean])], ignore_index=True)
    out = ROOT / "results" / "benchmark"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"linear_probe_{cfg['dataset']['name']}.csv", index=False, float_format="%.4f")
    print(f"L2 weight {best:g} chosen on a held-apart fifth of {args.train_split} "
          f"(mAP there: {', '.join(f'{k:g}: {v:.3f}' for k, v in held_map.items())})")
    shown = table.astype(object).where(table.notna(), "")
    for col in (f"{args.train_split} images", f"{args.eval_split} images"):
        shown[col] = [v if v == "" else str(int(v)) for v in shown[col]]
    print(to_markdown(shown, "{:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
