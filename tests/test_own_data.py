"""A user's own dataset folder (``dataset.source: folder``): the plain folder with labels.csv
and the VOC layout, the view the data stage builds, strict labels, the parse-time checks, and
one test per bad input of issue 32, each through the data stage's entry point: the message
names the file and line, and nothing is left in the output folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icd_pipeline.config import format_resolved, load_config, resolve_layers
from icd_pipeline.data.checks import dataset_facts, mask_coverage, preflight, preflight_errors
from icd_pipeline.data.folder import build_view, detect_layout, image_id_for, read_plain_folder
from icd_pipeline.data.voc import (
    DataError, SegmentationDataset, VOCLayout, read_image, read_mask, write_palette_png,
)
from icd_pipeline.stages import validate_dataset
from own_data import class_names, draw, make_plain_folder, make_voc_folder

N = 20  # images per built folder: 16 train / 4 val


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    base = tmp_path_factory.mktemp("own_data")
    return {"plain": make_plain_folder(base / "photos", n_images=N, classes=3),
            "plain_masks": make_plain_folder(base / "photos_masks", n_images=N, classes=3, masks=True,
                                             split_column=True),
            "voc": make_voc_folder(base / "VOC", n_images=N, classes=3, masks=True),
            "voc_csv": make_voc_folder(base / "VOCcsv", n_images=N, classes=3, labels="csv", image_ext=".png")}


@pytest.fixture
def folder(clean, tmp_path, request):
    """A fresh copy of one clean folder (the test's parameter names which)."""
    root = tmp_path / "data in" / Path(clean[request.param]).name
    shutil.copytree(clean[request.param], root)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_stage(dataset: dict, out: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = validate_dataset.main(["--config-json", json.dumps({"dataset": {"source": "folder", **dataset}}),
                                "--out", str(out), "--no-progress"])
    return rc, capsys.readouterr().err


def refused(folder: Path, capsys, tmp_path, *names: str, **dataset) -> str:
    """Run the data stage on ``folder``; it must fail with a message holding each of ``names``
    and leave nothing in the output folder (created empty first, as Snakemake does). Returns
    the message."""
    out = tmp_path / "results" / "mine" / "data"
    out.mkdir(parents=True, exist_ok=True)
    rc, err = run_stage({"root": str(folder), **dataset}, out, capsys)
    assert rc == 1 and err.startswith("error:"), err
    for name in names:
        assert name in err, (name, err)
    assert list(out.iterdir()) == [] and list(out.parent.iterdir()) == [out]
    return err


def rewrite(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, (old, text[:300])
    path.write_text(text.replace(old, new, count))


# --------------------------------------------------------------------------- the plain folder


@pytest.mark.parametrize("folder", ["plain"], indirect=True)
def test_plain_folder_view_is_read_like_voc(folder, tmp_path, capsys):
    before = tree(folder)
    out = tmp_path / "results" / "photos" / "data"
    rc, err = run_stage({"root": str(folder)}, out, capsys)
    assert rc == 0, err
    assert tree(folder) == before  # nothing written into the user's folder
    manifest = json.loads((out / "manifest.json").read_text())
    names = sorted(class_names(3))
    assert manifest["layout"] == "plain" and manifest["class_names"] == ["background", *names]
    assert manifest["splits"] == {"train": 18, "val": 2} and manifest["masks"] == {"train": 0, "val": 0}
    assert manifest["split_from"] == "val_fraction" and manifest["root"] == str(folder.resolve())
    assert sum(manifest["images_per_class"]["train"].values()) >= 18

    view = VOCLayout.open(out)
    assert view.label_source == "csv" and view.mask_dir is None and view.class_names == ("background", *names)
    rows = {r.image_id: r for r in read_plain_folder(folder, {}).images}
    ids = view.ids("train") + view.ids("val")
    assert sorted(ids) == sorted(rows)
    for image_id in ids:
        # every extension and sub-folder resolves, to the user's own file
        assert view.image_path(image_id).resolve() == (folder / rows[image_id].relative).resolve()
        assert view.labels(image_id) == rows[image_id].labels
    assert {view.image_path(i).suffix for i in ids} == {".jpg", ".png", ".jpeg", ".webp", ".bmp"}
    assert "street__day__photo_001" in ids
    view.validate("train", check_masks=False)


def test_ids_are_safe_and_collisions_name_both_files(tmp_path, capsys):
    assert image_id_for("street/day/a b(1).JPG") == "street__day__a_b_1_"
    assert image_id_for(".hidden/x.png") == "_hidden__x"
    root = make_plain_folder(tmp_path / "photos", n_images=6, classes=2)
    Image.open(root / "field/photo_000.jpg").save(root / "field/photo_000.png")
    with open(root / "labels.csv", "a") as fh:
        fh.write("field/photo_000.png,red_solid\n")
    refused(root, capsys, tmp_path, f"{root / 'field/photo_000.jpg'} ({root / 'labels.csv'}:2)",
            f"{root / 'field/photo_000.png'} ({root / 'labels.csv'}:8)", "same image id 'field__photo_000'")


def test_hold_out_is_seeded_stable_and_keeps_every_class_in_training(tmp_path):
    root = make_plain_folder(tmp_path / "photos", n_images=40, classes=3)

    def held(**dataset):
        return set(read_plain_folder(root, dataset).splits["val"])

    assert len(held()) == 4 and held() == held(split_seed=0)
    assert held(split_seed=1) != held()
    assert len(held(val_fraction=0.25)) == 10
    # an added photograph moves at most one of the others
    first = held()
    shutil.copy(root / "field/photo_000.jpg", root / "extra.jpg")
    with open(root / "labels.csv", "a") as fh:
        fh.write("extra.jpg,red_solid\n")
    assert len(held() & first) >= 3
    # a class on one image only stays in training, whatever the seed
    shutil.copy(root / "field/photo_000.jpg", root / "field/rare.jpg")
    with open(root / "labels.csv", "a") as fh:
        fh.write("field/rare.jpg,unicorn\n")
    for seed in range(20):
        plain = read_plain_folder(root, {"split_seed": seed, "val_fraction": 0.5})
        assert "field__rare" in plain.splits["train"]
    # train_split = eval_split: one list of every image
    one = read_plain_folder(root, {"train_split": "all", "eval_split": "all"})
    assert list(one.splits) == ["all"] and len(one.splits["all"]) == 42


@pytest.mark.parametrize("mask_format", ["palette", "values", "rgb"])
def test_plain_masks_in_every_format_and_split_column(tmp_path, capsys, mask_format):
    root = make_plain_folder(tmp_path / "photos", n_images=10, classes=3, masks=0.6, split_column=True,
                             mask_format=mask_format)
    out = tmp_path / "data"
    rc, err = run_stage({"root": str(root)}, out, capsys)
    assert rc == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split_from"] == "split column" and manifest["splits"] == {"train": 8, "val": 2}
    assert manifest["masks"] == {"train": 5, "val": 1}
    assert mask_coverage({"root": str(root)}) == {"train": (5, 8), "val": (1, 2)}
    view = VOCLayout.open(out)
    names = class_names(3)
    order = ["background", *sorted(names)]
    drawn = draw(10, 3, 64, 0)
    for i in range(6):
        image_id = [f"field__photo_{i:03d}", f"street__day__photo_{i:03d}", f"photo_{i:03d}"][i % 3]
        mask = read_mask(view.mask_path(image_id), view.num_classes)
        expected = drawn[i].mask.copy()
        for c, name in enumerate(names, 1):
            expected[drawn[i].mask == c] = order.index(name)
        assert (mask == expected).all()
    assert not view.mask_path("photo_008").exists()
    # the view's masks serve the ground-truth dataset
    assert SegmentationDataset(view, "val")[0]["mask"].shape == (64, 64)


def test_dataset_classes_set_order_and_refuse_other_names(tmp_path, capsys):
    root = make_plain_folder(tmp_path / "photos", n_images=10, classes=2)
    names = class_names(2)  # red_solid, orange_dots: not sorted
    plain = read_plain_folder(root, {"classes": names + ["zebra"]})
    assert plain.class_names == ("background", *names, "zebra")
    line = next(i for i, text in enumerate((root / "labels.csv").read_text().splitlines(), 1)
                if "orange_dots" in text)
    refused(root, capsys, tmp_path, f"{root / 'labels.csv'}:{line}: unknown class name 'orange_dots'",
            "dataset.classes lists red_solid", classes=["red_solid"])
    assert preflight_errors({"dataset": {"root": str(root), "classes": ["red_solid"]}})[0].startswith(
        f"{root / 'labels.csv'}:{line}:")


# --------------------------------------------------------------------------- the VOC layout


@pytest.mark.parametrize("folder", ["voc_csv"], indirect=True)
def test_voc_layout_with_png_images_and_csv_labels(folder, tmp_path, capsys):
    """A .png in JPEGImages is an image, not a missing .jpg."""
    out = tmp_path / "data"
    rc, err = run_stage({"root": str(folder)}, out, capsys)
    assert rc == 0, err
    view = VOCLayout.open(out)
    assert view.label_source == "csv" and view.image_path("img_0000").name == "img_0000.png"
    assert read_image(view.image_path("img_0004")).shape == (64, 64, 3)
    assert (out / "JPEGImages").is_symlink() and (out / "ImageSets/Segmentation/val.txt").read_text().split() == \
        (folder / "ImageSets/Segmentation/val.txt").read_text().split()
    # a missing image names the extensions looked for
    (folder / "JPEGImages/img_0003.png").unlink()
    refused(folder, capsys, tmp_path, f"{folder / 'JPEGImages/img_0003'}.jpg",
            f"listed in {folder / 'ImageSets/Segmentation/train.txt'}:4", ".jpeg, .png, .bmp, .webp")


@pytest.mark.parametrize("folder", ["voc"], indirect=True)
def test_voc_layout_partial_masks_are_counted_not_refused(folder, tmp_path, capsys):
    for i in (0, 1, 4):
        (folder / f"SegmentationClass/img_{i:04d}.png").unlink()
    facts = dataset_facts({"root": str(folder)})
    assert facts.layout == "voc" and facts.label_source == "xml"
    assert facts.splits == {"train": 16, "val": 4} and facts.masks == {"train": 14, "val": 3}
    assert not facts.has_all_masks("val") and facts.images_per_class["train"]["red_solid"] > 0
    rc, err = run_stage({"root": str(folder)}, tmp_path / "data", capsys)
    assert rc == 0, err
    # a mask that is there is still checked
    write_palette_png(folder / "SegmentationClass/img_0002.png", np.zeros((9, 9), np.uint8))
    refused(folder, capsys, tmp_path, f"{folder / 'SegmentationClass/img_0002.png'}: mask size",
            f"{folder / 'ImageSets/Segmentation/train.txt'}:")


# --------------------------------------------------------------------------- bad input (issue 32)


@pytest.mark.parametrize("folder", ["voc_csv"], indirect=True)
@pytest.mark.parametrize("cell", ["1O", "1.0", "yes", "2"])
def test_csv_value_other_than_0_1_or_empty(folder, tmp_path, capsys, cell):
    """``1O`` was read as 0 (the label silently lost)."""
    csv_path = folder / "image_labels.csv"
    lines = csv_path.read_text().splitlines()
    lines[3] = lines[3][:-1] + cell  # the last class column of the third row
    csv_path.write_text("\n".join(lines) + "\n")
    refused(folder, capsys, tmp_path, f"{csv_path}:4: column 'yellow_checker'", f"value {cell!r}",
            "values are 0, 1 or empty")


@pytest.mark.parametrize("folder", ["voc_csv"], indirect=True)
def test_csv_all_values_1_0(folder, tmp_path, capsys):
    """All values ``1.0``: was 'no image-level label (empty annotation)', without the CSV."""
    csv_path = folder / "image_labels.csv"
    lines = csv_path.read_text().splitlines()
    body = [",".join(cells[:2] + ["1.0" if v == "1" else "0.0" for v in cells[2:]])
            for cells in (line.split(",") for line in lines[1:])]
    csv_path.write_text("\n".join([lines[0], *body]) + "\n")
    refused(folder, capsys, tmp_path, f"{csv_path}:2: column", "value '", "values are 0, 1 or empty")


@pytest.mark.parametrize("folder", ["voc_csv"], indirect=True)
def test_csv_unknown_column(folder, tmp_path, capsys):
    """An unknown column ``giraffe`` was ignored."""
    csv_path = folder / "image_labels.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([lines[0] + ",giraffe"] + [line + ",1" for line in lines[1:]]) + "\n")
    refused(folder, capsys, tmp_path, f"{csv_path}:1: unknown column 'giraffe'", "one per class")


@pytest.mark.parametrize("folder", ["voc_csv"], indirect=True)
def test_csv_duplicate_id_and_row_without_label(folder, tmp_path, capsys):
    csv_path = folder / "image_labels.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines + [lines[5]]) + "\n")
    refused(folder, capsys, tmp_path, f"{csv_path}:{len(lines) + 1}: id 'img_0004' appears twice (first on line 6)")
    lines[2] = "img_0001,train,0,,0"
    csv_path.write_text("\n".join(lines) + "\n")
    refused(folder, capsys, tmp_path, f"{csv_path}:3: no image-level label for img_0001",
            "every class column is 0 or empty")


@pytest.mark.parametrize("folder", ["plain"], indirect=True)
def test_labels_csv_duplicate_image(folder, tmp_path, capsys):
    csv_path = folder / "labels.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines + [lines[3]]) + "\n")
    refused(folder, capsys, tmp_path, f"{csv_path}:{len(lines) + 1}: image 'photo_002.jpeg' appears twice "
                                      f"(first on line 4)")


@pytest.mark.parametrize("folder", ["plain"], indirect=True)
def test_labels_csv_unknown_class_name(folder, tmp_path, capsys):
    csv_path = folder / "labels.csv"
    rewrite(csv_path, "field/photo_003.webp,", "field/photo_003.webp,giraffe ")
    refused(folder, capsys, tmp_path, f"{csv_path}:5: unknown class name 'giraffe'", "dataset.classes lists",
            classes=class_names(3))


@pytest.mark.parametrize("folder", ["plain"], indirect=True)
def test_labels_csv_bad_rows(folder, tmp_path, capsys):
    csv_path = folder / "labels.csv"
    original = csv_path.read_text()
    for old, new, message in [
        ("image,labels", "image,labels,giraffe", ":1: unknown column 'giraffe'"),
        ("image,labels", "path,labels", ":1: unknown column 'path'"),
        ("photo_002.jpeg,orange_dots yellow_checker", "photo_002.jpeg,", ":4: image 'photo_002.jpeg' has no label"),
        ("photo_002.jpeg,orange_dots yellow_checker", 'photo_002.jpeg,"orange_dots,red_solid"',
         ":4: class name 'orange_dots,red_solid': separate class names with spaces"),
        ("photo_002.jpeg,", "../photo_002.jpeg,", ":4: image '../photo_002.jpeg': give the path relative"),
        ("photo_002.jpeg,", "photo_002.gif,", ":4: image 'photo_002.gif' is not a jpg/jpeg/png/bmp/webp file"),
    ]:
        csv_path.write_text(original.replace(old, new, 1))
        refused(folder, capsys, tmp_path, f"{csv_path}{message}")
    lines = original.splitlines()
    split = ["train"] * len(lines)
    split[3] = "test"
    csv_path.write_text("image,labels,split\n" + "".join(f"{a},{b}\n" for a, b in zip(lines[1:], split[1:])))
    refused(folder, capsys, tmp_path, f"{csv_path}:4: split 'test': values are train or val")


@pytest.mark.parametrize("folder", ["plain"], indirect=True)
def test_labels_csv_image_listed_but_missing(folder, tmp_path, capsys):
    (folder / "street/day/photo_004.bmp").unlink()
    refused(folder, capsys, tmp_path, f"{folder / 'street/day/photo_004.bmp'}: image listed in "
                                      f"{folder / 'labels.csv'}:6 is missing")


@pytest.mark.parametrize("folder", ["plain"], indirect=True)
def test_image_without_a_row(folder, tmp_path, capsys):
    shutil.copy(folder / "photo_002.jpeg", folder / "field/stray.JPG")
    (folder / ".thumbs").mkdir()
    shutil.copy(folder / "photo_002.jpeg", folder / ".thumbs/x.jpg")  # hidden: not an image of the dataset
    refused(folder, capsys, tmp_path, f"{folder / 'labels.csv'}: 1 image(s) in {folder} have no row, so no "
                                      f"label: field/stray.JPG")
    (folder / "field/stray.JPG").unlink()
    with open(folder / "labels.csv", "a") as fh:
        fh.write(".thumbs/x.jpg,red_solid\n")
    refused(folder, capsys, tmp_path, f"{folder / '.thumbs/x.jpg'}: image listed in {folder / 'labels.csv'}:{N + 2} "
                                      f"is hidden")


@pytest.mark.parametrize("folder", ["plain"], indirect=True)
def test_truncated_image_names_file_and_row(folder, tmp_path, capsys):
    path = folder / "photo_005.jpg"
    path.write_bytes(path.read_bytes()[:200])
    refused(folder, capsys, tmp_path, f"{path}: unreadable image", f"line 7 of {folder / 'labels.csv'}")


def test_mask_with_an_unknown_colour(tmp_path, capsys):
    root = make_plain_folder(tmp_path / "photos", n_images=5, classes=2, masks=True, mask_format="rgb")
    path = root / "masks/street/day/photo_001.png"
    rgb = np.array(Image.open(path))
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(path)
    refused(root, capsys, tmp_path, f"{path}: RGB mask colour(s) [(1, 2, 3)]", "line 3 of")


@pytest.mark.parametrize("folder", ["voc"], indirect=True)
def test_xml_unknown_class_and_bad_difficult(folder, tmp_path, capsys):
    xml = folder / "Annotations/img_0002.xml"
    original = xml.read_text()
    xml.write_text(original.replace("<name>", "<name>gir", 1).replace("<object>", "\n<object>\n", 1))
    refused(folder, capsys, tmp_path, f"{xml}:5: unknown class name 'girorange_dots'", "(the classes: red_solid")
    xml.write_text(original.replace("<difficult>0</difficult>", "\n<difficult>yes</difficult>", 1))
    refused(folder, capsys, tmp_path, f"{xml}:4: <difficult> is 'yes': values are 0, 1 or empty")
    xml.write_text("<annotation>\n<object><name>red_solid</name>\n</annotation>\n")
    refused(folder, capsys, tmp_path, f"{xml}:3: malformed XML")


@pytest.mark.parametrize("folder", ["voc"], indirect=True)
def test_split_list_duplicate_id_and_missing_list(folder, tmp_path, capsys):
    val = folder / "ImageSets/Segmentation/val.txt"
    val.write_text(val.read_text() + "img_0004\n")
    refused(folder, capsys, tmp_path, f"{val}:5: id 'img_0004' is listed twice (first on line 1)")
    val.unlink()
    refused(folder, capsys, tmp_path, f"{val}: split list is missing")
    assert preflight_errors({"dataset": {"root": str(folder)}}) == [f"{val}: split list is missing"]


def test_neither_layout_names_the_folder_and_both(tmp_path, capsys):
    root = tmp_path / "photos"
    (root / "JPEG").mkdir(parents=True)
    msg = refused(root, capsys, tmp_path, f"{root}: neither JPEGImages/ (VOC layout) nor labels.csv")
    with pytest.raises(DataError, match="neither"):
        detect_layout(root)
    assert preflight_errors({"dataset": {"root": str(root)}}) == [msg[len("error: "):].strip()]
    refused(tmp_path / "nowhere", capsys, tmp_path, f"{tmp_path / 'nowhere'}: dataset folder does not exist")
    (root / "JPEGImages").mkdir()
    (root / "labels.csv").write_text("image,labels\n")
    refused(root, capsys, tmp_path, f"{root}: has both JPEGImages/ (VOC layout) and labels.csv")


@pytest.mark.parametrize("folder", ["plain_masks"], indirect=True)
def test_empty_class_is_refused_unless_allowed(folder, tmp_path, capsys):
    csv_path = folder / "labels.csv"
    lines = csv_path.read_text().splitlines()
    # the only image of class "zebra" is in val
    shutil.copy(folder / "photo_002.jpeg", folder / "zebra.jpg")
    csv_path.write_text("\n".join(lines + ["zebra.jpg,zebra,val"]) + "\n")
    refused(folder, capsys, tmp_path, f"{csv_path}: class(es) zebra have no image in the training split 'train'",
            "dataset.allow_empty_classes: true")
    config = {"dataset": {"root": str(folder)}, "icd": {"batch_size": 4}, "deeplab": {"batch_size": 4}}
    assert "class(es) zebra" in preflight_errors(config)[0]
    config["dataset"]["allow_empty_classes"] = True
    assert preflight_errors(config) == []
    rc, err = run_stage({"root": str(folder), "allow_empty_classes": True}, tmp_path / "data", capsys)
    assert rc == 0, err


@pytest.mark.parametrize("folder", ["plain_masks"], indirect=True)
def test_split_smaller_than_a_batch(folder, tmp_path):
    """Was refused only after ~100 s of superpixels and feature cache; now when the workflow
    is parsed, naming the key and both numbers."""
    config = load_config(json_text=json.dumps({
        "dataset": {"source": "folder", "root": str(folder)}, "icd": {"batch_size": 16},
        "deeplab": {"batch_size": 8}}))
    facts, errors = preflight(config)
    assert facts.splits == {"train": 16, "val": 4} and errors == []
    config["icd"]["batch_size"], config["deeplab"]["batch_size"] = 17, 32
    errors = preflight_errors(config)
    assert len(errors) == 2
    assert errors[0].startswith(f"{folder / 'labels.csv'}: the training split 'train' has 16 images, fewer than "
                                f"icd.batch_size = 17")
    assert "deeplab.batch_size = 32" in errors[1] and "at most 16" in errors[1]


# --------------------------------------------------------------------------- facts, names, safety


@pytest.mark.parametrize("folder", ["plain_masks"], indirect=True)
def test_dataset_facts_of_a_plain_folder(folder):
    facts = dataset_facts({"root": str(folder), "train_split": "train", "eval_split": "val"})
    assert facts.layout == "plain" and facts.label_source == "labels.csv"
    assert facts.class_names == ("background", *sorted(class_names(3)))
    assert facts.splits == {"train": 16, "val": 4} and facts.masks == {"train": 16, "val": 4}
    assert facts.has_all_masks("train") and facts.has_all_masks("val")
    assert set(facts.images_per_class) == {"train", "val"}
    assert sum(facts.images_per_class["val"].values()) >= 4


def test_dataset_name_defaults_to_the_folder_name(tmp_path):
    def resolve(dataset):
        config, origins = resolve_layers([("test", {"dataset": dataset})])
        return config["dataset"]["name"], origins["dataset.name"]

    assert resolve({"source": "folder", "root": "/data/My Photos/"}) == \
        ("My_Photos", "derived: the folder name of dataset.root")
    assert resolve({"source": "folder", "root": "/data/VOC2012", "name": "mine"}) == ("mine", "test")
    assert resolve({})[0] == "embedded" and resolve({"source": "voc2012"})[0] == "voc2012"
    assert resolve({"source": "folder"})[0] is None  # no root yet: the workflow refuses
    # the bring-your-own preset: the user's folder names the results
    from icd_pipeline.config import resolve_workflow_config
    config, origins = resolve_workflow_config(
        [Path(__file__).resolve().parents[1] / "workflow/presets/voc2012_sample.yaml"],
        {"dataset": {"root": str(tmp_path / "holiday.photos")}})
    assert config["dataset"]["name"] == "holiday.photos"
    assert "derived" in format_resolved(config, origins)


@pytest.mark.parametrize("folder", ["plain"], indirect=True)
def test_output_inside_the_dataset_is_refused(folder, capsys):
    out = folder / "results" / "data"
    rc, err = run_stage({"root": str(folder)}, out, capsys)
    assert rc == 1 and "nothing is written into the dataset" in err and not (folder / "results").exists()


@pytest.mark.parametrize("folder", ["plain"], indirect=True)
def test_a_failed_rebuild_keeps_the_previous_view(folder, tmp_path, capsys):
    out = tmp_path / "data"
    assert run_stage({"root": str(folder)}, out, capsys)[0] == 0
    before = sorted(os.listdir(out))
    (folder / "photo_002.jpeg").unlink()
    assert run_stage({"root": str(folder)}, out, capsys)[0] == 1
    assert sorted(os.listdir(out)) == before and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("folder", ["voc"], indirect=True)
def test_voc_classes_from_config_and_conflict_with_dataset_json(folder, tmp_path, capsys):
    (folder / "dataset.json").unlink()
    names = class_names(3)
    out = tmp_path / "data"
    rc, err = run_stage({"root": str(folder), "classes": names}, out, capsys)
    assert rc == 0, err
    assert VOCLayout.open(out).class_names == ("background", *names)
    # without dataset.json or dataset.classes the names are VOC's, which the XML does not use
    refused(folder, capsys, tmp_path, f"{folder / 'Annotations'}", "unknown class name")
    (folder / "dataset.json").write_text(json.dumps({"class_names": ["background", *names]}))
    refused(folder, capsys, tmp_path, f"{folder / 'dataset.json'}: class_names", "differ from dataset.classes",
            classes=names[::-1])
