"""Segment a folder of new images with a trained DeepLab (the ``predict`` target).

    icd-pipeline predict --model results/<dataset>/<experiment>/deeplab/pseudo/model.pt \
        --images DIR --out DIR [--config config.yaml] [--overwrite] [--strict]

(the Snakemake rule runs it as ``python -m icd_pipeline.stages.predict``).

Every image under ``--images`` (recursively; ``.jpg .jpeg .png .bmp .webp``, any case; hidden
files and folders and the output folder itself are left out) goes through the same inference
as the evaluation (``inference.segment``: the test scales, flips and optional dense CRF of
the config's ``deeplab`` section; without ``--config`` / ``--config-json`` those the model was
trained with, stored in its checkpoint). Written under ``--out``:

``masks/<relative path>.png``
    palette PNG label map (0 background, 1..K the classes, VOC colours), the input's size.
``overlays/<relative path>.jpg``
    the image with every non-background pixel blended with its class colour
    (``predict.overlay_alpha``) and a legend of the classes present (with their pixel share).
``predictions.csv``
    one row per segmented image: ``image`` (relative path), ``width``, ``height``,
    ``share_<class>`` (fraction of the pixels) for every class, ``seconds`` (decode, its
    share of the batch's forward passes, CRF and writing).
``skipped.csv``
    ``image``, ``reason``: files that are not images or cannot be decoded.
``predict.json``
    the model (path and SHA-256) and settings the outputs were made with.
``summary.json``
    the run's counts (images found, segmented, done before, skipped) and images/s (the
    Snakemake rule's output: Snakemake deletes a rule's outputs before running it, and the
    CSV must survive to let a rerun skip the images already done).

Inputs as a user has them: the EXIF orientation is applied (masks and overlays are upright,
in the displayed size); greyscale, palette, CMYK and 16-bit images become 8-bit RGB (16-bit
values scaled by 1/257); transparent pixels (RGBA, LA, palette transparency) are composed
over white. **Large images**: when the longer side exceeds ``predict.max_side`` (default
1024), the image is downscaled (bilinear, antialiased) so that its longer side is
``max_side``, segmented at that size, and the label map is upsampled back to the input size
(nearest neighbour). The network's memory then depends on ``max_side``, not on the
photograph; the photograph itself costs a few buffers of its size (decoded pixels, 72 MB for
6000x4000, the label map and the overlay). Images whose network
input has the same size are batched together (``predict.batch_size``); the batches follow
one another in order of size, so a batch never holds padded images and every result equals
the one-image result.

Robustness: a file that cannot be decoded (corrupt, truncated, not an image) is listed in
``skipped.csv`` with the reason and the run goes on; the exit status is non-zero for skipped
files only with ``--strict`` (or ``predict.strict``). A folder without any image is an error.
Each output file is written atomically; a rerun skips the images whose mask, overlay and CSV
row exist (``--overwrite`` redoes them), so an interrupted run continues where it stopped
(CSV rows are journalled as they are made). Outputs of another model or other settings
(``predict.json`` differs) are redone. What the run holds does not grow with the number of
images: they are read one batch at a time and rows go to the journal on disk; the entry
point also fixes glibc's mmap threshold (``fix_mmap_threshold``), since activations whose
size changes with every image size otherwise fragment the heap (measured before the fix,
random-head embedded DeepLab on VOC photos: max RSS 1.85 GB on 50 images, 2.63 GB on 200).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from ..config import ConfigError, add_config_args, config_from_args
from ..data.voc import IMAGE_SUFFIXES, DataError, palette_array, voc_palette
from ..inference import TestSettings, load_for_inference, segment
from ..misc.commands import command_name
from ..misc.io import atomic_path, sha256_file, write_csv_rows
from ..misc.progress import progress as progress_bar
from ..misc.runtime import get_logger, select_device, set_threads
from ..models.deeplab import CheckpointError

LOG = get_logger("predict")
TEST_KEYS = ("test_scales", "test_flip", "test_crf", "test_crf_params")
JOURNAL = ".predictions.partial.csv"


class PredictError(DataError):
    """Unusable input for predict (names the folder or file)."""


# --------------------------------------------------------------------------- finding and reading images


def find_files(images_dir: str | Path, exclude: str | Path | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files under ``images_dir`` (sorted, recursive) and the other files with a reason.
    Hidden files and folders and anything under ``exclude`` (the output folder) are left out."""
    root = Path(images_dir)
    if not root.is_dir():
        raise PredictError(f"{root}: image folder is missing (predict --images / predict.images)")
    excluded = Path(exclude).resolve() if exclude is not None else None
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (excluded is None or (here / d).resolve() != excluded))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(path)
            else:
                others.append((path, f"not a JPEG/PNG/BMP/WebP file (extension {path.suffix or 'none'!r})"))
    images.sort()
    others.sort()
    return images, others


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block: show the image as stored
        return 1


