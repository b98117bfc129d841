"""predict: a folder of new images -> masks, overlays, CSV; awkward inputs; reruns."""

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icd_pipeline import inference
from icd_pipeline.stages import infer_deeplab, predict
from icd_pipeline.config import validate
from icd_pipeline.data import synthetic
from icd_pipeline.data.voc import VOCLayout, palette_array, read_mask
from icd_pipeline.models.deeplab import build_deeplab, save_deeplab

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc2012-sample" / "VOC2012"
CLASSES = ["background", "red", "blue"]
TEST = dict(test_scales=[1.0, 0.75], test_flip=True, test_crf=False)


def _config(**predict_section):
    return validate({"device": "cpu", "deeplab": dict(TEST), "predict": predict_section})


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    model = build_deeplab("deeplab_largefov", "tiny", 3, pretrained=False, output_stride=8)
    # class logits centred on their mean over random images, so that the masks hold several
    # classes (the N(0, 0.01^2) init gives one class everywhere)
    model.eval()
    fc8 = model.head[0].fc8
    torch.nn.init.normal_(fc8.weight, 0.0, 0.3)
    with torch.no_grad():
        mean_logits = model(torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(0))).mean((0, 2, 3))
        fc8.bias.sub_(mean_logits)
    path = tmp_path_factory.mktemp("predict_model") / "model.pt"
    save_deeplab(path, model, {"input_scale": 1.0, **TEST}, CLASSES)
    return path


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _rgb(h, w, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- reading awkward inputs


def test_exif_orientation_is_applied(tmp_path):
    stored = _rgb(24, 40)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(img, tmp_path / "rot.png", exif=exif)
    assert predict.probe(path) == (24, 40)  # (width, height) as displayed
    np.testing.assert_array_equal(predict.load_image(path), np.rot90(stored, k=-1))


def test_modes_become_8bit_rgb(tmp_path):
    grey = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    out = predict.load_image(_save(Image.fromarray(grey, "L"), tmp_path / "g.png"))
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], grey)

    deep = (grey.astype(np.uint16) * 257)
    deep[0, 0] = 65535
    img16 = Image.fromarray(deep)  # mode I;16
    path = _save(img16, tmp_path / "g16.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    out = predict.load_image(path)
    expected = grey.copy()
    expected[0, 0] = 255
    np.testing.assert_array_equal(out[..., 1], expected)

    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :3, 3] = 255  # left half opaque red, right half transparent
    out = predict.load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[0, 5], [255, 255, 255])

    cmyk = Image.new("CMYK", (6, 4), (0, 255, 255, 0))  # red
    out = predict.load_image(_save(cmyk, tmp_path / "c.jpg", quality=100))
    assert out.shape == (4, 6, 3) and out[..., 0].mean() > 200 and out[..., 1].mean() < 60

    pal = Image.fromarray(grey, "L").convert("P")
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])
    out = predict.load_image(_save(pal, tmp_path / "p.png", transparency=pal.info["transparency"]))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])


def test_network_size_rule():
    assert predict.network_size(640, 480, 1024) == (640, 480)
    assert predict.network_size(6000, 4000, 1024) == (1024, 683)
    assert predict.network_size(4000, 6000, 1024) == (683, 1024)


def test_overlay_and_shares():
    image = np.full((60, 80, 3), 100, np.uint8)
    labels = np.zeros((60, 80), np.uint8)
    labels[40:, 40:] = 2
    shares = predict.class_shares(labels, 3)
    np.testing.assert_allclose(shares, [1 - 800 / 4800, 0, 800 / 4800])
    out = np.asarray(predict.overlay_image(image, labels, CLASSES, alpha=0.5))
    assert out.shape == image.shape
    blue = palette_array()[2]
    np.testing.assert_allclose(out[55, 75], (image[55, 75].astype(int) + blue) / 2, atol=1)
    np.testing.assert_array_equal(out[35, 75], image[35, 75])  # background not tinted
    assert (out[:12, :12] == 255).any()  # the legend box in the top-left corner


# --------------------------------------------------------------------------- the run


