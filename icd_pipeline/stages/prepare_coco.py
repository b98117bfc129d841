"""Stage ``prepare_coco``: COCO 2014 extractions -> a VOC-layout folder with 81-label masks
(``data.coco.prepare_coco``; ``dataset.coco`` draws seeded subsets).

    python -m icd_pipeline.stages.prepare_coco --config-json JSON --downloads DIR --out results/coco2014/data [--workers N]

Checks the split sizes against ``dataset.expected_counts`` (null: the real COCO 2014 counts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import ConfigError, add_config_args, config_from_args
from ..data.voc import DataError
from ..misc.commands import command_name
from ..misc.runtime import get_logger

log = get_logger("icd_pipeline.data.prepare")
from ..data.coco import COCO2014_COUNTS, extracted_coco_roots, prepare_coco


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.prepare_coco"),
                                     description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--downloads", type=Path, required=True,
                        help="the download stage's --out-dir (holds extracted.json)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (VOC layout + manifest.json)")
    parser.add_argument("--workers", type=int, default=1, help="conversion processes")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        ds = config_from_args(args)["dataset"]
        images, annotations = extracted_coco_roots(args.downloads)
        expected = ds.get("expected_counts")
        if expected is None:
            expected = COCO2014_COUNTS
        sub_cfg = ds["coco"]
        manifest = prepare_coco(images, annotations, args.out, train_size=sub_cfg["train_size"],
                                eval_size=sub_cfg["eval_size"], subset_seed=sub_cfg["subset_seed"],
                                expected_counts=expected, workers=max(1, args.workers),
                                progress=not args.no_progress)
    except (DataError, ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info("manifest: %s", json.dumps(manifest["splits"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
