import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icd_pipeline.data.voc import (
    VOC_CLASSES, ClassificationDataset, DataError, SegmentationDataset, TrainTransform, VOCLayout,
    parse_xml_labels, read_image, read_mask, split_view, voc_palette, write_palette_png,
)

SAMPLE = Path(os.environ.get("ICD_VOC_SAMPLE",
                             Path(__file__).resolve().parents[2] / "shared" / "data" / "voc2012-sample" / "VOC2012"))
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real VOC sample not found at {SAMPLE}")


def test_palette_matches_voc_colours():
    pal = np.asarray(voc_palette()).reshape(256, 3)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]       # aeroplane
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]  # void


def test_split_view_links_the_dataset_with_new_split_lists(tmp_path):
    root = tmp_path / "voc"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\nc\n")
    (root / "JPEGImages").mkdir()
    (root / "manifest.json").write_text("{}")
    view = split_view(root, tmp_path / "view", {"fit": ["a", "c"], "held": ["b"]})
    assert (view / "JPEGImages").is_symlink() and (view / "JPEGImages").resolve() == (root / "JPEGImages").resolve()
    assert not (view / "manifest.json").exists()
    assert sorted(p.name for p in (view / "ImageSets" / "Segmentation").iterdir()) == ["fit.txt", "held.txt"]
    assert (view / "ImageSets" / "Segmentation" / "fit.txt").read_text() == "a\nc\n"
    again = split_view(root, view, {"other": ["b"]})  # made afresh: the old lists are gone
    assert sorted(p.name for p in (again / "ImageSets" / "Segmentation").iterdir()) == ["other.txt"]
    assert (root / "ImageSets" / "Segmentation" / "train.txt").read_text() == "a\nb\nc\n"


def test_palette_png_round_trip(tmp_path):
    m = np.array([[0, 1, 20], [255, 7, 0]], np.uint8)
    write_palette_png(tmp_path / "m.png", m)
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "P"
        assert img.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 21), m)


def test_mask_value_out_of_range_names_file(tmp_path):
    write_palette_png(tmp_path / "bad.png", np.array([[0, 33]], np.uint8))
    with pytest.raises(DataError, match=r"bad.png.*33"):
        read_mask(tmp_path / "bad.png", 21)


def test_unreadable_and_truncated_images_name_file(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="junk.jpg"):
        read_image(tmp_path / "junk.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="trunc.jpg"):
        read_image(tmp_path / "trunc.jpg")


def _xml(objects):
    body = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult></object>" for n, d in objects
    )
    return f"<annotation><filename>x.jpg</filename>{body}</annotation>"


def test_xml_labels_non_difficult_with_fallback(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(_xml([("dog", False), ("person", True), ("dog", False)]))
    assert parse_xml_labels(p, VOC_CLASSES) == [12]
    p.write_text(_xml([("person", True), ("cat", True)]))
    assert parse_xml_labels(p, VOC_CLASSES) == [8, 15]
    p.write_text(_xml([]))
    with pytest.raises(DataError, match="no <object>"):
        parse_xml_labels(p, VOC_CLASSES)
    p.write_text(_xml([("unicorn", False)]))
    with pytest.raises(DataError, match="unicorn"):
        parse_xml_labels(p, VOC_CLASSES)


def test_train_transform_keeps_image_and_maps_aligned():
    rng = random.Random(0)
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:20, 30:50] = 255
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 30:50] = 1
    t = TrainTransform(crop_size=64, scales=(0.5, 1.0, 1.5))
    x, (m,) = TrainTransform(crop_size=64, scales=(1.0,), flip=False)(img, [mask], [255], rng=rng)
    assert torch.equal(x.min(0).values > 0.9, m == 1)  # no resampling: exact
    for _ in range(20):
        x, (m,) = t(img, [mask], [255], rng=rng)
        assert x.shape == (3, 64, 64) and m.shape == (64, 64)
        white = x.min(0).values > 0.5
        obj = m == 1
        # bilinear (image) and nearest (mask) resampling differ by at most a pixel at edges
        iou = (white & obj).sum() / max(int((white | obj).sum()), 1)
        assert iou > 0.75
        # padding: mean colour in the image, 255 in the mask
        pad = m == 255
        if pad.any():
            assert torch.allclose(x[:, pad][:, 0], torch.tensor([0.485, 0.456, 0.406]))