def probe(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the header only."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if _orientation(img) in (5, 6, 7, 8):
                w, h = h, w
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PredictError(f"{path}: not a readable image ({exc})") from exc
    if w < 1 or h < 1:
        raise PredictError(f"{path}: empty image ({w}x{h})")
    return w, h


def to_rgb(img: Image.Image) -> np.ndarray:
    """An upright 8-bit RGB array from any PIL mode: greyscale, palette, CMYK, 16/32-bit
    integer and float greyscale, with alpha composed over white."""
    if _orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.int64)
        # 16-bit data (PNG 16-bit greyscale) -> 8 bit; "I" holding 8-bit values stays as it is
        if img.mode != "I" or arr.max(initial=0) > 255:
            arr = arr // 257
        return np.repeat(np.clip(arr, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if np.nanmax(arr, initial=0.0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img)  # writable (np.asarray of a PIL image is read-only; pydensecrf needs writable)


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an upright RGB uint8 array (H, W, 3); ``PredictError`` with the
    reason when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PredictError(f"{path}: cannot decode image ({exc})") from exc


def network_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) the network sees: the input size, or downscaled so that the longer
    side is ``max_side`` (aspect ratio kept)."""
    longer = max(width, height)
    if longer <= max_side:
        return width, height
    f = max_side / longer
    return max(1, int(round(width * f))), max(1, int(round(height * f)))


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.array(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0))


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (labels.shape[1], labels.shape[0]) == tuple(size):
        return labels
    return np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))


# --------------------------------------------------------------------------- outputs


def palette_png(labels: np.ndarray) -> Image.Image:
    """A label map as an 8-bit palette image in the VOC colours (as ``voc.write_palette_png``)."""
    img = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette())
    return img


def class_shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of the pixels of each class 0..num_classes-1."""
    counts = np.asarray(Image.fromarray(labels).histogram()[:num_classes], dtype=np.int64)
    return counts / max(1, labels.size)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def overlay_image(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.5) -> Image.Image:
    """The image with non-background pixels blended with their class colour, and a legend
    box (colour, class name, pixel share) of the classes present in the top-left corner."""
    palette = palette_array()
    base = Image.fromarray(image)
    colours = palette_png(labels).convert("RGB")  # PIL's palette lookup: ~10x numpy fancy indexing
    weight = np.uint8(int(round(255 * alpha)))
    out = Image.composite(colours, base, Image.fromarray((labels != 0).view(np.uint8) * weight))
    del colours
    shares = class_shares(labels, len(class_names))
    present = [c for c in np.argsort(-shares, kind="stable") if shares[c] > 0]
    h, w = labels.shape
    size = int(max(10, min(48, min(h, w) // 16)))
    font = _font(size)
    draw = ImageDraw.Draw(out)
    pad, line = max(2, size // 4), size + max(2, size // 4)
    texts = [f"{class_names[c]} {100 * shares[c]:.1f}%" for c in present]
    text_w = max(int(draw.textlength(t, font=font)) for t in texts) if texts else 0
    box = (0, 0, min(w - 1, 3 * pad + size + text_w), min(h - 1, 2 * pad + line * len(texts)))
    draw.rectangle(box, fill=(255, 255, 255))
    for i, (c, text) in enumerate(zip(present, texts)):
        y = pad + i * line
        draw.rectangle((pad, y, pad + size, y + size), fill=tuple(int(v) for v in palette[c]), outline=(0, 0, 0))
        draw.text((2 * pad + size, y), text, fill=(0, 0, 0), font=font)
    return out


def output_names(images: Sequence[Path], root: Path) -> dict[Path, Path]:
    """Relative output stem per image: the relative path without its extension, or with it
    when two images differ only in extension (a.jpg and a.png -> a.jpg, a.png)."""
    rel = {p: p.relative_to(root) for p in images}
    stems: dict[Path, int] = {}
    for r in rel.values():
        stems[r.with_suffix("")] = stems.get(r.with_suffix(""), 0) + 1
    return {p: (r.with_suffix("") if stems[r.with_suffix("")] == 1 else r) for p, r in rel.items()}


def _read_rows(path: Path, columns: Sequence[str]) -> dict[str, dict]:
    """Rows of a predictions CSV or journal keyed by image; rows cut short by a kill are dropped."""
    rows: dict[str, dict] = {}
    if not path.is_file():
        return rows
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != list(columns):
            return rows
        for row in reader:
            if None in row or any(row.get(c) in (None, "") for c in columns):
                continue
            rows[row["image"]] = row
    return rows


def _fingerprint(model_path: Path, settings: TestSettings, max_side: int, alpha: float,
                 class_names: Sequence[str]) -> dict:
    return {"model": str(model_path), "model_sha256": sha256_file(model_path), "class_names": list(class_names),
            **settings.as_dict(), "max_side": int(max_side), "overlay_alpha": float(alpha)}


@dataclass
class _Item:
    path: Path
    name: str             # relative output stem, posix
    size: tuple[int, int]  # (width, height) as displayed
    net: tuple[int, int]   # (width, height) the network sees


def _batches(items: Sequence[_Item], batch_size: int) -> Iterator[list[_Item]]:
    """Items of one network size together, ``batch_size`` at most, sizes in sorted order."""
    by_size: dict[tuple[int, int], list[_Item]] = {}
    for it in items:
        by_size.setdefault(it.net, []).append(it)
    for net in sorted(by_size):
        group = by_size[net]
        for i in range(0, len(group), batch_size):
            yield group[i:i + batch_size]


# --------------------------------------------------------------------------- the run


def predict_folder(config: dict, model_path: str | Path, images_dir: str | Path, out_dir: str | Path,
                   overwrite: bool = False, progress: bool = True, model=None, meta: dict | None = None) -> dict:
    """Segment every image under ``images_dir`` into ``out_dir`` (see the module docstring).
    Returns counts and timings: images found/segmented/done before/skipped, seconds, images/s."""
    section = config["predict"]
    model_path, images_dir, out_dir = Path(model_path), Path(images_dir), Path(out_dir)
    paths, skipped = find_files(images_dir, exclude=out_dir)
    skipped = [(p, reason) for p, reason in skipped]
    if not paths:
        raise PredictError(f"{images_dir}: no images (JPEG/PNG/BMP/WebP) found in the folder or below it"
                           + (f" ({len(skipped)} other files)" if skipped else ""))
    set_threads()
    device = select_device(config.get("device", "auto"))
    if model is None:
        model, meta = load_for_inference(model_path, device)
    class_names = list(meta["class_names"])
    settings = TestSettings.from_config(config, meta)
    max_side, alpha = int(section["max_side"]), float(section["overlay_alpha"])
    batch_size = int(section["batch_size"])
    columns = ["image", "width", "height"] + [f"share_{n}" for n in class_names] + ["seconds"]

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, journal_path, info_path = out_dir / "predictions.csv", out_dir / JOURNAL, out_dir / "predict.json"
    fingerprint = _fingerprint(model_path, settings, max_side, alpha, class_names)
    previous = json.loads(info_path.read_text()) if info_path.is_file() else None
    # the model's path may differ between runs (relative, moved): its content decides
    same = previous is not None and {k: v for k, v in previous.items() if k != "model"} \
        == {k: v for k, v in fingerprint.items() if k != "model"}
    if overwrite or not same:
        if previous is not None and not same and not overwrite:
            LOG.info("%s: outputs were made with another model or other settings; redoing every image", out_dir)
        csv_path.unlink(missing_ok=True)
        journal_path.unlink(missing_ok=True)
        with atomic_path(info_path) as tmp:
            tmp.write_text(json.dumps(fingerprint, indent=1) + "\n")
    known = set(_read_rows(csv_path, columns)) | set(_read_rows(journal_path, columns))

    names = output_names(paths, images_dir)
    todo: list[_Item] = []
    done = 0
    for path in paths:
        name = names[path].as_posix()
        mask_path, overlay_path = out_dir / "masks" / f"{name}.png", out_dir / "overlays" / f"{name}.jpg"
        if name in known and mask_path.is_file() and overlay_path.is_file():
            done += 1
            continue
        try:
            size = probe(path)
        except PredictError as exc:
            skipped.append((path, str(exc).split(": ", 1)[-1]))
            continue
        todo.append(_Item(path, name, size, network_size(*size, max_side)))
    LOG.info("%d images under %s: %d to segment, %d done before, %d other files; model %s, scales %s x input %.2f, "
             "flip %s, CRF %s, max side %d, on %s", len(paths), images_dir, len(todo), done,
             len(skipped), model_path, list(settings.scales), settings.input_scale, settings.flip,
             "on" if settings.crf else "off", max_side, device)

    start, cpu_start = time.time(), time.process_time()
    segmented = 0
    new_journal = not journal_path.is_file()
    with open(journal_path, "a", newline="") as journal:
        writer = csv.writer(journal)
        if new_journal:
            writer.writerow(columns)
            journal.flush()
        bar = progress_bar(total=len(todo), desc="predict", unit="img", disable=not progress, file=sys.stderr)
        for batch in _batches(todo, batch_size):
            loaded, seconds = [], []
            for it in batch:
                t0 = time.perf_counter()
                try:
                    image = load_image(it.path)
                except PredictError as exc:
                    skipped.append((it.path, str(exc).split(": ", 1)[-1]))
                    bar.update(1)
                    continue
                if (image.shape[1], image.shape[0]) != it.size:  # header and pixels disagree (odd EXIF)
                    it.size = (image.shape[1], image.shape[0])
                    it.net = network_size(*it.size, max_side)
                loaded.append((it, image))
                seconds.append(time.perf_counter() - t0)
            # a corrected size can leave a batch with two network sizes: run each size apart
            for net in sorted({it.net for it, _ in loaded}):
                group = [(k, it, image) for k, (it, image) in enumerate(loaded) if it.net == net]
                t0 = time.perf_counter()
                labels_net = segment(model, [resize_rgb(image, net) for _, _, image in group], settings, device)
                share_time = (time.perf_counter() - t0) / len(group)
                for (k, it, image), labels in zip(group, labels_net):
                    t1 = time.perf_counter()
                    labels = resize_labels(labels, it.size)
                    mask_path = out_dir / "masks" / f"{it.name}.png"
                    overlay_path = out_dir / "overlays" / f"{it.name}.jpg"
                    mask_path.parent.mkdir(parents=True, exist_ok=True)
                    overlay_path.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(mask_path) as tmp:
                        palette_png(labels).save(tmp, format="PNG")
                    with atomic_path(overlay_path) as tmp:
                        overlay_image(image, labels, class_names, alpha).save(tmp, format="JPEG", quality=90)
                    shares = class_shares(labels, len(class_names))
                    sec = seconds[k] + share_time + time.perf_counter() - t1
                    writer.writerow([it.name, it.size[0], it.size[1], *(f"{s:.6f}" for s in shares), f"{sec:.4f}"])
                    journal.flush()
                    segmented += 1
                    bar.update(1)
            del loaded
        bar.close()
    elapsed, cpu_seconds = time.time() - start, time.process_time() - cpu_start

    rows = _read_rows(csv_path, columns)
    rows.update(_read_rows(journal_path, columns))
    present = [names[p].as_posix() for p in paths]
    write_csv_rows(csv_path, [rows[n] for n in present if n in rows], columns)
    journal_path.unlink(missing_ok=True)
    skipped_rows = [{"image": (p.relative_to(images_dir) if p.is_relative_to(images_dir) else p).as_posix(),
                     "reason": reason} for p, reason in sorted(skipped)]
    write_csv_rows(out_dir / "skipped.csv", skipped_rows, ["image", "reason"])
    result = {"images": len(paths), "segmented": segmented, "done_before": done, "skipped": len(skipped_rows),
              "seconds": elapsed, "images_per_s": segmented / elapsed if elapsed > 0 and segmented else 0.0,
              "cpu_seconds": cpu_seconds}
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    LOG.info("segmented %d images in %.1f s (%.2f images/s), %d done before, %d skipped%s", segmented, elapsed,
             result["images_per_s"], done, len(skipped_rows),
             f" (see {out_dir / 'skipped.csv'})" if skipped_rows else "")
    for row in skipped_rows:
        LOG.warning("skipped %s: %s", row["image"], row["reason"])
    return result


def fix_mmap_threshold(threshold: int = 4 << 20) -> bool:
    """glibc only: serve allocations above ``threshold`` bytes by mmap, returned to the system
    when freed. glibc's default threshold grows with each large block freed, after which the
    network's activations, whose sizes change with every image size, come from the heap and
    fragment it: peak memory then grows with the number of distinct image sizes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.predict"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--model", required=True, help="model.pt written by train_deeplab")
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder (masks/, overlays/, predictions.csv, skipped.csv)")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a file is skipped (or predict.strict)")
    parser.add_argument("--batch-size", type=int, default=None, help="override predict.batch_size")
    parser.add_argument("--max-side", type=int, default=None, help="override predict.max_side")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = parser.parse_args(argv)
    fix_mmap_threshold()
    try:
        config = config_from_args(args)
        if args.batch_size is not None:
            if args.batch_size < 1:
                raise ConfigError("--batch-size must be >= 1")
            config["predict"]["batch_size"] = args.batch_size
        if args.max_side is not None:
            if args.max_side < 16:
                raise ConfigError("--max-side must be >= 16")
            config["predict"]["max_side"] = args.max_side
        device = select_device(config.get("device", "auto"))
        model, meta = load_for_inference(args.model, device)
        if not args.config and not args.config_json:
            # no config given: test the way the model's own config said
            trained = meta.get("config", {})
            config["deeplab"].update({k: trained[k] for k in TEST_KEYS if k in trained})
        result = predict_folder(config, args.model, args.images, args.out, overwrite=args.overwrite,
                                progress=not args.no_progress, model=model, meta=meta)
    except (DataError, ConfigError, CheckpointError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    if result["skipped"] and (args.strict or config["predict"]["strict"]):
        print(f"error: {result['skipped']} file(s) skipped (listed in {Path(args.out) / 'skipped.csv'}); "
              f"--strict / predict.strict", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
