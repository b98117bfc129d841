"""Stage ``make_embedded_dataset``: generate the embedded dataset (``data.synthetic``) in VOC
layout, with its manifest.

    python -m icd_pipeline.stages.make_embedded_dataset --config-json JSON --out results/embedded/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import ConfigError, add_config_args, config_from_args
from ..data.synthetic import generate
from ..data.voc import DataError
from ..misc.commands import command_name
from ..misc.runtime import get_logger

log = get_logger("icd_pipeline.data.synthetic")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.make_embedded_dataset"),
                                     description="Generate the embedded dataset (VOC layout).")
    add_config_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder (VOC layout + manifest.json)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        if config["dataset"]["source"] != "synthetic":
            log.warning("dataset.source is %r; generating the embedded dataset anyway",
                        config["dataset"]["source"])
        manifest = generate(args.out, config["dataset"]["synthetic"], config["seed"],
                            progress=not args.no_progress)
    except (DataError, ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info("manifest: %s", json.dumps(manifest["splits"]))
    return 0



if __name__ == "__main__":
    sys.exit(main())
