#!/usr/bin/env python
"""Two split lists of a VOC-layout folder as a plain folder with labels.csv and no masks
(issue 32's check that both layouts give the same figures).

    .venv/bin/python benchmarks/plain_layout_from_voc.py --voc-root ../shared/data/voc2012-sample/VOC2012 \
        --train train_animals --val val_animals --out /tmp/animals-plain

Copies ``<id>.jpg`` of both lists into OUT and writes ``labels.csv`` (``image,labels,split``, rows
in list order, the labels the VOC layout reads for each image). Run the preset on it with
``dataset.classes`` set to the VOC folder's class list so that class ids match; its pseudo-masks
are then comparable file by file with the VOC-layout run's, and scorable with
``icd-pipeline score --data-root VOC_ROOT --split TRAIN``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icd_pipeline.data.voc import VOCLayout  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voc-root", required=True)
    ap.add_argument("--train", default="train_animals", help="split list that becomes split 'train'")
    ap.add_argument("--val", default="val_animals", help="split list that becomes split 'val'")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    layout = VOCLayout.open(args.voc_root)
    names = layout.class_names
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists: give a new folder")
    out.mkdir(parents=True)
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels", "split"])
        for split, listed in (("train", args.train), ("val", args.val)):
            for image_id in layout.ids(listed):
                source = layout.image_path(image_id)
                shutil.copyfile(source, out / source.name)
                writer.writerow([source.name, " ".join(names[c] for c in layout.labels(image_id)), split])
    print(f"wrote {out} (classes for dataset.classes: [{', '.join(names[1:])}])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