@needs_sample
def test_real_voc_sample_reads():
    layout = VOCLayout.open(SAMPLE)
    assert layout.label_source == "xml" and layout.mask_dir.name == "SegmentationClassAug"
    ids = layout.validate("val_small")
    assert len(ids) == 50
    ds = SegmentationDataset(layout, "val_small")
    item = ds[0]
    assert item["image"].shape[1:] == item["mask"].shape
    values = set(torch.unique(item["mask"]).tolist())
    assert values <= set(range(21)) | {255} and 255 in values  # official masks have the void border
    # XML labels equal the classes in official masks
    for image_id in ids[:20]:
        m = read_mask(layout.mask_path(image_id), 21)
        assert sorted(set(np.unique(m).tolist()) - {0, 255}) == layout.labels(image_id)
    cls = ClassificationDataset(layout, "train_small", transform=TrainTransform(crop_size=321))
    b = cls[3]
    assert b["image"].shape == (3, 321, 321) and b["label"].shape == (20,) and b["label"].sum() >= 1


@needs_sample
def test_real_sample_labels_from_csv_match_xml():
    xml = VOCLayout.open(SAMPLE, label_source="xml")
    csv = VOCLayout.open(SAMPLE.parent / "VOC2012", label_source="auto")
    assert csv.label_source == "xml"
    from icd_pipeline.data import voc

    table = voc._read_label_csv(SAMPLE.parent / "image_labels.csv", VOC_CLASSES)
    for image_id in xml.ids("train_small")[:30]:
        assert table[image_id] == xml.labels(image_id)


def _layout_dir(tmp_path, n=3, size=(20, 30)):
    root = tmp_path / "ds"
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    ids = [f"im{i}" for i in range(n)]
    for image_id in ids:
        Image.fromarray(np.full(size + (3,), 90, np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        m = np.zeros(size, np.uint8)
        m[5:10, 5:10] = 12
        write_palette_png(root / "SegmentationClass" / f"{image_id}.png", m)
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml([("dog", False)]))
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    return root, ids


def test_validate_names_missing_image_and_size_mismatch(tmp_path):
    root, ids = _layout_dir(tmp_path)
    layout = VOCLayout.open(root)
    assert layout.validate("train") == ids
    (root / "JPEGImages" / "im1.jpg").unlink()
    with pytest.raises(DataError, match=r"im1.jpg.*missing"):
        layout.validate("train")
    Image.fromarray(np.zeros((21, 30, 3), np.uint8)).save(root / "JPEGImages" / "im1.jpg")
    with pytest.raises(DataError, match=r"im1.png.*size"):
        layout.validate("train")


def test_empty_split_and_missing_split_are_errors(tmp_path):
    root, _ = _layout_dir(tmp_path)
    (root / "ImageSets/Segmentation/empty.txt").write_text("\n")
    layout = VOCLayout.open(root)
    with pytest.raises(DataError, match="empty"):
        layout.ids("empty")
    with pytest.raises(DataError, match="nosuch.txt"):
        layout.ids("nosuch")


def test_segmentation_dataset_with_pseudo_mask_dir(tmp_path):
    root, ids = _layout_dir(tmp_path)
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    for image_id in ids:
        write_palette_png(pseudo / f"{image_id}.png", np.full((20, 30), 255, np.uint8))
    ds = SegmentationDataset(VOCLayout.open(root), "train", mask_dir=pseudo,
                             transform=TrainTransform(crop_size=32, scales=(1.0,)))
    item = ds[0]
    assert item["mask"].shape == (32, 32) and (item["mask"] == 255).all()
