"""PASCAL VOC layout: class names, palette, split lists, labels, masks and torch Datasets.

One reader serves real VOC 2012, the embedded (synthetic) dataset, COCO and the view the data
stage builds of a user's own folder (``data.folder``)::

    root/JPEGImages/<id>.jpg             or .jpeg .png .bmp .webp (any case)
    root/SegmentationClassAug/<id>.png   (preferred when present)
    root/SegmentationClass/<id>.png
    root/Annotations/<id>.xml            (image-level labels), or root/image_labels.csv
    root/ImageSets/Segmentation/<split>.txt
    root/dataset.json                    (optional: class names; VOC's 20 classes otherwise)

Image-level labels come from ``Annotations/`` when it exists, else ``image_labels.csv``, else
the masks. They are read strictly: an unknown class name or column, a CSV value other than
0, 1 or empty, a duplicate id is a DataError naming ``FILE:LINE`` and the value.

Class ids follow VOC: 0 is background, 1..K are object classes, 255 is void. Image-level
labels are K-dim multi-hot vectors over the object classes (index c-1 for class id c).
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from xml.parsers import expat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane", "bicycle", "bird", "boat", "bottle",
    "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOID = 255
# ImageNet mean in [0, 1]: images are padded with it so that padding is ~0 after the
# backbone's normalisation (the authors pad with their mean, 127, for the same reason).
PAD_RGB = (0.485, 0.456, 0.406)
PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
# image files read everywhere (JPEGImages/, a plain folder, predict's folder), lower case
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LABEL_VALUES_HINT = "values are 0, 1 or empty"


class DataError(ValueError):
    """Bad dataset input; the message names the file and the problem."""


def voc_palette(num_entries: int = 256) -> list[int]:
    """The standard VOC colour map (bit-interleaved), flattened RGB, 256 entries."""
    palette = []
    for i in range(num_entries):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.extend((r, g, b))
    return palette


_PALETTE = voc_palette()


def palette_array() -> np.ndarray:
    return np.asarray(_PALETTE, dtype=np.uint8).reshape(256, 3)


def write_palette_png(path: str | Path, mask: np.ndarray) -> None:
    """Write a label map (uint8, values 0..K or 255) as an 8-bit palette PNG."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: mask must be 2-D, got shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.min() < 0 or mask.max() > 255:
            raise ValueError(f"{path}: mask values out of 0..255")
        mask = mask.astype(np.uint8)
    img = Image.fromarray(mask, mode="P")
    img.putpalette(_PALETTE)
    img.save(path, optimize=False)


