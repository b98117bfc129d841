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

import json
import sys

from ..config import ConfigError
from ..data.folder import build_view
from ..misc.runtime import get_logger
from . import dataset_parser, write_dataset

log = get_logger("icd_pipeline.data.folder")


def main(argv: list[str] | None = None) -> int:
    parser = dataset_parser("icd_pipeline.stages.validate_dataset", __doc__.split("\n")[0],
                            "output folder: the dataset's VOC-layout view and manifest.json")
    args = parser.parse_args(argv)

    def build(config: dict) -> dict:
        ds = config["dataset"]
        if not ds.get("root"):
            raise ConfigError("dataset.root must name the dataset folder when dataset.source is 'folder'")
        return build_view(ds, args.out, progress=not args.no_progress)

    def summary(manifest: dict) -> str:
        return (f"{manifest['layout']} layout, {len(manifest['class_names']) - 1} classes; images per split "
                f"{json.dumps(manifest['splits'])}, with a mask {json.dumps(manifest['masks'])}")

    return write_dataset(args, build, summary, log)


if __name__ == "__main__":
    sys.exit(main())