def _awkward_folder(root: Path) -> Path:
    _save(Image.fromarray(_rgb(40, 56, 1)), root / "plain.jpg", quality=90)
    _save(Image.fromarray(_rgb(40, 56, 2)), root / "sub" / "deeper" / "same_size.png")
    _save(Image.fromarray(_rgb(40, 56, 3)), root / "sub" / "plain.JPG")
    _save(Image.fromarray(_rgb(33, 47, 4)).convert("L"), root / "grey.bmp")
    _save(Image.fromarray(_rgb(30, 30, 5)), root / "photo.webp")
    rgba = np.concatenate([_rgb(20, 30, 6), np.full((20, 30, 1), 128, np.uint8)], axis=2)
    _save(Image.fromarray(rgba, "RGBA"), root / "alpha.png")
    rot = Image.fromarray(_rgb(20, 36, 7))
    exif = rot.getexif()
    exif[0x0112] = 8
    _save(rot, root / "rotated.jpg", exif=exif)
    good = io.BytesIO()
    Image.fromarray(_rgb(50, 50, 8)).save(good, format="JPEG")
    (root / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / "fake.png").write_text("not a picture")
    (root / "notes.txt").write_text("a note")
    (root / ".hidden.jpg").write_text("ignored")
    return root


EXPECTED_SIZES = {"plain": (56, 40), "sub/deeper/same_size": (56, 40), "sub/plain": (56, 40), "grey": (47, 33),
                  "photo": (30, 30), "alpha": (30, 20), "rotated": (20, 36)}


