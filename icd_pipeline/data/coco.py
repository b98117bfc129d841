"""MS COCO 2014 instance annotations -> one VOC-layout folder for image-label WSSS.

``prepare_coco`` builds, atomically (the folder appears complete or not at all)::

    out/JPEGImages/<id>.jpg              hard links into the extracted train2014/, val2014/
                                         (copies where linking fails); <id> is the file stem,
                                         e.g. COCO_train2014_000000000009
    out/SegmentationClass/<id>.png       semantic palette mask (rules below)
    out/image_labels.csv                 id,split,<80 class columns> with 0/1 (VOCLayout's
                                         csv labels: image-level labels from the annotations)
    out/dataset.json                     class_names (background + the 80 categories), their
                                         COCO category ids, source coco2014
    out/ImageSets/Segmentation/train.txt       train2014 images with at least one annotation
                                               (or a seeded random subset of them)
    out/ImageSets/Segmentation/val.txt         the same for val2014
    out/ImageSets/Segmentation/train_empty.txt train2014 images without any annotation, listed
    out/ImageSets/Segmentation/val_empty.txt   apart (their masks are all background)
    out/manifest.json                    written last

so every later stage reads it like VOC (``VOCLayout.open``: class names from dataset.json,
labels from image_labels.csv, masks from SegmentationClass/).

Masks (81 labels; ``semantic_mask``):

- background 0; category k-th in ascending COCO category id -> label k (1..80: person 1,
  bicycle 2, ..., toothbrush 80), the order of the annotation file's ``categories``;
- crowd regions (``iscrowd: 1``) are 255 (void), except where a non-crowd instance covers
  the pixel: that instance's label wins;
- overlapping non-crowd instances: the **smaller instance wins** (instances are painted from
  the largest area to the smallest, ties by annotation id, the larger id on top): small
  objects usually lie in front of large ones (a cup on a table, a person on a bed);
- polygons with fewer than 3 points are dropped (no area; pycocotools would read 4 numbers
  as a box); polygons and RLE (compressed or not) are rasterised by ``pycocotools.mask``.

Image-level labels: every category with at least one annotation in the image, crowd
annotations included (a crowd of people is people). Other conversions differ: ReCAM's
``annToMask.py`` leaves crowd annotations out (they become background) and paints in
annotation order (the last one wins); its masks differ from these on crowd and overlap
pixels only.

Memory: COCO's annotation JSON must be loaded whole (``json.load``; instances_train2014.json
is 332 MB on disk and a few GB as Python objects), once per split. Past that, images are
converted one by one (by workers in bounded chunks) and the label rows are streamed to the
CSV, so memory does not grow with the number of images beyond the JSON and the id lists.

Entry point: ``python -m icd_pipeline.stages.prepare_coco --config-json JSON --downloads DIR
--out results/coco2014/data [--workers N]``.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from icd_pipeline.misc.progress import progress as progress_bar

from icd_pipeline.data.prepare import check_counts, link_or_copy
from icd_pipeline.data.voc import VOID, DataError, image_size, write_palette_png
from icd_pipeline.misc.io import atomic_dir
from icd_pipeline.misc.runtime import get_logger

log = get_logger("icd_pipeline.data.coco")

# The 80 COCO detection categories in ascending category id (1..90 with gaps): label 1..80.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"),
    (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"),
    (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"),
    (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"),
    (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"),
    (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"),
    (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
    (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
COCO_CLASSES: tuple[str, ...] = ("background",) + tuple(n for _, n in COCO_CATEGORIES)

# Image counts of the real COCO 2014 (dataset.expected_counts: null): images in each
# annotation file, and those with at least one annotation (the train / val lists WSSS papers
# use: 82,081 / 40,137) or none (listed apart).
COCO2014_COUNTS = {"train2014": 82783, "val2014": 40504, "train": 82081, "val": 40137,
                   "train_empty": 702, "val_empty": 367}

SPLITS = (("train", "train2014"), ("val", "val2014"))  # (list name, COCO image folder)


# --------------------------------------------------------------------------- pure conversion


def category_labels(categories: Sequence[dict], where: str) -> tuple[dict[int, int], list[str], list[int]]:
    """COCO ``categories`` -> ({category id: label 1..K}, class names with background first,
    category ids in label order). Labels follow ascending category id."""
    if not categories:
        raise DataError(f"{where}: 'categories' is empty")
    try:
        pairs = sorted((int(c["id"]), str(c["name"])) for c in categories)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: every category needs an integer 'id' and a 'name' ({exc})") from exc
    ids = [i for i, _ in pairs]
    if len(set(ids)) != len(ids):
        raise DataError(f"{where}: duplicate category ids")
    if len(pairs) >= VOID:
        raise DataError(f"{where}: {len(pairs)} categories; at most {VOID - 1} fit in a mask")
    label_of = {cid: k + 1 for k, cid in enumerate(ids)}
    return label_of, ["background"] + [n for _, n in pairs], ids


def annotation_rle(ann: dict, height: int, width: int, where: str) -> dict | None:
    """One annotation's segmentation as a pycocotools RLE (polygons merged); None when it
    has no area (only degenerate polygons)."""
    from pycocotools import mask as mask_utils

    segm = ann.get("segmentation")
    ann_where = f"{where}: annotation {ann.get('id', '?')}"
    if isinstance(segm, list):
        polys = []
        for poly in segm:
            if not isinstance(poly, list) or len(poly) % 2:
                raise DataError(f"{ann_where}: a polygon must be a flat list of x, y pairs")
            if len(poly) >= 6:  # fewer than 3 points: no area
                polys.append([float(v) for v in poly])
        if not polys:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if [int(v) for v in segm["size"]] != [height, width]:
            raise DataError(f"{ann_where}: RLE size {segm['size']} differs from the image's "
                            f"{[height, width]}")
        counts = segm["counts"]
        if isinstance(counts, list):  # uncompressed RLE (crowd regions)
            return mask_utils.frPyObjects(segm, height, width)
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        return {"size": [height, width], "counts": counts}
    raise DataError(f"{ann_where}: segmentation must be polygons or an RLE dict")


def semantic_mask(anns: Sequence[dict], height: int, width: int, label_of: dict[int, int],
                  where: str = "annotations") -> tuple[np.ndarray, list[int]]:
    """The semantic label map (uint8, HxW) and the image-level labels (sorted 1-based) of one
    image's annotations, by the rules in the module docstring."""
    from pycocotools import mask as mask_utils

    mask = np.zeros((height, width), np.uint8)
    labels: set[int] = set()
    crowd: list[dict] = []
    things: list[tuple[int, int, int, dict]] = []  # (area, annotation id, label, rle)
    for pos, ann in enumerate(anns):
        try:
            label = label_of[int(ann["category_id"])]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: annotation {ann.get('id', '?')}: unknown category_id "
                            f"{ann.get('category_id')!r}") from None
        labels.add(label)
        rle = annotation_rle(ann, height, width, where)
        if rle is None:
            continue
        if ann.get("iscrowd", 0):
            crowd.append(rle)
        else:
            things.append((int(mask_utils.area(rle)), int(ann.get("id", pos)), label, rle))
    for rle in crowd:
        mask[mask_utils.decode(rle).astype(bool)] = VOID
    things.sort(key=lambda t: (-t[0], t[1]))  # largest first: smaller ones painted on top
    for _, _, label, rle in things:
        mask[mask_utils.decode(rle).astype(bool)] = label
    return mask, sorted(labels)


