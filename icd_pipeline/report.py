"""Run summary: pseudo-mask table, final mIoU (pseudo vs full supervision) and stage times.

    python -m icd_pipeline.report --dataset NAME --deeplab-masks icd_crf --pseudo-table table.csv \
        --deeplab-pseudo pseudo/summary.json --deeplab-full full/summary.json \
        --benchmarks results/NAME/benchmarks results/NAME/EXPERIMENT/benchmarks --out-md summary.md --out-csv summary.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from icd_pipeline.misc.io import atomic_path


def read_benchmarks(*folders: str | Path) -> pd.DataFrame:
    """One row per Snakemake ``benchmark:`` TSV in the folders (the dataset's shared stages,
    then the experiment's): stage, wall seconds, peak RSS (MB)."""
    rows = []
    for tsv in [t for folder in folders for t in sorted(Path(folder).glob("*.tsv"))]:
        df = pd.read_csv(tsv, sep="\t")
        if df.empty:
            continue
        rss = pd.to_numeric(df["max_rss"], errors="coerce")
        rows.append({"stage": tsv.stem, "seconds": float(df["s"].iloc[-1]),
                     "max_rss_mb": float(rss.iloc[-1]) if rss.notna().iloc[-1] else float("nan")})
    return pd.DataFrame(rows, columns=["stage", "seconds", "max_rss_mb"])


MASK_NAMES = {"icd_crf": "ICD+CRF pseudo-masks", "icd_seed": "ICD seeds, 255 not trained on",
              "icd_sal": "ICD+saliency seeds", "icd_sal_crf": "ICD+saliency+CRF pseudo-masks",
              "cam_sal": "CAM+saliency seeds", "cam_sal_crf": "CAM+saliency+CRF pseudo-masks"}


def summary_rows(pseudo_table: pd.DataFrame, deeplab_pseudo: dict, deeplab_full: dict,
                 deeplab_masks: str = "icd_crf") -> pd.DataFrame:
    rows = [{"metric": f"pseudo-mask mIoU ({row.method})", "value": float(row.miou)}
            for row in pseudo_table.itertuples()]
    rows += [{"metric": f"pseudo-mask mIoU, 255 left out ({row.method})", "value": float(row.miou_authors)}
             for row in pseudo_table.itertuples()]
    masks = MASK_NAMES.get(deeplab_masks, deeplab_masks)
    rows.append({"metric": f"DeepLab val mIoU (trained on {masks})", "value": deeplab_pseudo["miou"]})
    rows.append({"metric": "DeepLab val mIoU (fully supervised)", "value": deeplab_full["miou"]})
    ratio = deeplab_pseudo["miou"] / deeplab_full["miou"] if deeplab_full["miou"] else float("nan")
    rows.append({"metric": "fraction of full supervision", "value": ratio})
    return pd.DataFrame(rows)


def per_class_table(pseudo_per_class: pd.DataFrame, deeplab: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per class: the pseudo-mask IoU of each method (255 counted as background) on the
    training split, then the DeepLab IoU of each target on the evaluation split (NaN where the
    class is in neither the ground truth nor the prediction)."""
    wide = pseudo_per_class.pivot_table(index="class", columns="method", values="iou", sort=False, dropna=False)
    order = list(dict.fromkeys(pseudo_per_class["method"]))
    table = wide[order].rename(columns=lambda m: f"{m} (train)")
    for target, df in deeplab.items():
        table[f"DeepLab {target} (val)"] = df.set_index("class")["iou"].reindex(table.index)
    return table.reset_index()


def classifier_rows(classifier: dict) -> pd.DataFrame:
    return pd.DataFrame([{"class": c, "AP": float(ap)} for c, ap in classifier["ap"].items()])


def to_markdown(df: pd.DataFrame, float_fmt: str = "{:.4f}") -> str:
    """A plain Markdown table (no extra dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = [float_fmt.format(v) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--deeplab-masks", default="icd_crf",
                        help="the pseudo-mask folder the pseudo DeepLab trained on (icd_crf, icd_seed, icd_sal, ...)")
    parser.add_argument("--pseudo-table", required=True)
    parser.add_argument("--deeplab-pseudo", required=True)
    parser.add_argument("--deeplab-full", required=True)
    parser.add_argument("--benchmarks", required=True, nargs="+", help="benchmark folders")
    parser.add_argument("--classifier", help="icd/classifier.json (image-level mAP on the evaluation split)")
    parser.add_argument("--pseudo-per-class", help="pseudo_masks/per_class.csv")
    parser.add_argument("--deeplab-pseudo-per-class", help="deeplab/pseudo/per_class.csv")
    parser.add_argument("--deeplab-full-per-class", help="deeplab/full/per_class.csv")
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--out-csv", required=True)
    args = parser.parse_args(argv)
    try:
        table = pd.read_csv(args.pseudo_table)
        pseudo = json.loads(Path(args.deeplab_pseudo).read_text())
        full = json.loads(Path(args.deeplab_full).read_text())
        classifier = json.loads(Path(args.classifier).read_text()) if args.classifier else None
        per_class = None
        if args.pseudo_per_class:
            deeplab = {t: pd.read_csv(f) for t, f in (("pseudo", args.deeplab_pseudo_per_class),
                                                      ("full", args.deeplab_full_per_class)) if f}
            per_class = per_class_table(pd.read_csv(args.pseudo_per_class), deeplab)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = summary_rows(table, pseudo, full, args.deeplab_masks)
    if classifier is not None:
        summary = pd.concat([pd.DataFrame([{"metric": f"classifier mAP ({classifier['split']})",
                                            "value": float(classifier["map"])}]), summary], ignore_index=True)
    bench = read_benchmarks(*args.benchmarks)
    with atomic_path(args.out_csv) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.6f")
    md = [f"# icd-pipeline summary: {args.dataset}", "",
          "## Pseudo-masks (training split)", "", to_markdown(table), "",
          "## Final segmentation (validation split)", "",
          to_markdown(summary[summary.metric.str.startswith(("DeepLab", "fraction"))]), ""]
    if classifier is not None:
        md += [f"## Image-level classifier ({classifier['split']}, {classifier['images']} images)", "",
               f"mAP **{classifier['map']:.4f}** over the {len(classifier['ap'])} classes with positives.", "",
               to_markdown(classifier_rows(classifier)), ""]
    if per_class is not None:
        md += ["## IoU per class", "", to_markdown(per_class), ""]
    md += ["## Stage wall time and peak memory", "", to_markdown(bench, "{:.1f}"), ""]
    with atomic_path(args.out_md) as tmp:
        tmp.write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