def test_predict_folder_outputs_skips_and_reruns(model_path, tmp_path, capsys):
    images = _awkward_folder(tmp_path / "in")
    out = tmp_path / "out"
    args = ["--model", str(model_path), "--images", str(images), "--out", str(out), "--no-progress",
            "--config-json", json.dumps({"device": "cpu", "deeplab": TEST})]
    assert predict.main(args) == 0  # skipped files are not an error without --strict
    result = json.loads(capsys.readouterr().out)
    assert result["segmented"] == 7 and result["skipped"] == 3 and result["images"] == 9

    rows = _rows(out / "predictions.csv")
    assert [r["image"] for r in rows] == sorted(EXPECTED_SIZES)
    assert list(rows[0]) == ["image", "width", "height", "share_background", "share_red", "share_blue", "seconds"]
    for row in rows:
        w, h = EXPECTED_SIZES[row["image"]]
        assert (int(row["width"]), int(row["height"])) == (w, h)
        mask = read_mask(out / "masks" / f"{row['image']}.png", 3)
        assert mask.shape == (h, w)
        np.testing.assert_allclose([float(row[f"share_{c}"]) for c in CLASSES],
                                   np.bincount(mask.ravel(), minlength=3) / mask.size, atol=1e-6)
        with Image.open(out / "overlays" / f"{row['image']}.jpg") as ov:
            assert ov.format == "JPEG" and ov.size == (w, h)
        assert float(row["seconds"]) > 0
    shares = np.array([[float(r[f"share_{c}"]) for c in CLASSES] for r in rows])
    assert (shares.sum(1) > 0.999).all() and (shares.max(0) > 0).sum() >= 2
    skipped = {r["image"]: r["reason"] for r in _rows(out / "skipped.csv")}
    assert set(skipped) == {"truncated.jpg", "fake.png", "notes.txt"}
    assert "truncated" in skipped["truncated.jpg"] and "extension" in skipped["notes.txt"]
    assert "readable" in skipped["fake.png"] or "identify" in skipped["fake.png"]
    assert not [p for p in out.rglob(".*")]  # no temporary or journal file left

    # --strict: the same outputs, but exit 1
    assert predict.main(args + ["--strict"]) == 1
    assert "skipped" in capsys.readouterr().err
    # rerun: nothing redone; --overwrite redoes all; masks are the same
    before = {p: p.read_bytes() for p in (out / "masks").rglob("*.png")}
    assert predict.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["segmented"] == 0 and result["done_before"] == 7
    (out / "masks" / "grey.png").unlink()  # a missing output is redone
    assert predict.main(args) == 0
    assert json.loads(capsys.readouterr().out)["segmented"] == 1
    assert predict.main(args + ["--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["segmented"] == 7
    assert {p: p.read_bytes() for p in (out / "masks").rglob("*.png")} == before
    assert len(_rows(out / "predictions.csv")) == 7
    # other test settings: the earlier outputs are stale and redone
    other = args[:-1] + [json.dumps({"device": "cpu", "deeplab": dict(TEST, test_flip=False)})]
    assert predict.main(other) == 0
    assert json.loads(capsys.readouterr().out)["segmented"] == 7


def test_interrupted_run_resumes(model_path, tmp_path, monkeypatch):
    images = tmp_path / "in"
    for i in range(5):
        _save(Image.fromarray(_rgb(24, 24, i)), images / f"{i}.png")
    out = tmp_path / "out"
    real = predict.overlay_image
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(predict, "overlay_image", failing)
    with pytest.raises(KeyboardInterrupt):
        predict.predict_folder(_config(batch_size=2), model_path, images, out, progress=False)
    assert not (out / "predictions.csv").exists() and not list(out.rglob(".*.tmp"))
    monkeypatch.setattr(predict, "overlay_image", real)
    result = predict.predict_folder(_config(batch_size=2), model_path, images, out, progress=False)
    assert result["done_before"] == 2 and result["segmented"] == 3
    assert [r["image"] for r in _rows(out / "predictions.csv")] == [str(i) for i in range(5)]


def test_batching_gives_the_one_image_result(model_path, tmp_path):
    images = tmp_path / "in"
    for i in range(5):
        _save(Image.fromarray(_rgb(32, 40 + 8 * (i % 2), i)), images / f"{i}.png")
    a = predict.predict_folder(_config(batch_size=3), model_path, images, tmp_path / "a", progress=False)
    b = predict.predict_folder(_config(batch_size=1), model_path, images, tmp_path / "b", progress=False)
    # without a config, the test settings stored in the checkpoint (the same TEST here)
    assert predict.main(["--model", str(model_path), "--images", str(images), "--out", str(tmp_path / "c"),
                         "--no-progress", "--batch-size", "2"]) == 0
    assert a["segmented"] == b["segmented"] == 5
    for i in range(5):
        for other in ("b", "c"):
            np.testing.assert_array_equal(read_mask(tmp_path / "a" / "masks" / f"{i}.png"),
                                          read_mask(tmp_path / other / "masks" / f"{i}.png"))


def test_large_image_is_downscaled_and_mask_upsampled(model_path, tmp_path):
    images = tmp_path / "in"
    big = np.zeros((4000, 6000, 3), np.uint8)
    big[:, 3000:] = (200, 40, 40)
    _save(Image.fromarray(big), images / "big.bmp")  # BMP: the fastest to write and read back
    del big
    result = predict.predict_folder(_config(max_side=96), model_path, images, tmp_path / "out", progress=False)
    assert result["segmented"] == 1
    # with the CRF as well (it runs on the downscaled image)
    crf_config = validate({"device": "cpu", "deeplab": dict(TEST, test_crf=True), "predict": {"max_side": 96}})
    assert predict.predict_folder(crf_config, model_path, images, tmp_path / "crf", progress=False)["segmented"] == 1
    mask = read_mask(tmp_path / "out" / "masks" / "big.png")
    assert mask.shape == (4000, 6000)
    # the mask is the network's 96x64 answer upsampled (nearest): constant blocks of ~62 px
    model, meta = inference.load_for_inference(model_path, torch.device("cpu"))
    settings = inference.TestSettings.from_config(_config(), meta)
    image = predict.resize_rgb(predict.load_image(images / "big.bmp"), (96, 64))
    expected = predict.resize_labels(inference.segment(model, [image], settings, torch.device("cpu"))[0],
                                     (6000, 4000))
    np.testing.assert_array_equal(mask, expected)


def test_empty_folder_is_an_error(model_path, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    args = ["--model", str(model_path), "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]
    assert predict.main(args) == 1
    assert "no images" in capsys.readouterr().err
    assert predict.main(["--model", str(model_path), "--images", str(tmp_path / "nope"), "--out",
                         str(tmp_path / "o")]) == 1
    assert "missing" in capsys.readouterr().err


# --------------------------------------------------------------------------- same answer as infer_deeplab


def test_predict_matches_infer_deeplab_on_embedded_val(model_path, tmp_path):
    params = validate({"dataset": {"synthetic": {"num_classes": 2, "image_size": 64, "num_train": 1,
                                                 "num_val": 5, "saliency": {"enabled": False}}}})
    root = tmp_path / "data"
    synthetic.generate(root, params["dataset"]["synthetic"], seed=0, progress=False)
    layout = VOCLayout.open(root)
    assert layout.num_classes == 3
    # with the test-time CRF, which both take from the same place
    crf = dict(test_crf=True, test_crf_params=dict(gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=20,
                                                   bilateral_srgb=13, bilateral_compat=5, iterations=2))
    config = validate({"device": "cpu", "deeplab": dict(TEST, batch_size=2, **crf)})
    infer_deeplab.infer(config, root, "val", model_path, tmp_path / "pred", tmp_path / "pc.csv",
                        tmp_path / "s.json", progress=False)
    val = tmp_path / "val_images"
    val.mkdir()
    for image_id in layout.ids("val"):
        shutil.copy(layout.image_path(image_id), val / layout.image_path(image_id).name)
    predict_config = validate({"device": "cpu", "deeplab": dict(TEST, **crf), "predict": {}})
    predict.predict_folder(predict_config, model_path, val, tmp_path / "out", progress=False)
    assert json.loads((tmp_path / "out" / "predict.json").read_text())["test_crf"] is True
    for image_id in layout.ids("val"):
        np.testing.assert_array_equal(read_mask(tmp_path / "out" / "masks" / f"{image_id}.png"),
                                      read_mask(tmp_path / "pred" / f"{image_id}.png"))


# --------------------------------------------------------------------------- real photographs


@pytest.mark.skipif(not (SAMPLE / "JPEGImages").is_dir(), reason=f"VOC sample not found at {SAMPLE}")
def test_real_sample_images(model_path, tmp_path):
    sources = sorted((SAMPLE / "JPEGImages").glob("*.jpg"))[:4]
    images = tmp_path / "photos"
    for src in sources:
        _save(Image.open(src), images / src.name)
    # the same photographs as a user may have them: rotated by EXIF, CMYK, enlarged, greyscale
    first = Image.open(sources[0])
    exif = first.getexif()
    exif[0x0112] = 6
    _save(first, images / "exif_rotated.jpg", exif=exif)
    _save(first.convert("CMYK"), images / "cmyk.jpg")
    _save(first.convert("L"), images / "grey.png")
    _save(first.resize((first.width * 4, first.height * 4)), images / "large.jpg", quality=85)
    result = predict.predict_folder(_config(max_side=256), model_path, images, tmp_path / "out", progress=False)
    assert result["segmented"] == 8 and result["skipped"] == 0
    rows = {r["image"]: r for r in _rows(tmp_path / "out" / "predictions.csv")}
    for src in sources:
        with Image.open(src) as img:
            assert (int(rows[src.stem]["width"]), int(rows[src.stem]["height"])) == img.size
            assert read_mask(tmp_path / "out" / "masks" / f"{src.stem}.png").shape == (img.height, img.width)
    assert (int(rows["exif_rotated"]["width"]), int(rows["exif_rotated"]["height"])) == (first.height, first.width)
    assert (int(rows["large"]["width"]), int(rows["large"]["height"])) == (first.width * 4, first.height * 4)
    with Image.open(tmp_path / "out" / "overlays" / "large.jpg") as ov:
        assert ov.size == (first.width * 4, first.height * 4)


# --------------------------------------------------------------------------- the Snakemake target


def test_snakemake_predict_target(tmp_path):
    from smk import TINY, jobs_in_dry_run, run_snakemake

    unset = run_snakemake(tmp_path, "-n", "--cores", "1", f"--configfile={TINY}", "predict", check=False)
    assert unset.returncode != 0
    assert "predict.images is not set" in unset.stdout + unset.stderr
    photos = tmp_path / "photos"
    photos.mkdir()
    dry = run_snakemake(tmp_path, "-n", "--cores", "1", f"--configfile={TINY}", "predict",
                        "--config", f"predict={{images: {photos}, model: full}}")
    jobs = jobs_in_dry_run(dry)
    assert {"predict_images", "train_deeplab_full"} <= jobs and "make_pseudo_masks" not in jobs


@pytest.mark.slow
def test_snakemake_predict_runs(tiny_run, tmp_path):
    """The predict target on the tiny run's trained DeepLab (only the predict job runs)."""
    from smk import TINY, run_snakemake

    photos = tmp_path / "my_photos"  # outside the run folder, which holds only results/ and .snakemake/
    for i in range(3):
        _save(Image.fromarray(_rgb(48, 64, i)), photos / f"p{i}.jpg")
    (photos / "broken.png").write_text("not an image")
    run_snakemake(tiny_run, "--cores", "2", f"--configfile={TINY}", "predict",
                  "--config", f"predict={{images: {photos}, model: full}}")
    out = tiny_run / "results" / "tiny" / "default" / "predict" / "full"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["segmented"] == 3 and summary["skipped"] == 1
    assert [r["image"] for r in _rows(out / "predictions.csv")] == ["p0", "p1", "p2"]
    assert read_mask(out / "masks" / "p0.png").shape == (48, 64)
    assert (tiny_run / "results" / "tiny" / "default" / "logs" / "predict_full.log").is_file()
