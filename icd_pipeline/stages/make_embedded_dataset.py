"""Stage ``make_embedded_dataset``: generate the embedded dataset (``data.synthetic``) in VOC
layout, with its manifest.

    python -m icd_pipeline.stages.make_embedded_dataset --config-json JSON --out results/embedded/data
"""

from __future__ import annotations

import sys

from ..data.synthetic import generate
from ..misc.runtime import get_logger
from . import dataset_parser, splits_summary, write_dataset

log = get_logger("icd_pipeline.data.synthetic")


def main(argv: list[str] | None = None) -> int:
    parser = dataset_parser("icd_pipeline.stages.make_embedded_dataset", "Generate the embedded dataset (VOC layout).")
    args = parser.parse_args(argv)

    def build(config: dict) -> dict:
        if config["dataset"]["source"] != "synthetic":
            log.warning("dataset.source is %r; generating the embedded dataset anyway", config["dataset"]["source"])
        return generate(args.out, config["dataset"]["synthetic"], config["seed"], progress=not args.no_progress)

    return write_dataset(args, build, splits_summary, log)


if __name__ == "__main__":
    sys.exit(main())
