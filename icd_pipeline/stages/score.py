"""Score a folder of predicted masks against a split's ground truth (VOC protocol, the
``evaluate`` library): per-class IoU CSV and a summary JSON.

    python -m icd_pipeline.stages.score --data-root DIR --split train --pred-dir DIR \
        --out-csv per_class.csv --out-json summary.json [--ignore-pred-void]

Any folder of palette (or plain label-value) PNGs named ``<id>.png``: pseudo-masks, DeepLab
predictions, another method's output.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..data.voc import DataError, VOCLayout
from ..evaluate import evaluate_dirs, write_results
from ..misc.commands import command_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.score"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="dataset folder in VOC layout")
    parser.add_argument("--split", required=True, help="split list name under ImageSets/Segmentation")
    parser.add_argument("--pred-dir", required=True, help="folder of palette PNG predictions <id>.png")
    parser.add_argument("--gt-dir", default=None, help="ground-truth folder (default: the layout's masks)")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-json", required=True)
    parser.add_argument("--ignore-pred-void", action="store_true",
                        help="leave out pixels predicted 255 (the ICD authors' protocol)")
    args = parser.parse_args(argv)
    try:
        layout = VOCLayout.open(args.data_root)
        ev = evaluate_dirs(layout, layout.ids(args.split), args.pred_dir, args.ignore_pred_void, args.gt_dir)
        summary = write_results(ev, layout.class_names, args.out_csv, args.out_json,
                                {"split": args.split})
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