def read_mask(path: str | Path, num_classes: int | None = None) -> np.ndarray:
    """Read a palette (or greyscale) PNG as a uint8 label map; validate values if asked.

    ``num_classes`` counts background, so valid values are 0..num_classes-1 and 255.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mask file is missing")
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DataError(f"{path}: mask must be a palette or greyscale PNG, got mode {img.mode}")
            mask = np.array(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: unreadable mask ({exc})") from exc
    if num_classes is not None:
        bad = (mask >= num_classes) & (mask != VOID)
        if bad.any():
            values = sorted(set(np.unique(mask[bad]).tolist()))
            raise DataError(
                f"{path}: mask value(s) {values} outside 0..{num_classes - 1} and {VOID}"
            )
    return mask


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as an RGB uint8 HxWx3 array; a truncated or unreadable file is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file is missing")
    try:
        with Image.open(path) as img:
            img.load()
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from exc


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) read from the header only."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from exc


def read_split_lines(path: str | Path) -> list[tuple[str, int]]:
    """(id, line number) per non-blank line (the first word: VOC's main lists add a flag). A
    missing or empty list, or an id listed twice, is an error naming the file (and lines)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split list is missing")
    entries, seen = [], {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        image_id = line.split()[0]
        if image_id in seen:
            raise DataError(f"{path}:{number}: id {image_id!r} is listed twice (first on line {seen[image_id]})")
        seen[image_id] = number
        entries.append((image_id, number))
    if not entries:
        raise DataError(f"{path}: split list is empty")
    return entries


def read_split(path: str | Path) -> list[str]:
    """One id per line; blank lines ignored. An empty or missing list, or a duplicate id, is
    an error."""
    return [image_id for image_id, _ in read_split_lines(path)]


def split_view(data_root: str | Path, view: str | Path, splits: dict[str, Sequence[str]]) -> Path:
    """A VOC-layout folder ``view`` made afresh: a symbolic link to every entry of
    ``data_root`` but its split lists and manifest, and the split lists ``splits`` (name ->
    image ids). Benchmarks train and score on subsets this way without touching the dataset."""
    data_root, view = Path(data_root), Path(view)
    if view.exists():
        shutil.rmtree(view)
    lists = view / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for entry in data_root.iterdir():
        if entry.name not in ("ImageSets", "manifest.json"):
            os.symlink(entry.resolve(), view / entry.name)
    for name, ids in splits.items():
        (lists / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return view


def _xml_objects(path: Path) -> list[dict]:
    """The ``<object>`` elements of a VOC annotation: {"line", "name": (text, line) or None,
    "difficult": (text, line) or None}, with only the object's own children (a ``<part>``'s
    ``<name>`` is not the object's). expat, for the line numbers ElementTree drops."""
    parser = expat.ParserCreate()
    stack: list[str] = []
    objects: list[dict] = []
    text: list[str] = []
    start_line = [0]

    def start(tag, attrs):
        stack.append(tag)
        text.clear()
        start_line[0] = parser.CurrentLineNumber
        if tag == "object":
            objects.append({"line": parser.CurrentLineNumber, "name": None, "difficult": None})

    def end(tag):
        if tag in ("name", "difficult") and len(stack) >= 2 and stack[-2] == "object":
            objects[-1][tag] = ("".join(text).strip(), start_line[0])
        stack.pop()
        text.clear()

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text.append
    try:
        parser.Parse(path.read_bytes(), True)
    except expat.ExpatError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed XML ({expat.ErrorString(exc.code)})") from exc
    return objects


def parse_xml_labels(path: str | Path, class_names: Sequence[str]) -> list[int]:
    """Class ids (1-based) of the objects in a VOC XML annotation, sorted and unique.

    Non-difficult objects only, falling back to the difficult ones when an image has no
    other (as the ICD authors' loader does). An unknown class name, a ``<difficult>`` other
    than 0, 1 or empty, an ``<object>`` without ``<name>`` is an error naming ``FILE:LINE``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file is missing")
    index = {name: i for i, name in enumerate(class_names)}
    easy, difficult = set(), set()
    for obj in _xml_objects(path):
        if obj["name"] is None or not obj["name"][0]:
            raise DataError(f"{path}:{obj['line']}: <object> without <name>")
        name, line = obj["name"]
        if name not in index or index[name] == 0:
            raise DataError(f"{path}:{line}: unknown class name {name!r} (the classes: "
                            f"{', '.join(class_names[1:])})")
        flag = obj["difficult"][0] if obj["difficult"] is not None else ""
        if flag not in ("", "0", "1"):
            raise DataError(f"{path}:{obj['difficult'][1]}: <difficult> is {flag!r}: {LABEL_VALUES_HINT}")
        (difficult if flag == "1" else easy).add(index[name])
    labels = easy or difficult
    if not labels:
        raise DataError(f"{path}: annotation has no <object>: no image-level label can be derived")
    return sorted(labels)


def labels_from_mask(mask: np.ndarray, num_classes: int) -> list[int]:
    """Class ids (1-based) present in a label map (background and void left out)."""
    values = np.unique(mask)
    return [int(v) for v in values if 0 < v < num_classes]


def multi_hot(class_ids: Sequence[int], num_fg: int) -> np.ndarray:
    vec = np.zeros(num_fg, dtype=np.float32)
    for c in class_ids:
        vec[c - 1] = 1.0
    return vec


def read_class_names(root: str | Path) -> tuple[str, ...]:
    """``root/dataset.json``'s ``class_names`` (background first, unique), else VOC's."""
    meta = Path(root) / "dataset.json"
    if not meta.is_file():
        return VOC_CLASSES
    try:
        names = json.loads(meta.read_text())["class_names"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{meta}: expected a JSON object with 'class_names' ({exc})") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{meta}: class_names must be a list of names")
    if not names or names[0] != "background":
        raise DataError(f"{meta}: class_names must start with 'background'")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{meta}: class name(s) {twice} listed twice")
    return tuple(names)


def _suffixes_text() -> str:
    return ", ".join(IMAGE_SUFFIXES)


@dataclass
class VOCLayout:
    """A dataset folder in VOC layout. ``mask_dir`` and ``label_source`` are resolved once."""

    root: Path
    class_names: tuple[str, ...] = VOC_CLASSES
    mask_dir: Path | None = None
    label_source: str = "xml"  # "xml" | "csv" | "mask"
    _csv_labels: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _csv_lines: dict[str, int] = field(default_factory=dict, repr=False)
    _image_files: dict[str, list[Path]] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, root: str | Path, label_source: str = "auto",
             class_names: Sequence[str] | None = None) -> "VOCLayout":
        """``class_names`` (background first) overrides ``dataset.json``."""
        root = Path(root)
        if not (root / "JPEGImages").is_dir():
            raise DataError(f"{root}: not a VOC-layout folder (no JPEGImages/)")
        class_names = read_class_names(root) if class_names is None else tuple(class_names)
        mask_dir = None
        for name in ("SegmentationClassAug", "SegmentationClass"):
            if (root / name).is_dir():
                mask_dir = root / name
                break
        layout = cls(root=root, class_names=class_names, mask_dir=mask_dir)
        if label_source == "auto":
            if (root / "Annotations").is_dir():
                label_source = "xml"
            elif layout.csv_path.is_file():
                label_source = "csv"
            elif mask_dir is not None:
                label_source = "mask"
            else:
                raise DataError(
                    f"{root}: no Annotations/, image_labels.csv or masks: image labels cannot be derived"
                )
        if label_source == "csv":
            layout._csv_labels = _read_label_csv(layout.csv_path, class_names, lines=layout._csv_lines)
        layout.label_source = label_source
        return layout

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return len(self.class_names)

    @property
    def num_fg(self) -> int:
        return len(self.class_names) - 1

    @property
    def csv_path(self) -> Path:
        return self.root / "image_labels.csv"

    def split_path(self, split: str) -> Path:
        return self.root / "ImageSets" / "Segmentation" / f"{split}.txt"

    def ids(self, split: str) -> list[str]:
        return read_split(self.split_path(split))

    def image_files(self) -> dict[str, list[Path]]:
        """id -> its image files in JPEGImages/ (any of IMAGE_SUFFIXES, any case; more than one
        is an ambiguity :meth:`validate` refuses). One listing, kept."""
        if self._image_files is None:
            folder = self.root / "JPEGImages"
            index: dict[str, list[Path]] = {}
            with os.scandir(folder) as entries:
                for entry in entries:
                    stem, suffix = os.path.splitext(entry.name)
                    if suffix.lower() in IMAGE_SUFFIXES and not entry.name.startswith("."):
                        index.setdefault(stem, []).append(folder / entry.name)
            for paths in index.values():
                paths.sort()
            self._image_files = index
        return self._image_files

    def image_path(self, image_id: str) -> Path:
        """``JPEGImages/<id>.jpg``, else the one file of ``<id>`` with another image extension."""
        jpg = self.root / "JPEGImages" / f"{image_id}.jpg"
        if jpg.is_file():
            return jpg
        found = self.image_files().get(image_id)
        if not found:
            raise DataError(f"{jpg}: image is missing (looked for {_suffixes_text()}, any case)")
        return found[0]

    def mask_path(self, image_id: str) -> Path:
        if self.mask_dir is None:
            raise DataError(f"{self.root}: no SegmentationClass(Aug)/ folder with masks")
        return self.mask_dir / f"{image_id}.png"

    def has_mask(self, image_id: str) -> bool:
        """Whether the image has a ground-truth mask (a user's dataset may have none, or some)."""
        return self.mask_dir is not None and (self.mask_dir / f"{image_id}.png").is_file()

    def ids_with_masks(self, ids: Sequence[str]) -> list[str]:
        """The ids of ``ids`` that have a ground-truth mask, in order: what can be scored."""
        return [i for i in ids if self.has_mask(i)]

    def labels(self, image_id: str) -> list[int]:
        """1-based class ids present in the image."""
        if self.label_source == "xml":
            return parse_xml_labels(self.root / "Annotations" / f"{image_id}.xml", self.class_names)
        if self.label_source == "csv":
            if image_id not in self._csv_labels:
                raise DataError(f"{self.csv_path}: no row for id {image_id}")
            return self._csv_labels[image_id]
        return labels_from_mask(read_mask(self.mask_path(image_id), self.num_classes), self.num_classes)

    def label_origin(self, image_id: str) -> str:
        """Where the labels of ``image_id`` are read (a file, with its line for the CSV)."""
        if self.label_source == "xml":
            return str(self.root / "Annotations" / f"{image_id}.xml")
        if self.label_source == "csv":
            return f"{self.csv_path}:{self._csv_lines[image_id]}" if image_id in self._csv_lines \
                else str(self.csv_path)
        return (f"{self.mask_path(image_id)} (labels come from the masks: {self.root} has no Annotations/ "
                f"and no image_labels.csv)")

    def validate(self, split: str, check_masks: bool = True, check_labels: bool = True,
                 decode_images: bool = True, require_masks: bool = True) -> list[str]:
        """Check every listed id up front; raise DataError naming the first bad file. With
        ``decode_images`` every image is decoded in full, so a truncated JPEG fails here and
        not hours into training (about 5 ms per VOC image). ``require_masks`` False: an id
        without a mask file passes (its mask, where there is one, is still checked)."""
        entries = read_split_lines(self.split_path(split))
        for image_id, line in entries:
            where = f"{self.split_path(split)}:{line}"
            try:
                self._validate_one(where, image_id, check_masks, check_labels, decode_images, require_masks)
            except DataError as exc:
                raise DataError(f"{exc} (fix or replace the file, or remove {image_id} from {where})") from exc
        return [image_id for image_id, _ in entries]

    def _validate_one(self, where: str, image_id: str, check_masks: bool, check_labels: bool,
                      decode_images: bool, require_masks: bool) -> None:
        found = self.image_files().get(image_id, [])
        if not found:
            raise DataError(f"{self.root / 'JPEGImages' / image_id}.jpg: image listed in {where} is missing "
                            f"(looked for {_suffixes_text()}, any case)")
        if len(found) > 1:
            raise DataError(f"{', '.join(map(str, found))}: {len(found)} images for id {image_id} "
                            f"(listed in {where}): keep one")
        img = found[0]
        img_hw = read_image(img).shape[:2] if decode_images else None
        if check_masks and self.mask_dir is not None:
            mpath = self.mask_path(image_id)
            if mpath.is_file() or require_masks or self.label_source == "mask":
                mask_hw = read_mask(mpath, self.num_classes).shape
                img_hw = img_hw or image_size(img)
                if mask_hw != img_hw:
                    raise DataError(f"{mpath}: mask size {mask_hw} differs from image size {img_hw} ({img})")
        if check_labels and not self.labels(image_id):
            raise self.no_label_error(image_id, where)

    def no_label_error(self, image_id: str, where: str) -> DataError:
        """The error for an image without a label: where its labels were looked for, and why."""
        what = ("the mask holds no object class" if self.label_source == "mask"
                else "every class column is 0 or empty" if self.label_source == "csv" else "no <object>")
        return DataError(f"{self.label_origin(image_id)}: no image-level label for {image_id} ({what}; listed "
                         f"in {where}); an image needs at least one class")


def _read_label_csv(path: Path, class_names: Sequence[str], lines: dict[str, int] | None = None
                    ) -> dict[str, list[int]]:
    """``id[,split],<one column per class>`` with values 1 (present), 0 or empty (absent): the
    format of the real sample and of COCO's prepared folder. Strict: a column that is not id,
    split or a class, a missing class column, another value (``1.0``, ``1O``, ``yes``), an
    empty or duplicate id, a row of the wrong length are errors naming ``FILE:LINE``.
    ``lines``, when given, receives each id's line number."""
    path = Path(path)
    fg = list(class_names[1:])
    labels: dict[str, list[int]] = {}
    first: dict[str, int] = {} if lines is None else lines
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise DataError(f"{path}: empty file: expected a header id,split,{','.join(fg[:3])},...")
            for col, name in enumerate(header):
                if name in header[:col]:
                    raise DataError(f"{path}:1: column {name!r} appears twice")
                if name not in ("id", "split") and name not in fg:
                    raise DataError(f"{path}:1: unknown column {name!r}: the columns are id, split (optional) "
                                    f"and one per class ({', '.join(fg)})")
            missing = [c for c in fg if c not in header]
            if "id" not in header or missing:
                raise DataError(f"{path}:1: needs columns 'id' and one per class; missing "
                                f"{(['id'] if 'id' not in header else []) + missing}")
            id_col = header.index("id")
            class_cols = [(header.index(name), c) for c, name in enumerate(class_names) if c > 0]
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}:{line}: {len(row)} cells, the header has {len(header)}")
                image_id = row[id_col].strip()
                if not image_id:
                    raise DataError(f"{path}:{line}: the id is empty")
                if image_id in labels:
                    raise DataError(f"{path}:{line}: id {image_id!r} appears twice (first on line {first[image_id]})")
                present = []
                for col, c in class_cols:
                    value = row[col].strip()
                    if value == "1":
                        present.append(c)
                    elif value not in ("", "0"):
                        raise DataError(f"{path}:{line}: column {header[col]!r} (id {image_id}): value "
                                        f"{row[col]!r}: {LABEL_VALUES_HINT}")
                labels[image_id] = present
                first[image_id] = line
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: unreadable CSV ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc})") from exc
    return labels


# --------------------------------------------------------------------------- transforms


def _resize(arr: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    h, w = hw
    if arr.dtype == np.uint8:
        img = Image.fromarray(arr)
        return np.asarray(img.resize((w, h), Image.NEAREST if nearest else Image.BILINEAR))
    if not nearest:
        raise ValueError("bilinear resize is only for uint8 images")
    # integer maps (superpixel ids can exceed 255): nearest by index arithmetic
    ys = np.minimum((np.arange(h) + 0.5) * arr.shape[0] / h, arr.shape[0] - 1).astype(np.int64)
    xs = np.minimum((np.arange(w) + 0.5) * arr.shape[1] / w, arr.shape[1] - 1).astype(np.int64)
    return arr[ys[:, None], xs[None, :]]


@dataclass
class TrainTransform:
    """The paper's augmentation: random scale from ``scales``, horizontal flip, pad
    bottom/right to ``crop_size``, random crop. Applied jointly to the image and any label
    maps (nearest resampling, padded with their own fill value)."""

    crop_size: int
    scales: Sequence[float] = PAPER_SCALES
    flip: bool = True
    base_size: int | None = None  # resize the long side to this before scaling (None: keep)

    def __call__(self, image: np.ndarray, maps: Sequence[np.ndarray] = (), fills: Sequence[int] = (),
                 rng: random.Random | None = None):
        rng = rng or random
        h, w = image.shape[:2]
        base = 1.0 if self.base_size is None else self.base_size / max(h, w)
        s = base * rng.choice(list(self.scales))
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        image = _resize(image, (nh, nw), nearest=False)
        maps = [_resize(m, (nh, nw), nearest=True) for m in maps]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            maps = [m[:, ::-1] for m in maps]
        c = self.crop_size
        ph, pw = max(c - nh, 0), max(c - nw, 0)
        img = image.astype(np.float32) / 255.0
        if ph or pw:
            padded = np.empty((nh + ph, nw + pw, 3), np.float32)
            padded[:] = PAD_RGB
            padded[:nh, :nw] = img
            img = padded
            new_maps = []
            for m, fill in zip(maps, fills):
                pm = np.full((nh + ph, nw + pw), fill, dtype=m.dtype)
                pm[:nh, :nw] = m
                new_maps.append(pm)
            maps = new_maps
        top = rng.randint(0, img.shape[0] - c)
        left = rng.randint(0, img.shape[1] - c)
        img = img[top:top + c, left:left + c]
        maps = [m[top:top + c, left:left + c] for m in maps]
        return (torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                [torch.from_numpy(np.ascontiguousarray(m)) for m in maps])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """Plain inference transform: uint8 HxWx3 -> float 3xHxW in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


# --------------------------------------------------------------------------- datasets


class ClassificationDataset(torch.utils.data.Dataset):
    """(image, multi-hot label) for ICD training; optionally with superpixel maps.

    ``superpixels``: a callable id -> int map of the image's size (HxW), transformed with
    the image; the padded area gets its own id (max + 1), as the authors' loader does.
    ``transform``: a TrainTransform, or None for the plain inference transform.
    """

    def __init__(self, layout: VOCLayout, split: str, transform: TrainTransform | None = None,
                 superpixels: Callable[[str], np.ndarray] | None = None, seed: int = 0):
        self.layout = layout
        self.split = split
        self.ids = layout.ids(split)
        self.labels = {i: multi_hot(layout.labels(i), layout.num_fg) for i in self.ids}
        self.transform = transform
        self.superpixels = superpixels
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        image = read_image(self.layout.image_path(image_id))
        out = {"id": image_id, "label": torch.from_numpy(self.labels[image_id]),
               "size": torch.tensor(image.shape[:2])}
        if self.transform is None:
            out["image"] = to_tensor(image)
            if self.superpixels is not None:
                out["superpixels"] = torch.from_numpy(self.superpixels(image_id).astype(np.int64))
            return out
        # per-sample RNG from (seed, epoch, index): reproducible whatever the worker count
        rng = random.Random(hash((self.seed, self.epoch, index)) & 0xFFFFFFFF)
        maps, fills = [], []
        if self.superpixels is not None:
            sp = self.superpixels(image_id).astype(np.int32)
            maps.append(sp)
            fills.append(int(sp.max()) + 1)
        img, maps = self.transform(image, maps, fills, rng=rng)
        out["image"] = img
        if maps:
            out["superpixels"] = maps[0].long()
        return out


class SegmentationDataset(torch.utils.data.Dataset):
    """(image, mask) for DeepLab training/evaluation. ``mask_dir`` overrides the ground
    truth folder (pseudo-masks); masks are validated against the class count."""

    def __init__(self, layout: VOCLayout, split: str, transform: TrainTransform | None = None,
                 mask_dir: str | Path | None = None, seed: int = 0):
        self.layout = layout
        self.split = split
        self.ids = layout.ids(split)
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def mask_path(self, image_id: str) -> Path:
        if self.mask_dir is not None:
            return self.mask_dir / f"{image_id}.png"
        return self.layout.mask_path(image_id)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        image = read_image(self.layout.image_path(image_id))
        mpath = self.mask_path(image_id)
        mask = read_mask(mpath, self.layout.num_classes)
        if mask.shape != image.shape[:2]:
            raise DataError(f"{mpath}: mask size {mask.shape} differs from image size {image.shape[:2]}")
        out = {"id": image_id, "size": torch.tensor(image.shape[:2])}
        if self.transform is None:
            out["image"] = to_tensor(image)
            out["mask"] = torch.from_numpy(mask.astype(np.int64))
            return out
        rng = random.Random(hash((self.seed, self.epoch, index)) & 0xFFFFFFFF)
        img, (m,) = self.transform(image, [mask], [VOID], rng=rng)
        out["image"] = img
        out["mask"] = m.long()
        return out
