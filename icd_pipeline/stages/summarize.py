"""Stage ``summarize``: the run's summary (pseudo-mask table, final mIoU, pseudo vs full
supervision, and stage times) as Markdown and CSV.

    python -m icd_pipeline.stages.summarize --dataset NAME --deeplab-masks icd_crf --pseudo-table table.csv \
        --deeplab-pseudo pseudo/summary.json --deeplab-full full/summary.json \
        --benchmarks results/NAME/benchmarks results/NAME/EXPERIMENT/benchmarks --out-md summary.md --out-csv summary.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from ..misc.commands import command_name
from ..misc.io import atomic_path
from ..summary import classifier_rows, per_class_table, read_benchmarks, summary_rows, to_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.summarize"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--deeplab-masks", default="icd_crf",
                        help="the pseudo-mask folder the pseudo DeepLab trained on (icd_crf, icd_seed, icd_sal)")
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
