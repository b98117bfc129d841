"""Users' own dataset folders for tests: a plain folder with ``labels.csv`` and a VOC-layout
folder, of tiny real-looking images drawn by the embedded generator
(``icd_pipeline.data.synthetic.render_image``: objects told apart by a coloured badge), so
that the pipeline can learn something from them. Deterministic in ``seed``.

    make_plain_folder(tmp / "photos", n_images=40, classes=3)          # labels only
    make_plain_folder(tmp / "photos", masks=True, split_column=True)
    make_voc_folder(tmp / "VOC", n_images=40, classes=3, masks=True)

The plain folder spreads its images over sub-folders (``field/``, ``street/day/``, the top
level) and the extensions ``.jpg .png .jpeg .webp .bmp``, as photographs arrive.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from icd_pipeline.data import synthetic
from icd_pipeline.data.voc import palette_array, write_palette_png

SUBFOLDERS = ("field", "street/day", "")
EXTENSIONS = (".jpg", ".png", ".jpeg", ".webp", ".bmp")


@dataclass
class Drawn:
    image: np.ndarray        # HxWx3 uint8
    mask: np.ndarray         # HxW uint8, the generator's class ids (1..K), 0 background, 255 void
    classes: list[int]       # the generator's class ids present


def class_names(classes: int) -> list[str]:
    """The object classes of the generator's first ``classes`` badges (``red_solid``, ...)."""
    return synthetic.class_names(classes)[1:]


def draw(n_images: int, classes: int, size: int, seed: int) -> list[Drawn]:
    params = synthetic.resolve_params({"num_classes": classes, "image_size": size})
    out = []
    for i in range(n_images):
        r = synthetic.render_image(np.random.default_rng([seed, 7, i]), params)
        out.append(Drawn(r.image, r.mask, sorted({o["class_id"] for o in r.objects})))
    return out


def _save_image(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        Image.fromarray(image).save(path, format="JPEG", quality=95, subsampling=0)
    elif suffix == ".webp":
        Image.fromarray(image).save(path, format="WEBP", lossless=True)
    else:
        Image.fromarray(image).save(path)


def _save_mask(mask: np.ndarray, path: Path, mask_format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mask_format == "palette":
        write_palette_png(path, mask)
    elif mask_format == "values":
        Image.fromarray(mask, mode="L").save(path)
    elif mask_format == "rgb":
        Image.fromarray(palette_array()[mask]).save(path)
    else:
        raise ValueError(f"mask_format {mask_format!r}: palette, values or rgb")


def is_val(i: int, n_images: int) -> bool:
    """The builders' own split: every fifth image is val."""
    return i % 5 == 4


def make_plain_folder(path: str | Path, n_images: int = 40, classes: int = 3, masks: bool | float = False,
                      split_column: bool = False, seed: int = 0, size: int = 64,
                      mask_format: str = "palette") -> Path:
    """A plain folder at ``path``: images under sub-folders with mixed extensions and
    ``labels.csv`` (``image,labels`` and, with ``split_column``, ``split``: every fifth image
    ``val``). ``masks``: True writes ``masks/<image path>.png`` for every image, a number in
    (0, 1) for that share of them (the first ones); ``mask_format``: ``palette`` (VOC palette
    PNG), ``values`` (greyscale class ids) or ``rgb`` (VOC colours). Mask values are positions
    in the sorted class names, as the pipeline numbers a plain folder's classes. Returns
    ``path``."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    names = class_names(classes)
    order = sorted(names)
    remap = np.arange(256, dtype=np.uint8)
    for c, name in enumerate(names, 1):
        remap[c] = order.index(name) + 1
    share = 1.0 if masks is True else float(masks or 0)
    rows = []
    for i, drawn in enumerate(draw(n_images, classes, size, seed)):
        rel = PurePosixPath(SUBFOLDERS[i % len(SUBFOLDERS)]) / f"photo_{i:03d}{EXTENSIONS[i % len(EXTENSIONS)]}"
        _save_image(drawn.image, root / rel)
        if i < round(share * n_images):
            _save_mask(remap[drawn.mask], root / "masks" / rel.with_suffix(".png"), mask_format)
        row = {"image": rel.as_posix(), "labels": " ".join(names[c - 1] for c in drawn.classes)}
        if split_column:
            row["split"] = "val" if is_val(i, n_images) else "train"
        rows.append(row)
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "labels"] + (["split"] if split_column else []))
        writer.writeheader()
        writer.writerows(rows)
    return root


def make_voc_folder(path: str | Path, n_images: int = 40, classes: int = 3, masks: bool | float = False,
                    seed: int = 0, size: int = 64, labels: str = "xml", image_ext: str = ".jpg") -> Path:
    """A VOC-layout folder at ``path``: ``JPEGImages/<id><image_ext>``, labels in
    ``Annotations/<id>.xml`` (``labels="xml"``) or ``image_labels.csv`` (``"csv"``),
    ``dataset.json`` with the class names, ``ImageSets/Segmentation/{train,val}.txt`` (every
    fifth image val) and, with ``masks`` (True, or a share of the images), VOC palette PNGs
    in ``SegmentationClass/``. Returns ``path``."""
    root = Path(path)
    for d in ("JPEGImages", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    names = class_names(classes)
    share = 1.0 if masks is True else float(masks or 0)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    table = []
    for i, drawn in enumerate(draw(n_images, classes, size, seed)):
        image_id = f"img_{i:04d}"
        _save_image(drawn.image, root / "JPEGImages" / f"{image_id}{image_ext}")
        if i < round(share * n_images):
            _save_mask(drawn.mask, root / "SegmentationClass" / f"{image_id}.png", "palette")
        if labels == "xml":
            objects = "".join(f"<object><name>{names[c - 1]}</name><difficult>0</difficult></object>"
                              for c in drawn.classes)
            (root / "Annotations").mkdir(exist_ok=True)
            (root / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation>\n<filename>{image_id}{image_ext}</filename>\n{objects}\n</annotation>\n")
        split = "val" if is_val(i, n_images) else "train"
        splits[split].append(image_id)
        table.append([image_id, split] + [int(c in drawn.classes) for c in range(1, classes + 1)])
    if labels == "csv":
        with open(root / "image_labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "split", *names])
            writer.writerows(table)
    elif labels != "xml":
        raise ValueError(f"labels {labels!r}: xml or csv")
    for split, ids in splits.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (root / "dataset.json").write_text(json.dumps({"class_names": ["background", *names]}) + "\n")
    return root
