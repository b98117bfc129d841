"""Stage ``prepare_coco``: COCO 2014 extractions -> a VOC-layout folder with 81-label masks
(``data.coco.prepare_coco``; ``dataset.coco`` draws seeded subsets).

    python -m icd_pipeline.stages.prepare_coco --config-json JSON --downloads DIR --out results/coco2014/data [--workers N]

Checks the split sizes against ``dataset.expected_counts`` (null: the real COCO 2014 counts).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..data.coco import COCO2014_COUNTS, extracted_coco_roots, prepare_coco
from ..misc.runtime import get_logger
from . import dataset_parser, splits_summary, write_dataset

log = get_logger("icd_pipeline.data.prepare")


def main(argv: list[str] | None = None) -> int:
    parser = dataset_parser("icd_pipeline.stages.prepare_coco", __doc__.split("\n")[0])
    parser.add_argument("--downloads", type=Path, required=True,
                        help="the download stage's --out-dir (holds extracted.json)")
    parser.add_argument("--workers", type=int, default=1, help="conversion processes")
    args = parser.parse_args(argv)

    def build(config: dict) -> dict:
        ds = config["dataset"]
        images, annotations = extracted_coco_roots(args.downloads)
        expected = ds.get("expected_counts")
        sub_cfg = ds["coco"]
        return prepare_coco(images, annotations, args.out, train_size=sub_cfg["train_size"],
                            eval_size=sub_cfg["eval_size"], subset_seed=sub_cfg["subset_seed"],
                            expected_counts=COCO2014_COUNTS if expected is None else expected,
                            workers=max(1, args.workers), progress=not args.no_progress)

    return write_dataset(args, build, splits_summary, log)


if __name__ == "__main__":
    sys.exit(main())
