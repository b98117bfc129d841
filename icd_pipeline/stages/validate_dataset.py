"""Stage ``validate_dataset``: check a user's own dataset folder (``dataset.source: folder``,
VOC layout or a plain folder with ``labels.csv``) for ``dataset.train_split`` and
``dataset.eval_split`` and write its VOC-layout view, which every later stage reads
(``data.folder.build_view``: every listed image decoded, masks read and sized against their
image, labels strict, no class without a training image unless
``dataset.allow_empty_classes``; links to the user's files, ``manifest.json`` last).
Nothing is written into the user's folder; on an error nothing is left in ``--out``.

    python -m icd_pipeline.stages.validate_dataset --config-json JSON --out results/<name>/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import ConfigError, add_config_args, config_from_args
from ..data.folder import build_view
from ..data.voc import DataError
from ..misc.commands import command_name
from ..misc.runtime import get_logger

log = get_logger("icd_pipeline.data.folder")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.validate_dataset"),
                                     description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: the dataset's VOC-layout view and manifest.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        ds = config_from_args(args)["dataset"]
        if not ds.get("root"):
            raise ConfigError("dataset.root must name the dataset folder when dataset.source is 'folder'")
        manifest = build_view(ds, args.out, progress=not args.no_progress)
    except (DataError, ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info("%s layout, %d classes; images per split %s, with a mask %s", manifest["layout"],
             len(manifest["class_names"]) - 1, json.dumps(manifest["splits"]), json.dumps(manifest["masks"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
