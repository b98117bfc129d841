"""Stage ``validate_dataset``: check a user's own dataset folder (``dataset.source: folder``)
for ``dataset.train_split`` and ``dataset.eval_split`` and write its manifest
(``data.prepare.validate_folder``: every listed image present, masks the image's size,
image-level labels derivable). Nothing is written into the user's folder.

    python -m icd_pipeline.stages.validate_dataset --config-json JSON --out-manifest results/<name>/data/manifest.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import ConfigError, add_config_args, config_from_args
from ..data.voc import DataError
from ..misc.commands import command_name
from ..misc.io import atomic_path
from ..misc.runtime import get_logger

log = get_logger("icd_pipeline.data.prepare")
from ..data.prepare import validate_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.validate_dataset"),
                                     description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--out-manifest", type=Path, required=True)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        ds = config_from_args(args)["dataset"]
        if not ds.get("root"):
            raise ConfigError("dataset.root must name the dataset folder when dataset.source is 'folder'")
        manifest = validate_folder(ds["root"], [ds["train_split"], ds["eval_split"]],
                                   progress=not args.no_progress)
        with atomic_path(args.out_manifest) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    except (DataError, ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info("manifest: %s", json.dumps(manifest["splits"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