def select_subset(ids: Sequence[str], size: int | None, seed: int) -> list[str]:
    """``size`` ids drawn without replacement from ``ids`` (sorted first, so the draw does not
    depend on the input order) with ``random.Random(seed)``; all of them when ``size`` is
    None. Returned sorted."""
    ordered = sorted(ids)
    if size is None:
        return ordered
    if size > len(ordered):
        raise DataError(f"subset of {size} images asked, only {len(ordered)} available")
    return sorted(random.Random(seed).sample(ordered, size))


# --------------------------------------------------------------------------- annotation files


@dataclass
class SplitIndex:
    """One annotation file, indexed: image records by id and their annotations."""

    images: dict[str, dict]            # id (file stem) -> COCO image record
    anns: dict[int, list[dict]]        # COCO image id -> its annotations (file order)
    categories: list[dict]

    def annotated(self) -> list[str]:
        return sorted(i for i, rec in self.images.items() if self.anns.get(rec["id"]))

    def empty(self) -> list[str]:
        return sorted(i for i, rec in self.images.items() if not self.anns.get(rec["id"]))


def load_split(path: str | Path) -> SplitIndex:
    """Read one ``instances_*.json`` (whole: JSON cannot be streamed with the standard
    library) and index it; the error names the file and the bad record."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file is missing")
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed JSON ({exc})") from exc
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise DataError(f"{path}: expected a COCO instances file with 'images', 'annotations' "
                        "and 'categories'")
    images: dict[str, dict] = {}
    known: set[int] = set()
    for rec in data["images"]:
        try:
            name, cid, h, w = str(rec["file_name"]), int(rec["id"]), int(rec["height"]), int(rec["width"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: image record {rec!r:.200} needs file_name, id, height, width") from exc
        stem, dot, ext = name.rpartition(".")
        if not dot or ext.lower() not in ("jpg", "jpeg") or "/" in name or "\\" in name:
            raise DataError(f"{path}: image {cid}: file_name {name!r} is not a plain .jpg name")
        if h < 1 or w < 1:
            raise DataError(f"{path}: image {cid}: size {h}x{w}")
        if stem in images or cid in known:
            raise DataError(f"{path}: image {name!r} (id {cid}) is listed twice")
        images[stem] = rec
        known.add(cid)
    anns: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        try:
            image_id = int(ann["image_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: annotation {ann.get('id', '?')} has no integer image_id") from exc
        if image_id not in known:
            raise DataError(f"{path}: annotation {ann.get('id', '?')} refers to unknown image {image_id}")
        anns.setdefault(image_id, []).append(ann)
    return SplitIndex(images=images, anns=anns, categories=list(data["categories"]))


# --------------------------------------------------------------------------- conversion jobs

_WORKER: dict = {}


def _init_worker(label_of: dict[int, int], out_root: str) -> None:
    _WORKER["label_of"] = label_of
    _WORKER["out_root"] = Path(out_root)


def _convert_chunk(chunk: list[tuple]) -> list[tuple[str, list[int], bool]]:
    """Convert a few images: link the JPEG, write the mask; (id, labels, linked) each."""
    label_of, out_root = _WORKER["label_of"], _WORKER["out_root"]
    results = []
    for image_id, src, height, width, anns, where in chunk:
        src = Path(src)
        if not src.is_file():
            raise DataError(f"{src}: image of {where} is missing")
        hw = image_size(src)
        if hw != (height, width):
            raise DataError(f"{src}: image size {hw} differs from {where}'s {height}x{width}")
        mask, labels = semantic_mask(anns, height, width, label_of, f"{where} ({image_id})")
        linked = link_or_copy(src, out_root / "JPEGImages" / f"{image_id}.jpg")
        write_palette_png(out_root / "SegmentationClass" / f"{image_id}.png", mask)
        results.append((image_id, labels, linked))
    return results


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ordered_results(chunks: Iterable[list], workers: int, init_args: tuple,
                     fn: Callable = _convert_chunk) -> Iterator[list]:
    """``fn`` over ``chunks`` in order; with several workers, at most ``4 * workers`` chunks
    are in flight, so memory stays flat however many images there are."""
    if workers <= 1:
        _init_worker(*init_args)
        for chunk in chunks:
            yield fn(chunk)
        return
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=init_args)
    try:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(fn, chunk))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- the folder


def prepare_coco(images_roots: dict[str, str | Path], annotations_dir: str | Path, out_dir: str | Path,
                 train_size: int | None = None, eval_size: int | None = None, subset_seed: int = 0,
                 expected_counts: dict[str, int] | None = None, workers: int = 1,
                 progress: bool = True, chunk_size: int = 16) -> dict:
    """Build the VOC-layout folder ``out_dir`` from extracted COCO 2014; return the manifest.

    ``images_roots``: {"train2014": folder holding train2014/, "val2014": ...};
    ``annotations_dir``: the folder holding instances_{train,val}2014.json. ``train_size`` /
    ``eval_size``: a seeded random subset of the annotated train / val images (None: all).
    ``expected_counts``: checked against the counts in ``COCO2014_COUNTS``'s keys before any
    image is converted (None or {}: no check)."""
    annotations_dir, out_dir = Path(annotations_dir), Path(out_dir)
    sizes = {"train": train_size, "val": eval_size}
    indexes: dict[str, SplitIndex] = {}
    class_names: list[str] | None = None
    cat_ids: list[int] | None = None
    label_of: dict[int, int] = {}
    counts: dict[str, int] = {}
    lists: dict[str, list[str]] = {}
    for name, folder in SPLITS:
        img_dir = Path(images_roots[folder]) / folder
        if not img_dir.is_dir():
            raise DataError(f"{img_dir}: missing (is {images_roots[folder]} an extracted {folder}.zip?)")
        ann_path = annotations_dir / f"instances_{folder}.json"
        log.info("loading %s (the whole JSON: a few GB of memory for train2014)", ann_path)
        index = load_split(ann_path)
        split_labels, split_names, split_ids = category_labels(index.categories, str(ann_path))
        if class_names is None:
            label_of, class_names, cat_ids = split_labels, split_names, split_ids
        elif (split_names, split_ids) != (class_names, cat_ids):
            raise DataError(f"{ann_path}: categories differ from those of instances_train2014.json")
        annotated, empty = index.annotated(), index.empty()
        counts.update({folder: len(index.images), name: len(annotated), f"{name}_empty": len(empty)})
        try:
            lists[name] = select_subset(annotated, sizes[name], subset_seed)
        except DataError as exc:
            key = "train_size" if name == "train" else "eval_size"
            raise DataError(f"dataset.coco.{key}: {exc} in {ann_path}") from exc
        lists[f"{name}_empty"] = empty
        indexes[name] = index
    # both files are read before any image is converted, so a wrong file or count fails in
    # seconds, not after an hour of train2014
    log.info("image counts: %s", counts)
    check_counts(counts, expected_counts)
    overlap = set(indexes["train"].images) & set(indexes["val"].images)
    if overlap:
        raise DataError(f"{len(overlap)} image id(s) in both train2014 and val2014, e.g. {sorted(overlap)[:3]}")

    linked = copied = 0
    split_sizes = {k: len(v) for k, v in lists.items()}
    with atomic_dir(out_dir) as tmp:
        for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / d).mkdir(parents=True)
        for list_name, ids in lists.items():
            (tmp / "ImageSets" / "Segmentation" / f"{list_name}.txt").write_text("".join(f"{i}\n" for i in ids))
        with open(tmp / "image_labels.csv", "w", newline="") as fh, \
                progress_bar(total=sum(split_sizes.values()), desc="prepare coco2014", unit=" images",
                     file=sys.stderr, disable=not progress) as bar:
            writer = csv.writer(fh)
            writer.writerow(["id", "split"] + class_names[1:])
            for name, folder in SPLITS:
                index = indexes[name]
                img_dir = Path(images_roots[folder]) / folder
                where = str(annotations_dir / f"instances_{folder}.json")

                def tasks(index=index, img_dir=img_dir, where=where, name=name):
                    for list_name in (name, f"{name}_empty"):
                        for image_id in lists[list_name]:
                            rec = index.images[image_id]
                            yield (image_id, str(img_dir / rec["file_name"]), int(rec["height"]),
                                   int(rec["width"]), index.anns.get(rec["id"], []), where)

                for results in _ordered_results(_chunks(tasks(), chunk_size), workers,
                                                 (label_of, str(tmp))):
                    for image_id, labels, was_linked in results:
                        onehot = np.zeros(len(class_names) - 1, np.int64)
                        onehot[[c - 1 for c in labels]] = 1
                        writer.writerow([image_id, name] + onehot.tolist())
                        linked += was_linked
                        copied += not was_linked
                    bar.update(len(results))
                indexes[name] = None  # release train2014's annotations before val2014's images
        manifest = {
            "source": "coco2014",
            "root": str(out_dir),
            "class_names": class_names,
            "splits": split_sizes,
            "coco": {"image_counts": counts, "train_size": train_size, "eval_size": eval_size,
                     "subset_seed": subset_seed, "category_ids": cat_ids},
        }
        (tmp / "dataset.json").write_text(json.dumps(
            {"source": "coco2014", "class_names": class_names, "category_ids": cat_ids}, indent=2) + "\n")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("%s: %s images (%d hard-linked, %d copied)", out_dir, split_sizes, linked, copied)
    return manifest


def extracted_coco_roots(downloads: Path) -> tuple[dict[str, Path], Path]:
    """The image roots and the annotation folder the download stage recorded in
    ``downloads/extracted.json``."""
    record_path = downloads / "extracted.json"
    if not record_path.is_file():
        raise DataError(f"{record_path}: missing; run `python -m icd_pipeline.stages.download` first")
    try:
        record = json.loads(record_path.read_text())
        images = {"train2014": downloads / record["coco_train2014"]["root"],
                  "val2014": downloads / record["coco_val2014"]["root"]}
        return images, downloads / record["coco_annotations"]["root"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{record_path}: expected coco_train2014, coco_val2014 and "
                        f"coco_annotations roots ({exc})") from exc
