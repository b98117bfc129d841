"""VOC 2012 + SBD -> one VOC-layout folder with SegmentationClassAug and train_aug; COCO
2014 -> the same layout (``icd_pipeline.data.coco``). A user's own folder: ``data.folder``.

``prepare_voc`` builds, atomically (the folder appears complete or not at all)::

    out/JPEGImages/<id>.jpg              hard links into the extraction (copies where linking fails)
    out/Annotations/<id>.xml             VOC XMLs (image-level labels)
    out/SegmentationClass/<id>.png       official VOC masks
    out/SegmentationClassAug/<id>.png    official mask where VOC has one, else SBD's cls/<id>.mat
    out/ImageSets/Segmentation/{train,val,train_aug}.txt
    out/manifest.json                    written last

with ``train_aug = (SBD train ∪ SBD val ∪ VOC train) − VOC val`` (10,582 ids for the real
data). Only ids on one of the three lists are copied.

Run by the stages ``prepare_voc`` and ``prepare_coco``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from icd_pipeline.data.voc import (
    VOC_CLASSES,
    VOID,
    DataError,
    image_size,
    parse_xml_labels,
    read_split,
    write_palette_png,
)
from icd_pipeline.misc.io import atomic_dir
from icd_pipeline.misc.progress import progress as progress_bar
from icd_pipeline.misc.runtime import get_logger

log = get_logger("icd_pipeline.data.prepare")

VOC2012_COUNTS = {"train_aug": 10582, "train": 1464, "val": 1449}


def train_aug_ids(sbd_train: list[str], sbd_val: list[str], voc_train: list[str],
                  voc_val: list[str]) -> list[str]:
    """(SBD train ∪ SBD val ∪ VOC train) − VOC val, sorted."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` to ``dst`` (copy where the file system refuses). True if linked."""
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copyfile(src, dst)
        return False


def load_sbd_mask(path: Path, num_classes: int = len(VOC_CLASSES)) -> np.ndarray:
    """SBD ``cls/<id>.mat`` -> uint8 label map (GTcls.Segmentation)."""
    from scipy.io import loadmat  # scipy is only needed here

    if not path.is_file():
        raise DataError(f"{path}: SBD mask file is missing")
    try:
        seg = loadmat(str(path))["GTcls"][0]["Segmentation"][0]
    except Exception as exc:  # scipy raises several types for a broken .mat
        raise DataError(f"{path}: unreadable SBD mask ({type(exc).__name__}: {exc})") from exc
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise DataError(f"{path}: GTcls.Segmentation must be 2-D, got shape {seg.shape}")
    bad = (seg >= num_classes) & (seg != VOID)
    if (seg < 0).any() or bad.any():
        raise DataError(f"{path}: mask values outside 0..{num_classes - 1} and {VOID}")
    return seg.astype(np.uint8)


def check_counts(counts: dict[str, int], expected: dict[str, int] | None) -> None:
    if not expected:
        return
    wrong = {k: (counts.get(k), v) for k, v in expected.items() if counts.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}: got {got}, expected {exp}" for k, (got, exp) in sorted(wrong.items()))
        raise DataError(f"split sizes differ from dataset.expected_counts ({detail}); "
                        f"all counts: {counts}")


def prepare_voc(voc_root: str | Path, sbd_root: str | Path, out_dir: str | Path,
                expected_counts: dict[str, int] | None = None, progress: bool = True) -> dict:
    """Build the VOC-layout folder ``out_dir`` from extracted VOC 2012 and SBD; return the
    manifest. ``voc_root``: ``VOCdevkit/VOC2012``; ``sbd_root``: ``benchmark_RELEASE/dataset``."""
    voc_root, sbd_root, out_dir = Path(voc_root), Path(sbd_root), Path(out_dir)
    for d in (voc_root / "JPEGImages", voc_root / "Annotations", voc_root / "SegmentationClass"):
        if not d.is_dir():
            raise DataError(f"{d}: missing (is {voc_root} an extracted VOCdevkit/VOC2012?)")
    if not (sbd_root / "cls").is_dir():
        raise DataError(f"{sbd_root / 'cls'}: missing (is {sbd_root} an extracted benchmark_RELEASE/dataset?)")
    seg_lists = voc_root / "ImageSets" / "Segmentation"
    voc_train = read_split(seg_lists / "train.txt")
    voc_val = read_split(seg_lists / "val.txt")
    sbd_train = read_split(sbd_root / "train.txt")
    sbd_val = read_split(sbd_root / "val.txt")
    train_aug = train_aug_ids(sbd_train, sbd_val, voc_train, voc_val)
    splits = {"train_aug": train_aug, "train": sorted(set(voc_train)), "val": sorted(set(voc_val))}
    counts = {k: len(v) for k, v in splits.items()}
    log.info("split sizes: %s", counts)
    check_counts(counts, expected_counts)

    all_ids = sorted(set(train_aug) | set(voc_train) | set(voc_val))
    linked = copied = official = from_sbd = 0
    with atomic_dir(out_dir) as tmp:
        dirs = {name: tmp / name for name in
                ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug")}
        for d in dirs.values():
            d.mkdir()
        (tmp / "ImageSets" / "Segmentation").mkdir(parents=True)
        for image_id in progress_bar(all_ids, desc="prepare voc2012", unit=" images", file=sys.stderr,
                             disable=not progress):
            img = voc_root / "JPEGImages" / f"{image_id}.jpg"
            if not img.is_file():
                raise DataError(f"{img}: image of id {image_id} (on a split list) is missing")
            xml = voc_root / "Annotations" / f"{image_id}.xml"
            parse_xml_labels(xml, VOC_CLASSES)  # image-level labels derivable (raises otherwise)
            for src, dst in ((img, dirs["JPEGImages"] / img.name), (xml, dirs["Annotations"] / xml.name)):
                if link_or_copy(src, dst):
                    linked += 1
                else:
                    copied += 1
            png = voc_root / "SegmentationClass" / f"{image_id}.png"
            if png.is_file():
                link_or_copy(png, dirs["SegmentationClass"] / png.name)
                link_or_copy(png, dirs["SegmentationClassAug"] / png.name)
                official += 1
            else:
                mat = sbd_root / "cls" / f"{image_id}.mat"
                if not mat.is_file():
                    raise DataError(f"{image_id}: no mask: neither {png} nor {mat} exists")
                mask = load_sbd_mask(mat)
                hw = image_size(img)
                if mask.shape != hw:
                    raise DataError(f"{mat}: mask size {mask.shape} differs from image size {hw} ({img})")
                write_palette_png(dirs["SegmentationClassAug"] / f"{image_id}.png", mask)
                from_sbd += 1
        for name, ids in splits.items():
            (tmp / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        # the official masks must cover the official lists (a truncated extraction fails here)
        for split in ("train", "val"):
            missing = [i for i in splits[split] if not (dirs["SegmentationClass"] / f"{i}.png").is_file()]
            if missing:
                raise DataError(f"{voc_root / 'SegmentationClass'}: no official mask for {len(missing)} "
                                f"{split} id(s), e.g. {missing[:5]}")
        manifest = {
            "source": "voc2012",
            "root": str(out_dir),
            "class_names": list(VOC_CLASSES),
            "splits": counts,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("%s: %d images (%d files hard-linked, %d copied), %d official masks, %d SBD masks",
             out_dir, len(all_ids), linked, copied, official, from_sbd)
    return manifest

