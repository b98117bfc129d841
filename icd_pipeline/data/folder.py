"""A user's own dataset folder (``dataset.source: folder``): its layout detected, its labels
read strictly, and a VOC-layout *view* of it built under ``results/<name>/data``, which every
later stage reads (``VOCLayout.open``), whatever the layout. Nothing is written into the
user's folder.

Two layouts, told apart by what ``dataset.root`` holds (both, or neither, is an error):

``JPEGImages/``: **VOC layout** (``data.voc``): ``JPEGImages/<id>.<jpg|jpeg|png|bmp|webp>``,
``ImageSets/Segmentation/<split>.txt``, labels from ``Annotations/<id>.xml``, else
``image_labels.csv`` (``id[,split],<one 0/1 column per class>``), else the masks
(``SegmentationClassAug/`` or ``SegmentationClass/``); class names from ``dataset.json``
(``{"class_names": ["background", ...]}``), else ``dataset.classes``, else VOC's 20.

``labels.csv``: a **plain folder**: images anywhere below the folder (sub-folders allowed;
``.jpg .jpeg .png .bmp .webp``, any case; hidden files and ``masks/`` left out) and::

    image,labels[,split]
    cats/001.jpg,cat
    street/a.png,person bicycle

``image`` the path relative to the folder, ``labels`` class names separated by spaces,
``split`` (optional) ``dataset.train_split`` or ``dataset.eval_split``. Without ``split``, a
fraction ``dataset.val_fraction`` of the images is held out as the eval split: those ranked
first by a hash of (``dataset.split_seed``, path), so adding an image leaves the others where
they were, skipping any image whose removal would leave a class without a training image.
Class names, sorted, come from the file unless ``dataset.classes`` lists them (then in that
order, and a name not on the list is an error). Optional masks: ``masks/<image path with
.png>`` (``masks/cats/001.png``), a palette or greyscale PNG of class ids (0 background, the
class's position in the class order, 255 void) or an RGB PNG in the VOC colours.

The view (:func:`build_view`, atomically: it appears complete or not at all)::

    out/JPEGImages/<id><ext>          symbolic links to the images
    out/SegmentationClass/<id>.png    links to the masks (RGB masks converted to palette PNGs)
    out/image_labels.csv              plain folder: id,split,<0/1 per class>
    out/Annotations, SegmentationClass(Aug), Saliency, image_labels.csv
                                      VOC layout: links to the folder's own
    out/ImageSets/Segmentation/<split>.txt   the train and eval splits (checked)
    out/dataset.json                  class names (background first), layout, source folder
    out/manifest.json                 written last (:func:`build_view` says what it holds)

A plain folder's image id is its path without extension, folders joined by ``__`` and every
character other than letters, digits, ``.``, ``_``, ``-`` replaced by ``_``
(``street/a b.png`` -> ``street__a_b``); two images with one id are an error naming both.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from icd_pipeline.data.voc import (
    IMAGE_SUFFIXES,
    VOC_CLASSES,
    VOID,
    DataError,
    VOCLayout,
    palette_array,
    read_class_names,
    read_image,
    read_mask,
    read_split_lines,
    write_palette_png,
)
from icd_pipeline.misc.io import atomic_dir
from icd_pipeline.misc.progress import progress as progress_bar
from icd_pipeline.misc.runtime import get_logger

log = get_logger("icd_pipeline.data.folder")

LABELS_FILE = "labels.csv"
MASKS_DIR = "masks"
PLAIN_COLUMNS = ("image", "labels", "split")
VOC_LINKED = ("JPEGImages", "Annotations", "SegmentationClassAug", "SegmentationClass", "Saliency",
              "image_labels.csv")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_BAD_CLASS_CHARS = re.compile(r"[,;|]")


# --------------------------------------------------------------------------- layout and classes


def detect_layout(root: str | Path) -> str:
    """``"voc"`` (``root/JPEGImages/``) or ``"plain"`` (``root/labels.csv``); an error naming the
    folder and both markers when it has neither or both."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder does not exist (dataset.root)" if not root.exists()
                        else f"{root}: not a folder (dataset.root names the dataset folder)")
    voc, plain = (root / "JPEGImages").is_dir(), (root / LABELS_FILE).is_file()
    if voc and plain:
        raise DataError(f"{root}: has both JPEGImages/ (VOC layout) and {LABELS_FILE} (a plain folder): "
                        f"keep one, so that the layout is not ambiguous")
    if voc:
        return "voc"
    if plain:
        return "plain"
    raise DataError(f"{root}: neither JPEGImages/ (VOC layout) nor {LABELS_FILE} (a plain folder of images "
                    f"with a label file 'image,labels'): see docs/own-data.md")


