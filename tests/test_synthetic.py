import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icd_pipeline.config import ConfigError
from icd_pipeline.data import synthetic
from icd_pipeline.stages.make_embedded_dataset import main
from icd_pipeline.data.synthetic import (
    badge_specs, class_names, generate, object_size_px, render_image, resolve_params,
)
from icd_pipeline.data.voc import VOID, VOCLayout, labels_from_mask, read_mask

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_classes": 6, "image_size": 64, "num_train": 14, "num_val": 6}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _renders(n: int = 60, seed: int = 3, **overrides):
    params = resolve_params({**SMALL, **overrides})
    return params, [render_image(np.random.default_rng([seed, 0, i]), params) for i in range(n)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "data"
    manifest = generate(out, SMALL, seed=0, progress=False)
    return out, manifest


# --------------------------------------------------------------------------- files


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path, dataset):
    out, _ = dataset
    again = generate(tmp_path / "again", SMALL, seed=0, progress=False)
    a, b = _files(out), _files(tmp_path / "again")
    assert a.keys() == b.keys()
    for name in a:
        if name != "manifest.json":  # names its own root
            assert a[name] == b[name], name
    assert {k: v for k, v in again.items() if k != "root"} == {
        k: v for k, v in json.loads(a["manifest.json"]).items() if k != "root"}
    generate(tmp_path / "other", SMALL, seed=1, progress=False)
    c = _files(tmp_path / "other")
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert sum(a[k] != c[k] for k in jpgs) == len(jpgs)


def test_output_is_a_valid_voc_layout(dataset):
    out, _ = dataset
    layout = VOCLayout.open(out)
    assert layout.label_source == "xml"
    assert layout.class_names == tuple(class_names(6))
    assert layout.mask_dir == out / "SegmentationClass"
    assert layout.validate("train") == [f"train_{i:05d}" for i in range(14)]
    assert layout.validate("val") == [f"val_{i:05d}" for i in range(6)]
    with Image.open(layout.image_path("train_00000")) as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 64)
    with Image.open(layout.mask_path("train_00000")) as img:
        assert img.mode == "P"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["seed"] == 0 and meta["generator"]["image_size"] == 64
    assert meta["generator"] == resolve_params(SMALL)


def test_xml_labels_equal_mask_classes_and_values_are_valid(dataset):
    out, _ = dataset
    layout = VOCLayout.open(out)
    for split in ("train", "val"):
        for image_id in layout.ids(split):
            mask = read_mask(layout.mask_path(image_id))
            assert set(np.unique(mask).tolist()) <= set(range(7)) | {VOID}
            labels = layout.labels(image_id)
            assert labels == labels_from_mask(mask, 7), image_id
            assert 1 <= len(labels) <= 3
            root = ET.parse(out / "Annotations" / f"{image_id}.xml").getroot()
            assert root.findtext("filename") == f"{image_id}.jpg"
            assert root.findtext("size/width") == "64" and root.findtext("size/height") == "64"
            objs = root.findall("object")
            assert len(objs) == len(labels)  # one instance per class
            for obj in objs:
                assert obj.findtext("difficult") == "0"
                box = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                assert 1 <= box[0] <= box[2] <= 64 and 1 <= box[1] <= box[3] <= 64
                cls = layout.class_names.index(obj.findtext("name"))
                ys, xs = np.nonzero(mask == cls)
                assert box[0] <= xs.min() + 1 and xs.max() + 1 <= box[2]
                assert box[1] <= ys.min() + 1 and ys.max() + 1 <= box[3]


