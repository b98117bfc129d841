#!/usr/bin/env python
"""ICD against CAM per class, beside what training recorded about each class (issue 33).

    .venv/bin/python benchmarks/icd_diagnosis_table.py --run results/voc2012-sample/default \
        [--out results/issue33/train_s0_diagnosis.md]

For one finished run (an experiment folder with ``outputs.json`` and ``pseudo_masks/
per_class.csv``) it prints, per class, the ICD+CRF and CAM+CRF pseudo-mask IoU and their
difference next to the last epoch of ``icd/<key>/diagnostics.csv`` (``icd_pipeline.diagnostics``:
agreement EMA of the sign-corrected direction with the normalised CAM, the sign EMA's margin,
the foreground shares of the top-down map and of the CAM over the class's images), then the
Spearman correlation of each diagnostic with the difference, over all classes and over the
classes with at least 20 training images. The IoU needs masks; the diagnostics do not: the
question is which label-free figure tells in advance where ICD loses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd


def table(run: Path) -> pd.DataFrame:
    outputs = json.loads((run / "outputs.json").read_text())
    diag = pd.read_csv(run.parent / outputs["icd"] / "diagnostics.csv")
    last = diag[diag.epoch == diag.epoch.max()].set_index("class")
    per_class = pd.read_csv(run / "pseudo_masks" / "per_class.csv")
    iou = per_class.pivot_table(index="class", columns="method", values="iou", sort=False)
    t = pd.DataFrame({"images": last.images, "CAM+CRF": iou["CAM+CRF"], "ICD+CRF": iou["ICD+CRF"]})
    t = t.dropna(subset=["CAM+CRF", "images"]).drop(index="background", errors="ignore")
    t["ICD-CAM"] = t["ICD+CRF"] - t["CAM+CRF"]
    for key in ("agreement_ema", "sign_margin", "td_fg", "cam_fg"):
        t[key] = last[key]
    t["td_fg/cam_fg"] = t.td_fg / t.cam_fg
    return t.sort_values("ICD-CAM")


def correlations(t: pd.DataFrame) -> list[str]:
    lines = []
    for label, part in (("all classes", t), ("classes with >= 20 training images", t[t.images >= 20])):
        part = part.dropna()
        rho = {k: part[k].rank().corr(part["ICD-CAM"].rank())
               for k in ("agreement_ema", "sign_margin", "td_fg", "td_fg/cam_fg")}
        lines.append(f"Spearman with ICD-CAM over {label} ({len(part)}): "
                     + ", ".join(f"{k} {v:+.2f}" for k, v in rho.items()))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="experiment folder of a finished run")
    ap.add_argument("--out", help="also write the table and correlations here (markdown)")
    args = ap.parse_args()
    t = table(Path(args.run))
    text = t.round(3).to_string() + "\n\n" + "\n".join(correlations(t)) + "\n"
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"# {args.run}\n\n```\n{text}```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