def configured_classes(dataset: dict) -> tuple[str, ...] | None:
    """``dataset.classes`` as class names with background first, or None when unset."""
    classes = dataset.get("classes")
    if not classes:
        return None
    if "background" in classes:
        raise DataError("dataset.classes: 'background' is class 0 and is added for you; list the object "
                        "classes only")
    twice = sorted({c for c in classes if classes.count(c) > 1})
    if twice:
        raise DataError(f"dataset.classes: {twice} listed twice")
    return ("background", *classes)


def voc_class_names(root: Path, dataset: dict) -> tuple[str, ...]:
    """A VOC-layout folder's classes: ``dataset.json``, else ``dataset.classes``, else VOC's;
    both set and different is an error."""
    configured = configured_classes(dataset)
    if (root / "dataset.json").is_file():
        names = read_class_names(root)
        if configured is not None and configured != names:
            raise DataError(f"{root / 'dataset.json'}: class_names {list(names[1:])} differ from dataset.classes "
                            f"{list(configured[1:])}: remove one of them")
        return names
    return configured or VOC_CLASSES


def image_id_for(relative: str) -> str:
    """A plain folder's image id: the path without extension, folders joined by ``__``, unsafe
    characters replaced by ``_`` (safe in file names, split lists and HDF5 keys)."""
    parts = PurePosixPath(relative).with_suffix("").parts
    image_id = "__".join(_UNSAFE.sub("_", p) for p in parts)
    return "_" + image_id[1:] if image_id.startswith(".") else image_id


def _stable_rank(seed: int, relative: str) -> str:
    return hashlib.sha256(f"{seed}\0{relative}".encode()).hexdigest()


# --------------------------------------------------------------------------- the plain folder


@dataclass
class PlainImage:
    relative: str            # the path as labels.csv gives it (relative to the folder)
    image_id: str
    labels: list[int]        # 1-based class ids, sorted
    line: int                # its line in labels.csv
    split: str | None = None  # the split column's value, else where the hold-out put it


@dataclass
class PlainFolder:
    """A plain folder read from its ``labels.csv`` (no image decoded)."""

    root: Path
    class_names: tuple[str, ...]
    images: list[PlainImage]
    splits: dict[str, list[str]]          # split -> ids, in labels.csv order
    split_from: str                        # "split column" | "val_fraction"
    by_id: dict[str, PlainImage] = field(default_factory=dict, repr=False)

    @property
    def labels_path(self) -> Path:
        return self.root / LABELS_FILE

    def image_path(self, image_id: str) -> Path:
        return self.root / self.by_id[image_id].relative

    def mask_path(self, image_id: str) -> Path:
        return self.root / MASKS_DIR / PurePosixPath(self.by_id[image_id].relative).with_suffix(".png")