def test_manifest_is_correct_and_written_last(dataset):
    out, manifest = dataset
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest == {
        "source": "synthetic", "root": str(out), "class_names": class_names(6),
        "splits": {"train": 14, "val": 6},
    }
    newest = max(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert (out / "manifest.json").stat().st_mtime_ns >= newest


def test_interrupted_generation_leaves_no_output(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.render_image

    def failing(rng, params):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(rng, params)

    monkeypatch.setattr(synthetic, "render_image", failing)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "data", SMALL, seed=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_rerun_replaces_existing_folder(tmp_path):
    out = tmp_path / "data"
    generate(out, {**SMALL, "num_train": 4, "num_val": 2}, seed=0, progress=False)
    (out / "stale.txt").write_text("x")
    generate(out, {**SMALL, "num_train": 3, "num_val": 2}, seed=0, progress=False)
    assert not (out / "stale.txt").exists()
    assert VOCLayout.open(out).ids("train") == ["train_00000", "train_00001", "train_00002"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


# --------------------------------------------------------------------------- content


def test_object_counts_classes_and_coverage():
    params, renders = _renders(90)
    counts = np.array([len(r.objects) for r in renders])
    assert counts.min() >= 1 and counts.max() <= 3
    assert set(counts.tolist()) == {1, 2, 3}
    assert 0.2 <= (counts == 1).mean() <= 0.5  # about a third single-object
    for r in renders:
        classes = [o["class_id"] for o in r.objects]
        assert len(set(classes)) == len(classes) and all(1 <= c <= 6 for c in classes)
        assert sorted(classes) == labels_from_mask(r.mask, 7)
    coverage = np.mean([(r.instances > 0).mean() for r in renders])
    assert 0.22 <= coverage <= 0.36, coverage


def test_max_objects_and_few_classes_are_respected():
    _, renders = _renders(20, max_objects=1)
    assert all(len(r.objects) == 1 for r in renders)
    _, renders = _renders(30, num_classes=2)
    assert all(1 <= len(r.objects) <= 2 for r in renders)


@pytest.mark.parametrize("width", [1, 2])
def test_void_band_along_every_boundary(width):
    _, renders = _renders(40, boundary_width=width)
    for r in renders:
        inst = r.instances
        # object pixels with a 4-neighbour of another instance or background (border excluded)
        edge = np.zeros(inst.shape, bool)
        edge[1:] |= inst[1:] != inst[:-1]
        edge[:-1] |= inst[:-1] != inst[1:]
        edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
        edge[:, :-1] |= inst[:, :-1] != inst[:, 1:]
        edge &= inst > 0
        assert edge.any()
        assert (r.mask[edge] == VOID).all()
        assert (r.mask[inst == 0] == 0).all()  # the band lies on the object side
        void = r.mask == VOID
        assert void.sum() <= 2 * width * 4 * edge.sum()  # thin
        for j, obj in enumerate(r.objects):
            assert (r.mask[inst == j + 1] == obj["class_id"]).any()  # not all void
            assert (r.mask[inst == j + 1] != obj["class_id"]).sum() == (void & (inst == j + 1)).sum()


def test_touching_objects_are_separated_by_void():
    _, renders = _renders(60)
    touching = 0
    for r in renders:
        inst = r.instances
        a, b = inst[:, 1:], inst[:, :-1]
        between = (a > 0) & (b > 0) & (a != b)
        if between.any():
            touching += 1
            assert (r.mask[:, 1:][between] == VOID).all() and (r.mask[:, :-1][between] == VOID).all()
    assert touching > 0


def test_badge_lies_inside_its_object_and_has_the_requested_size():
    params, renders = _renders(60)
    lo, hi = params["badge_fraction"]
    for r in renders:
        assert set(np.unique(r.badge_mask).tolist()) == {0} | {o["class_id"] for o in r.objects}
        for j, obj in enumerate(r.objects):
            badge = r.badge_mask == obj["class_id"]
            assert (r.mask[badge] == obj["class_id"]).all()  # inside, visible, clear of the void band
            assert (r.instances[badge] == j + 1).all()
            assert lo - 0.04 <= badge.sum() / obj["area"] <= hi + 0.04


@pytest.mark.parametrize("num_classes", [10, 20])
def test_badge_colour_appears_only_on_badges_of_its_class(num_classes):
    # classes c and c+10 share a colour (and differ in pattern); 1..10 have their own colours
    params, renders = _renders(60, num_classes=num_classes)
    specs = badge_specs(num_classes)
    colours = np.array([s.colour for s in specs], np.float32)
    for r in renders:
        img = r.image.astype(np.float32) / 255.0
        dist = np.linalg.norm(img[:, :, None, :] - colours[None, None], axis=-1)  # H, W, K
        for c in range(1, num_classes + 1):
            near = dist[..., c - 1] < 0.17
            owners = r.badge_mask[near]
            assert (owners > 0).all(), (c, specs[c - 1].name)
            assert ((owners - 1) % 10 == (c - 1) % 10).all(), (c, specs[c - 1].name)
            if num_classes <= 10:
                assert (owners == c).all()
        for obj in r.objects:
            badge = r.badge_mask == obj["class_id"]
            near = dist[..., obj["class_id"] - 1] < 0.17
            assert (near & badge).sum() >= 0.3 * badge.sum()


def test_class_names_and_badges_are_distinct():
    for k in (1, 8, 20):
        names = class_names(k)
        assert names[0] == "background" and len(names) == k + 1 and len(set(names)) == k + 1
    specs = badge_specs(20)
    assert len({(s.colour, s.pattern) for s in specs}) == 20
    assert len({s.colour for s in specs[:10]}) == 10
    with pytest.raises(ValueError):
        badge_specs(21)


def test_params_are_validated_and_object_size_scales_with_image_size():
    p = resolve_params({})
    assert p["num_classes"] == 8 and p["object_size"] == [38, 66]
    assert object_size_px(p) == (38.0, 66.0)
    assert object_size_px(resolve_params({"image_size": 64})) == pytest.approx((38 * 2 / 3, 44.0))
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_params({"bogus": 1})
    with pytest.raises(ValueError, match="object_size"):
        resolve_params({"object_size": [60, 40]})
    with pytest.raises(ValueError, match="badge_fraction"):
        resolve_params({"badge_fraction": [0.3, 0.2]})


def test_extreme_small_images_still_render():
    _, renders = _renders(10, image_size=32, boundary_width=2)
    assert all(1 <= len(r.objects) <= 3 and r.image.shape == (32, 32, 3) for r in renders)


# --------------------------------------------------------------------------- entry point


def test_main_writes_dataset(tmp_path, capsys):
    cfg = {"seed": 2, "dataset": {"synthetic": {**SMALL, "num_train": 3, "num_val": 2}}}
    out = tmp_path / "data"
    assert main(["--config-json", json.dumps(cfg), "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 3, "val": 2}
    assert json.loads((out / "dataset.json").read_text())["seed"] == 2
    VOCLayout.open(out).validate("val")


def test_main_with_config_file_and_override(tmp_path):
    out = tmp_path / "data"
    override = {"dataset": {"synthetic": {"image_size": 48, "num_train": 2, "num_val": 1}}}
    assert main(["--config", str(ROOT / "config.yaml"), "--config-json", json.dumps(override),
                 "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "manifest.json").read_text())["class_names"] == class_names(8)


def test_main_bad_config_key_is_an_error(tmp_path, capsys):
    cfg = {"dataset": {"synthetic": {"num_images": 3}}}
    assert main(["--config-json", json.dumps(cfg), "--out", str(tmp_path / "data"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "num_images" in err
    assert not (tmp_path / "data").exists()
    assert main(["--config-json", "{not json", "--out", str(tmp_path / "data")]) == 1
