"""Stage ``download_voc`` / ``download_coco``: fetch and extract the dataset archives
(``data.download``: mirrors, resume, md5, safe extraction), and record the extracted roots.

    python -m icd_pipeline.stages.download --config-json JSON --out-dir results/<ds>/downloads
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError, add_config_args, config_from_args
from ..data.download import fetch_datasets
from ..data.voc import DataError
from ..misc.commands import command_name
from ..misc.runtime import get_logger

log = get_logger("icd_pipeline.data.download")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.download"), description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--out-dir", required=True, type=Path,
                        help="folder for the archives, their extractions and extracted.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        ds = config["dataset"]
        record = fetch_datasets(ds["download"], args.out_dir, progress=not args.no_progress,
                                source=ds["source"])
    except (DataError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for key, rec in record.items():
        log.info("%s: %s", key, args.out_dir / rec["root"])
    return 0



if __name__ == "__main__":
    sys.exit(main())