def _scan_images(root: Path) -> list[str]:
    """Image files below ``root`` (relative POSIX paths, sorted): hidden files and folders and
    the top-level ``masks/`` left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not (here == root and d == MASKS_DIR))
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append((here / name).relative_to(root).as_posix())
    return sorted(found)


def _read_plain_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """labels.csv's header and (line, {column: cell}) rows, blank rows skipped; the header must
    be image,labels with an optional split, in any order."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise DataError(f"{path}:1: empty file: expected the header 'image,labels' (optionally ',split')")
            for col, name in enumerate(header):
                if name in header[:col]:
                    raise DataError(f"{path}:1: column {name!r} appears twice")
                if name not in PLAIN_COLUMNS:
                    raise DataError(f"{path}:1: unknown column {name!r}: the columns are image, labels and "
                                    f"(optional) split")
            missing = [c for c in ("image", "labels") if c not in header]
            if missing:
                raise DataError(f"{path}:1: missing column(s) {missing}: the header is 'image,labels' "
                                f"(optionally ',split')")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}:{reader.line_num}: {len(row)} cells, the header has {len(header)} "
                                    f"({','.join(header)}); quote a cell that holds a comma")
                rows.append((reader.line_num, dict(zip(header, row))))
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable CSV ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    return header, rows


def _parse_relative(path: Path, line: int, cell: str) -> str:
    rel = cell.strip()
    if not rel:
        raise DataError(f"{path}:{line}: the image path is empty")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or rel.startswith("~"):
        raise DataError(f"{path}:{line}: image {rel!r}: give the path relative to {path.parent}, inside it")
    if pure.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{path}:{line}: image {rel!r} is not a {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} "
                        f"file (extension {pure.suffix or 'none'!r})")
    if pure.parts[0] == MASKS_DIR:
        raise DataError(f"{path}:{line}: image {rel!r} is under {MASKS_DIR}/, the folder of the masks")
    return pure.as_posix()


def read_plain_folder(root: str | Path, dataset: dict) -> PlainFolder:
    """Read ``root/labels.csv`` strictly against the images on disk (none decoded) and split it.

    Errors (``FILE:LINE`` and the value): unknown or missing column, empty or duplicate image
    path, a path outside the folder or not an image, a listed image that is missing, an image
    on disk without a row, an empty label, an unknown class name (with ``dataset.classes``), a
    split value that is neither ``dataset.train_split`` nor ``dataset.eval_split``, two images
    with one id, an empty split.
    """
    root = Path(root)
    path = root / LABELS_FILE
    header, rows = _read_plain_rows(path)
    configured = configured_classes(dataset)
    train, evaluation = dataset.get("train_split", "train"), dataset.get("eval_split", "val")
    split_names = [train] if train == evaluation else [train, evaluation]
    has_split = "split" in header
    on_disk = set(_scan_images(root))

    parsed: list[tuple[int, str, list[str], str | None]] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        rel = _parse_relative(path, line, row["image"])
        if rel in first_line:
            raise DataError(f"{path}:{line}: image {rel!r} appears twice (first on line {first_line[rel]})")
        first_line[rel] = line
        if rel not in on_disk:
            hidden = (root / rel).is_file()
            raise DataError(f"{root / rel}: image listed in {path}:{line} "
                            + ("is hidden (a name starting with '.'): rename it" if hidden else "is missing"))
        names = row["labels"].split()
        if not names:
            raise DataError(f"{path}:{line}: image {rel!r} has no label (the labels column is empty); an image "
                            f"needs at least one class name")
        for name in names:
            if _BAD_CLASS_CHARS.search(name):
                raise DataError(f"{path}:{line}: class name {name!r}: separate class names with spaces")
            if name == "background":
                raise DataError(f"{path}:{line}: class name 'background': background is class 0 and is not "
                                f"labelled; list the object classes in the image")
            if configured is not None and name not in configured:
                raise DataError(f"{path}:{line}: unknown class name {name!r}: dataset.classes lists "
                                f"{', '.join(configured[1:])}")
        split = None
        if has_split:
            split = row["split"].strip()
            if split not in split_names:
                raise DataError(f"{path}:{line}: split {row['split']!r}: values are "
                                f"{' or '.join(split_names)} (dataset.train_split / dataset.eval_split)")
        parsed.append((line, rel, names, split))
    if not parsed:
        raise DataError(f"{path}: no image listed (one row 'image,labels' per image)")
    unlisted = sorted(on_disk - set(first_line))
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (", ..." if len(unlisted) > 5 else "")
        raise DataError(f"{path}: {len(unlisted)} image(s) in {root} have no row, so no label: {shown}; add a row "
                        f"'image,labels' for each, or move them out of the folder")

    class_names = configured or ("background", *sorted({n for _, _, names, _ in parsed for n in names}))
    index = {name: c for c, name in enumerate(class_names)}
    images: list[PlainImage] = []
    by_id: dict[str, PlainImage] = {}
    for line, rel, names, split in parsed:
        image = PlainImage(rel, image_id_for(rel), sorted({index[n] for n in names}), line, split)
        other = by_id.get(image.image_id)
        if other is not None:
            raise DataError(f"{root / other.relative} ({path}:{other.line}) and {root / rel} ({path}:{line}) get "
                            f"the same image id {image.image_id!r}: rename one (ids drop the extension, join "
                            f"folders with '__' and replace characters other than letters, digits, '.', '_', "
                            f"'-' by '_')")
        by_id[image.image_id] = image
        images.append(image)

    if train == evaluation:
        for image in images:
            image.split = train
        split_from = "split column" if has_split else "one split (train_split = eval_split)"
    elif has_split:
        split_from = "split column"
    else:
        _hold_out(images, train, evaluation, float(dataset.get("val_fraction", 0.1)),
                  int(dataset.get("split_seed", 0)), path)
        split_from = "val_fraction"
    splits = {s: [im.image_id for im in images if im.split == s] for s in split_names}
    for s, ids in splits.items():
        if not ids and has_split:
            raise DataError(f"{path}: split {s!r} is empty (no row has split {s!r}): mark some rows {s!r}, or "
                            f"drop the split column to hold out dataset.val_fraction of the images")
        if not ids:
            raise DataError(f"{path}: no image can be held out as {s!r}: each holds the only training image of "
                            f"a class; add images, or give a split column")
    return PlainFolder(root, tuple(class_names), images, splits, split_from, by_id)


