#!/usr/bin/env python
"""Per-class pseudo-mask IoU of experiments that differ in ``icd.bottom_up_images`` (issue 16).

    .venv/bin/python benchmarks/bottom_up_compare.py --data-root ../shared/data/voc2012-sample/VOC2012 \
        --split train --results results/voc2012-sample single all_rest all_owned

Reads each experiment's ``pseudo_masks/per_class.csv`` and ``table.csv`` under ``--results``
(``results/<dataset>``) and prints, per class, CAM / CAM+CRF (from the first experiment: the CAM
branch is trained the same way in each) and ICD / ICD+CRF of every experiment, marking the
classes that never appear alone in ``--split`` (no single-label image: the paper's L_bu has no
signal for them). Then, per experiment: mIoU rows, and on how many of those classes ICD+CRF
beats CAM+CRF. Writes the same as Markdown to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icd_pipeline.data.voc import VOCLayout  # noqa: E402
from icd_pipeline.summary import to_markdown  # noqa: E402


def never_alone(layout: VOCLayout, split: str) -> set[str]:
    """Classes present in ``split`` with no image labelled with them alone."""
    present, alone = set(), set()
    for image_id in layout.ids(split):
        labels = layout.labels(image_id)  # 1-based ids
        present.update(labels)
        if len(labels) == 1:
            alone.update(labels)
    return {layout.class_names[c] for c in present - alone}


def per_class(results: Path, experiment: str) -> pd.DataFrame:
    path = results / experiment / "pseudo_masks" / "per_class.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (run the experiment's pseudo_masks target first)")
    return pd.read_csv(path).pivot(index="class", columns="method", values="iou")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--results", type=Path, required=True, help="results/<dataset>")
    parser.add_argument("experiments", nargs="+")
    parser.add_argument("--out", type=Path, default=None, help="write the tables as Markdown here too")
    args = parser.parse_args()

    layout = VOCLayout.open(args.data_root)
    lonely = never_alone(layout, args.split)
    tables = {e: per_class(args.results, e) for e in args.experiments}
    first = tables[args.experiments[0]]
    order = [c for c in layout.class_names if c in first.index and not first.loc[c].isna().all()]
    rows = []
    for c in order:
        row = {"class": c + (" *" if c in lonely else ""), "CAM": first.loc[c, "CAM"], "CAM+CRF": first.loc[c, "CAM+CRF"]}
        for e, t in tables.items():
            row[f"ICD {e}"] = t.loc[c, "ICD"]
            row[f"ICD+CRF {e}"] = t.loc[c, "ICD+CRF"]
        rows.append(row)
    table = pd.DataFrame(rows)
    lines = [f"Per-class IoU on `{args.split}` (* = never alone in `{args.split}`: {len(lonely)} classes)", "",
             to_markdown(table, "{:.3f}"), ""]
    summary = []
    for e, t in tables.items():
        miou = pd.read_csv(args.results / e / "pseudo_masks" / "table.csv").set_index("method")["miou"]
        beats = [c for c in lonely if c in t.index and t.loc[c, "ICD+CRF"] > first.loc[c, "CAM+CRF"]]
        summary.append({"experiment": e, "CAM": miou["CAM"], "CAM+CRF": miou["CAM+CRF"], "ICD": miou["ICD"],
                        "ICD+CRF": miou["ICD+CRF"],
                        "ICD+CRF > CAM+CRF on never-alone classes": f"{len(beats)} of {len(lonely)}"
                        + (f" ({', '.join(sorted(beats))})" if beats else ""),
                        "mean IoU on never-alone, ICD+CRF": float(np.mean([t.loc[c, "ICD+CRF"] for c in lonely]))})
    lines += ["mIoU", "", to_markdown(pd.DataFrame(summary), "{:.3f}"), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
