"""Stage ``prepare_voc``: VOC 2012 + SBD extractions -> one VOC-layout folder with
SegmentationClassAug and ``train_aug`` (``data.prepare.prepare_voc``).

    python -m icd_pipeline.stages.prepare_voc --config-json JSON --downloads DIR --out results/voc2012/data

Reads ``DIR/extracted.json`` (written by the download stage) for the extracted roots, and
checks the split sizes against ``dataset.expected_counts`` (null: the real VOC 2012 counts;
``{}``: no check).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import ConfigError
from ..data.prepare import VOC2012_COUNTS, prepare_voc
from ..data.voc import DataError
from ..misc.runtime import get_logger
from . import dataset_parser, splits_summary, write_dataset

log = get_logger("icd_pipeline.data.prepare")


def _extracted_roots(downloads: Path) -> tuple[Path, Path]:
    record_path = downloads / "extracted.json"
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
            return downloads / record["voc"]["root"], downloads / record["sbd"]["root"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{record_path}: expected voc.root and sbd.root ({exc})") from exc
    voc, sbd = downloads / "voc" / "VOCdevkit" / "VOC2012", downloads / "sbd" / "benchmark_RELEASE" / "dataset"
    if voc.is_dir() and sbd.is_dir():
        return voc, sbd
    raise DataError(f"{record_path}: missing; run the download stage first (snakemake ... data)")



def main(argv: list[str] | None = None) -> int:
    parser = dataset_parser("icd_pipeline.stages.prepare_voc", __doc__.split("\n")[0])
    parser.add_argument("--downloads", type=Path, default=None,
                        help="the download stage's --out-dir (holds extracted.json)")
    parser.add_argument("--voc-root", type=Path, default=None, help="override: extracted VOCdevkit/VOC2012")
    parser.add_argument("--sbd-root", type=Path, default=None, help="override: extracted benchmark_RELEASE/dataset")
    args = parser.parse_args(argv)

    def build(config: dict) -> dict:
        voc_root, sbd_root = args.voc_root, args.sbd_root
        if voc_root is None or sbd_root is None:
            if args.downloads is None:
                raise ConfigError("give --downloads, or both --voc-root and --sbd-root")
            found_voc, found_sbd = _extracted_roots(args.downloads)
            voc_root, sbd_root = voc_root or found_voc, sbd_root or found_sbd
        expected = config["dataset"].get("expected_counts")
        return prepare_voc(voc_root, sbd_root, args.out, expected_counts=VOC2012_COUNTS if expected is None else expected,
                           progress=not args.no_progress)

    return write_dataset(args, build, splits_summary, log)


if __name__ == "__main__":
    sys.exit(main())