def _hold_out(images: list[PlainImage], train: str, evaluation: str, fraction: float, seed: int,
              path: Path) -> None:
    """Mark ``round(fraction * n)`` images (at least 1) ``evaluation``, the rest ``train``: the
    first by :func:`_stable_rank`, skipping one whose removal would leave a class without a
    training image (so the held-out set can come out smaller)."""
    n = len(images)
    if n < 2:
        raise DataError(f"{path}: {n} image: at least 2 are needed to hold out an eval split "
                        f"(dataset.val_fraction)")
    target = min(max(1, round(fraction * n)), n - 1)
    in_train: dict[int, int] = {}
    for image in images:
        image.split = train
        for c in image.labels:
            in_train[c] = in_train.get(c, 0) + 1
    held = 0
    for image in sorted(images, key=lambda im: _stable_rank(seed, im.relative)):
        if held == target:
            break
        if all(in_train[c] > 1 for c in image.labels):
            image.split = evaluation
            held += 1
            for c in image.labels:
                in_train[c] -= 1
    if held < target:
        log.info("%s: held out %d images, not %d: the others hold the only training image of a class",
                 path, held, target)


# --------------------------------------------------------------------------- masks


def read_user_mask(path: Path, num_classes: int) -> tuple[np.ndarray, bool]:
    """A plain folder's mask as a label map, and whether it must be converted for the view (it
    is not a palette or greyscale PNG: an RGB(A) PNG in the VOC colours, or 16-bit values)."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in ("P", "L"):
                pass
            elif mode in ("RGB", "RGBA"):
                rgb = np.array(img.convert("RGB"), dtype=np.uint8)
            elif mode in ("I;16", "I;16B", "I;16L", "I"):
                values = np.array(img, dtype=np.int64)
            else:
                raise DataError(f"{path}: mask must be a palette, greyscale or RGB PNG, got mode {mode}")
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: unreadable mask ({exc})") from exc
    if mode in ("P", "L"):
        return read_mask(path, num_classes), False
    allowed = np.array(list(range(num_classes)) + [VOID])
    if mode.startswith("I"):
        bad = ~np.isin(values, allowed)
        if bad.any():
            raise DataError(f"{path}: mask value(s) {sorted(np.unique(values[bad]).tolist())[:10]} outside "
                            f"0..{num_classes - 1} and {VOID}")
        return values.astype(np.uint8), True
    palette = palette_array().astype(np.int64)
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    lut = {int((palette[c, 0] << 16) | (palette[c, 1] << 8) | palette[c, 2]): c for c in allowed.tolist()}
    uniq, inverse = np.unique(codes, return_inverse=True)
    unknown = [int(u) for u in uniq if int(u) not in lut]
    if unknown:
        colours = [((u >> 16) & 255, (u >> 8) & 255, u & 255) for u in unknown[:5]]
        raise DataError(f"{path}: RGB mask colour(s) {colours} are not VOC colours of classes 0..{num_classes - 1} "
                        f"or void (224, 224, 192); write a palette or greyscale PNG of class ids instead")
    mapped = np.array([lut[int(u)] for u in uniq], dtype=np.uint8)
    return mapped[inverse.reshape(codes.shape)], True


# --------------------------------------------------------------------------- scanning (no decoding)


@dataclass
class FolderScan:
    """What the folder holds, read without decoding an image: the facts the workflow needs when
    it is parsed (``data.checks``) and the plan of the view."""

    root: Path
    layout: str                              # "voc" | "plain"
    label_source: str                        # "labels.csv" | "xml" | "csv" | "mask"
    class_names: tuple[str, ...]             # background first
    splits: dict[str, list[str]]             # train_split, eval_split -> ids (one entry when equal)
    split_files: dict[str, str]              # split -> the file that lists it (VOC list, or labels.csv)
    with_mask: dict[str, set[str]]           # split -> ids that have a mask file
    labels: dict[str, list[int]] | None      # id -> class ids; None when they come from the masks
    plain: PlainFolder | None = None
    voc: VOCLayout | None = None

    def images_per_class(self, split: str) -> dict[str, int] | None:
        if self.labels is None:
            return None
        counts = {name: 0 for name in self.class_names[1:]}
        for image_id in self.splits[split]:
            for c in self.labels[image_id]:
                counts[self.class_names[c]] += 1
        return counts


def _root_of(dataset: dict) -> Path:
    if not dataset.get("root"):
        raise DataError("dataset.root must name the dataset folder when dataset.source is 'folder'")
    return Path(dataset["root"])


def scan_folder(dataset: dict) -> FolderScan:
    """Read the folder ``dataset.root`` (either layout) for the train and eval splits without
    decoding an image: layout, classes, split lists, every listed image present (one file per
    id), labels (strict; non-empty) and which images have a mask file. Raises DataError."""
    root = _root_of(dataset)
    layout = detect_layout(root)
    train, evaluation = dataset.get("train_split", "train"), dataset.get("eval_split", "val")
    split_names = list(dict.fromkeys([train, evaluation]))
    if layout == "plain":
        plain = read_plain_folder(root, dataset)
        with_mask = {s: {i for i in ids if plain.mask_path(i).is_file()} for s, ids in plain.splits.items()}
        return FolderScan(root, "plain", LABELS_FILE, plain.class_names, plain.splits,
                          {s: str(plain.labels_path) for s in plain.splits}, with_mask,
                          {im.image_id: im.labels for im in plain.images}, plain=plain)

    voc = VOCLayout.open(root, class_names=voc_class_names(root, dataset))
    files = voc.image_files()
    splits, split_files, with_mask = {}, {}, {}
    labels: dict[str, list[int]] | None = None if voc.label_source == "mask" else {}
    for split in split_names:
        list_path = voc.split_path(split)
        entries = read_split_lines(list_path)
        splits[split] = [image_id for image_id, _ in entries]
        split_files[split] = str(list_path)
        with_mask[split] = set()
        for image_id, line in entries:
            where = f"{list_path}:{line}"
            found = files.get(image_id, [])
            if not found:
                raise DataError(f"{root / 'JPEGImages' / image_id}.jpg: image listed in {where} is missing "
                                f"(looked for {', '.join(IMAGE_SUFFIXES)}, any case)")
            if len(found) > 1:
                raise DataError(f"{', '.join(map(str, found))}: {len(found)} images for id {image_id} (listed in "
                                f"{where}): keep one")
            if voc.mask_dir is not None and voc.mask_path(image_id).is_file():
                with_mask[split].add(image_id)
            elif voc.label_source == "mask":
                raise DataError(f"{voc.mask_path(image_id)}: mask is missing, and the labels of {image_id} "
                                f"(listed in {where}) come from the masks: {root} has no Annotations/ and no "
                                f"image_labels.csv")
            if labels is not None and image_id not in labels:
                ids_labels = voc.labels(image_id)
                if not ids_labels:
                    raise voc.no_label_error(image_id, where)
                labels[image_id] = ids_labels
    return FolderScan(root, "voc", voc.label_source, voc.class_names, splits, split_files, with_mask, labels,
                      voc=voc)


def watched_files(dataset: dict) -> list[str]:
    """The files of the folder ``dataset.root`` whose edits must rebuild the view (the data
    stage's inputs): ``labels.csv`` (plain), or the train and eval split lists,
    ``image_labels.csv`` and ``dataset.json`` (VOC layout). Those that exist; never raises (an
    unusable folder is the data stage's and the checks' to name)."""
    if not dataset.get("root"):
        return []
    root = Path(dataset["root"])
    names = [LABELS_FILE, "image_labels.csv", "dataset.json"] + [
        f"ImageSets/Segmentation/{dataset.get(key, default)}.txt"
        for key, default in (("train_split", "train"), ("eval_split", "val"))]
    return [str(root / n) for n in dict.fromkeys(names) if (root / n).is_file()]


def empty_classes(scan: FolderScan, split: str) -> list[str] | None:
    """Object classes without an image in ``split``; None when the labels are not known without
    decoding (they come from the masks)."""
    counts = scan.images_per_class(split)
    return None if counts is None else [name for name, n in counts.items() if n == 0]


def empty_class_message(scan: FolderScan, split: str, names: Sequence[str]) -> str:
    return (f"{scan.split_files[split]}: class(es) {', '.join(names)} have no image in the training split "
            f"{split!r}: add images of them, leave them out of dataset.classes (or dataset.json), or set "
            f"dataset.allow_empty_classes: true")


# --------------------------------------------------------------------------- the view


def _refuse_unsafe_out(root: Path, out_dir: Path) -> None:
    root_r, out_r = root.resolve(), out_dir.resolve()
    if out_r == root_r or root_r in out_r.parents or out_r in root_r.parents:
        raise DataError(f"{out_dir}: the data stage's output folder would be inside (or contain) the dataset "
                        f"folder {root}; nothing is written into the dataset: move it, or run from elsewhere")


def _validate_plain(plain: PlainFolder, scan: FolderScan, progress: bool) -> dict[str, tuple[np.ndarray, bool]]:
    """Decode every image and mask; return {id: (mask, convert)} for the masks to convert."""
    converted = {}
    ids = [i for s in scan.splits for i in scan.splits[s]]
    for image_id in progress_bar(list(dict.fromkeys(ids)), desc="check images", unit=" images", file=sys.stderr,
                                 disable=not progress):
        img_path = plain.image_path(image_id)
        try:
            hw = read_image(img_path).shape[:2]
            mpath = plain.mask_path(image_id)
            if mpath.is_file():
                mask, convert = read_user_mask(mpath, len(plain.class_names))
                if mask.shape != hw:
                    raise DataError(f"{mpath}: mask size {mask.shape} differs from image size {hw} ({img_path})")
                if convert:
                    converted[image_id] = mask
        except DataError as exc:
            raise DataError(f"{exc} (fix or replace the file, or remove line {plain.by_id[image_id].line} of "
                            f"{plain.labels_path})") from exc
    return converted


def _write_plain_view(tmp: Path, plain: PlainFolder, scan: FolderScan, converted: dict) -> None:
    (tmp / "JPEGImages").mkdir()
    masks = tmp / "SegmentationClass"
    if any(scan.with_mask.values()):
        masks.mkdir()
    for image in plain.images:
        src = (plain.root / image.relative).resolve()
        os.symlink(src, tmp / "JPEGImages" / f"{image.image_id}{src.suffix.lower() or '.jpg'}")
        if image.image_id in converted:
            write_palette_png(masks / f"{image.image_id}.png", converted[image.image_id])
        elif plain.mask_path(image.image_id).is_file():
            os.symlink(plain.mask_path(image.image_id).resolve(), masks / f"{image.image_id}.png")
    with open(tmp / "image_labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "split", *plain.class_names[1:]])
        for image in plain.images:
            present = set(image.labels)
            writer.writerow([image.image_id, image.split,
                             *(int(c in present) for c in range(1, len(plain.class_names)))])


def _write_voc_view(tmp: Path, root: Path) -> None:
    for name in VOC_LINKED:
        if (root / name).exists():
            os.symlink((root / name).resolve(), tmp / name)


def build_view(dataset: dict, out_dir: str | Path, progress: bool = True) -> dict:
    """Check the folder ``dataset.root`` in full (every image of the train and eval splits
    decoded, every mask read and sized against its image, labels strict, no class without a
    training image unless ``dataset.allow_empty_classes``) and write its VOC-layout view to
    ``out_dir`` atomically; return the manifest::

        {"source": "folder", "layout": "voc" | "plain", "root": <the folder, absolute>,
         "label_source": "labels.csv" | "xml" | "csv" | "mask", "split_from": ...,
         "class_names": [background, ...], "splits": {split: images},
         "masks": {split: images with a mask}, "images_per_class": {split: {class: images}}}

    Raises DataError naming the file (and line) at the first problem; ``out_dir`` is then left
    as it was (and absent when it was)."""
    root = _root_of(dataset)
    out_dir = Path(out_dir)
    _refuse_unsafe_out(root, out_dir)
    scan = scan_folder(dataset)
    train = dataset.get("train_split", "train")
    converted: dict = {}
    if scan.layout == "plain":
        converted = _validate_plain(scan.plain, scan, progress)
    else:
        for split in progress_bar(list(scan.splits), desc="check splits", unit=" splits", file=sys.stderr,
                                  disable=not progress):
            scan.voc.validate(split, require_masks=False)
        if scan.labels is None:  # labels from the masks, now decoded
            scan.labels = {i: scan.voc.labels(i) for ids in scan.splits.values() for i in ids}
    empty = empty_classes(scan, train)
    if empty and not dataset.get("allow_empty_classes", False):
        raise DataError(empty_class_message(scan, train, empty))
    manifest = {
        "source": "folder",
        "layout": scan.layout,
        "root": str(root.resolve()),
        "label_source": scan.label_source,
        "split_from": scan.plain.split_from if scan.plain else "split lists",
        "class_names": list(scan.class_names),
        "splits": {s: len(ids) for s, ids in scan.splits.items()},
        "masks": {s: len(scan.with_mask[s]) for s in scan.splits},
        "images_per_class": {s: scan.images_per_class(s) for s in scan.splits},
    }
    with atomic_dir(out_dir) as tmp:
        if scan.layout == "plain":
            _write_plain_view(tmp, scan.plain, scan, converted)
        else:
            _write_voc_view(tmp, root)
        lists = tmp / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True)
        for split, ids in scan.splits.items():
            (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        (tmp / "dataset.json").write_text(json.dumps(
            {"class_names": list(scan.class_names), "layout": scan.layout, "source_root": str(root.resolve())},
            indent=2) + "\n")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for split in scan.splits:
        log.info("%s: split %s ok (%d images, %d with a mask)", root, split, manifest["splits"][split],
                 manifest["masks"][split])
    return manifest

