"""Maps HDF5 store (maps_io), map extraction (extract_maps) and the pseudo-mask picture grid."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from icd_pipeline import METHOD_VERSION
from icd_pipeline.stages import pseudo_mask_pictures as pictures
from icd_pipeline.stages import extract_maps
from icd_pipeline.data.voc import PAD_RGB, VOCLayout, read_image, write_palette_png
from icd_pipeline.maps_io import FORMAT, MapsError, MapsReader, MapsWriter, dequantize_int8, quantize_int8
from icd_pipeline.misc.io import sha256_file

CLASSES = ["background", "square", "disc", "bar"]
# (id, (H, W), present class ids): varied sizes exercise per-batch padding
IMAGES = [("a0", (40, 32), [1]), ("a1", (24, 40), [2, 3]), ("a2", (33, 27), [1, 2, 3]),
          ("a3", (40, 40), [3]), ("a4", (17, 23), [2])]


def make_voc(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for image_id, (h, w), present in IMAGES:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        # PNG-compressed "JPEG" would be lossy; save losslessly under .jpg (PIL sniffs content)
        Image.fromarray(img).save(root / "JPEGImages" / f"{image_id}.jpg", format="PNG")
        mask = np.zeros((h, w), np.uint8)
        for j, c in enumerate(present):
            mask[j * 4:j * 4 + 6, 2:8] = c
        mask[-1, -1] = 255
        write_palette_png(root / "SegmentationClass" / f"{image_id}.png", mask)
        objs = "".join(f"<object><name>{CLASSES[c]}</name></object>" for c in present)
        (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objs}</annotation>")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(i for i, _, _ in IMAGES) + "\n")
    (root / "dataset.json").write_text(json.dumps({"class_names": CLASSES}))
    return root


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_voc(tmp_path_factory.mktemp("voc") / "data")


# --------------------------------------------------------------------------- maps_io


def _record(rng, k, h, w):
    return rng.normal(0, 5, (k, h, w)).astype(np.float32), rng.normal(0, 5, (k, h, w)).astype(np.float32)


@pytest.mark.parametrize("encoding", ["int8", "float16"])
def test_round_trip_shapes_dtypes_metadata(tmp_path, encoding):
    rng = np.random.default_rng(1)
    path = tmp_path / "maps" / "train.h5"
    recs = {"x1": ([1, 4], (12, 10), (96, 80)), "x2": ([3], (9, 12), (70, 90)), "x3": ([], (5, 5), (40, 40))}
    data = {}
    with MapsWriter(path, attrs={"method_version": METHOD_VERSION, "class_names": CLASSES,
                                 "scales": [1.0], "flip": False, "checkpoint_sha256": "ab" * 32},
                    encoding=encoding) as w:
        for image_id, (cls, vhw, ihw) in recs.items():
            cam, td = _record(rng, len(cls), *vhw)
            data[image_id] = (cam, td)
            w.write(image_id, cam, td, cls, ihw, scaled_hw=(ihw[0] * 2, ihw[1] * 2))
        w.attrs["config"] = json.dumps({"maps": {"scales": [1.0]}})
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["train.h5"]
    with MapsReader(path) as r:
        assert r.ids == list(recs) and len(r) == 3 and "x2" in r and "nope" not in r
        assert r.attrs["format"] == FORMAT and r.attrs["method_version"] == METHOD_VERSION
        assert r.attrs["class_names"] == CLASSES and r.attrs["scales"] == [1.0] and r.attrs["flip"] is False
        assert r.attrs["num_images"] == 3 and json.loads(r.attrs["config"])["maps"]["scales"] == [1.0]
        assert r.attrs["encoding"] == encoding and r.encoding == encoding
        for image_id, (cls, vhw, ihw) in recs.items():
            got = r.read(image_id)
            assert got["cam"].dtype == np.float32 and got["td"].dtype == np.float32
            assert got["cam"].shape == (len(cls), *vhw) and got["td"].shape == (len(cls), *vhw)
            assert got["class_ids"] == cls and got["image_hw"] == ihw and got["valid_hw"] == vhw
            assert got["scaled_hw"] == (ihw[0] * 2, ihw[1] * 2)
            for got_map, want in zip((got["cam"], got["td"]), data[image_id]):
                if encoding == "float16":  # relative error ~ 1e-3
                    np.testing.assert_allclose(got_map, want, rtol=1e-3, atol=1e-2)
                else:  # int8: at most one step of the map's wider part (max|x| / 127), signs exact
                    step = np.abs(want).max(axis=(1, 2), keepdims=True) / 127 if want.size else 0
                    assert np.all(np.abs(got_map - want) <= step * 1.0001)
                    np.testing.assert_array_equal(np.sign(got_map), np.sign(want))
        with pytest.raises(MapsError, match="no maps for image id"):
            r.read("nope")
    with h5py.File(path, "r") as f:
        d = f["data"]
        assert d.dtype == np.dtype(encoding) and d.chunks is not None and d.compression == "gzip" and d.shuffle


def test_quantize_int8_keeps_signs_and_bounds_the_error():
    x = np.array([[[0.0, 1e-6, -1e-6, 0.3], [-4.0, 127.0, -254.0, 5.5]],
                  [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]], np.float32)
    q, scale = quantize_int8(x)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (2, 2)
    # positive part: max / 127 = 1; negative part: -min / 127 = 2; absent parts: 1
    np.testing.assert_allclose(scale, [[1.0, 2.0], [1.0, 1.0]])
    assert q[0].tolist() == [[0, 1, -1, 1], [-2, 127, -127, 6]]  # tiny values keep their sign
    y = dequantize_int8(q, scale)
    np.testing.assert_array_equal(np.sign(y), np.sign(x))
    np.testing.assert_allclose(y[0], [[0, 1, -2, 1], [-4, 127, -254, 6]])
    assert not y[1].any()
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (3, 40, 40)).astype(np.float32) - 2  # negative part wider than positive
    q, scale = quantize_int8(x)
    y = dequantize_int8(q, scale)
    np.testing.assert_array_equal(np.sign(y), np.sign(x))
    np.testing.assert_allclose(scale[:, 0], x.max(axis=(1, 2)) / 127, rtol=1e-6)
    np.testing.assert_allclose(scale[:, 1], -x.min(axis=(1, 2)) / 127, rtol=1e-6)
    step = np.where(x >= 0, scale[:, 0, None, None], scale[:, 1, None, None])
    far = np.abs(x) >= step / 2  # rounding to nearest: half a step; nearer 0 the sign rule may add up to one
    assert np.all(np.abs(y - x)[far] <= step[far] / 2 * 1.0001)
    assert np.all(np.abs(y - x) <= step * 1.0001)
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize_int8(np.array([[[np.nan, 1.0]]], np.float32))


def test_int8_store_is_smaller_and_reads_files_without_encoding(tmp_path):
    rng = np.random.default_rng(3)
    recs = [_record(rng, 2, 12, 12) for _ in range(200)]
    ids = [f"id{i}" for i in range(199)] + ["bild_ä_long_name"]  # ids: UTF-8, any width
    sizes = {}
    for enc in ("int8", "float16"):
        with MapsWriter(tmp_path / f"{enc}.h5", encoding=enc) as w:
            for image_id, (cam, td) in zip(ids, recs):
                w.write(image_id, cam, td, [1, 2], (96, 96))
        sizes[enc] = (tmp_path / f"{enc}.h5").stat().st_size
        with MapsReader(tmp_path / f"{enc}.h5") as r:
            assert r.ids == ids and r.read("bild_ä_long_name")["td"].shape == (2, 12, 12)
    with MapsWriter(tmp_path / "empty.h5"):
        pass
    with MapsReader(tmp_path / "empty.h5") as r:
        assert r.ids == [] and r.attrs["num_images"] == 0
    assert sizes["int8"] < 0.8 * sizes["float16"]  # 0.72 on this Gaussian noise (~0.5 on real maps)
    # a format-version-1 file: float16 data and no encoding attribute
    with h5py.File(tmp_path / "float16.h5", "r+") as f:
        del f.attrs["encoding"]
        f.attrs["format_version"] = 1
    with MapsReader(tmp_path / "float16.h5") as r:
        assert r.encoding == "float16"
        np.testing.assert_allclose(r.read("id7")["td"], recs[7][1], rtol=1e-3, atol=1e-2)


def test_non_finite_maps_are_refused_and_leave_no_file(tmp_path):
    path = tmp_path / "m.h5"
    with pytest.raises(MapsError, match="bad_img: maps contain NaN"):
        with MapsWriter(path) as w:
            w.write("ok", np.ones((1, 2, 2)), np.ones((1, 2, 2)), [1], (8, 8))
            w.write("bad_img", np.full((1, 2, 2), np.inf), np.ones((1, 2, 2)), [1], (8, 8))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MapsError, match="unknown maps encoding 'int4'"):
        MapsWriter(path, encoding="int4")


def test_reading_one_image_reads_only_its_slice(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "m.h5"
    with MapsWriter(path) as w:
        for i in range(300):  # several data chunks
            cam, td = _record(rng, 2, 16, 16)
            w.write(f"id{i:03d}", cam, td, [1, 2], (128, 128))
    reader = MapsReader(path)
    requested = []

    class Spy:
        def __init__(self, dset):
            self.dset = dset

        def __getitem__(self, key):
            requested.append(key)
            return self.dset[key]

    real_open = reader._open
    reader._open = lambda: {"data": Spy(real_open()["data"])}
    out = reader.read("id150")
    n = 2 * 16 * 16
    assert requested == [slice(150 * 2 * n, 151 * 2 * n)]  # one image's slice, nothing else
    assert out["cam"].shape == (2, 16, 16)
    with h5py.File(path, "r") as f:
        assert f["data"].size > 100 * 2 * n > f["data"].chunks[0]  # the file spans many chunks


def test_reader_is_picklable_and_reopens(tmp_path):
    path = tmp_path / "m.h5"
    with MapsWriter(path) as w:
        w.write("a", np.ones((1, 2, 3)), np.zeros((1, 2, 3)), [2], (16, 24))
    r = MapsReader(path)
    r2 = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(r2.read("a")["cam"], np.ones((1, 2, 3), np.float32))
    r.close()
    r2.close()


def test_exception_inside_writer_leaves_no_file(tmp_path):
    path = tmp_path / "out" / "train.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with MapsWriter(path) as w:
            w.write("a", np.ones((1, 2, 2)), np.ones((1, 2, 2)), [1], (8, 8))
            raise RuntimeError("boom")
    assert not path.exists()
    assert list(path.parent.iterdir()) == []  # no temporary file left either


def test_writer_rejects_bad_records(tmp_path):
    with pytest.raises(MapsError):
        with MapsWriter(tmp_path / "m.h5") as w:
            w.write("a", np.ones((2, 2, 2)), np.ones((2, 2, 2)), [2, 1], (8, 8))  # unsorted ids
    with pytest.raises(MapsError):
        with MapsWriter(tmp_path / "m.h5") as w:
            w.write("a", np.ones((1, 2, 2)), np.ones((1, 2, 2)), [1], (8, 8))
            w.write("a", np.ones((1, 2, 2)), np.ones((1, 2, 2)), [1], (8, 8))  # duplicate id
    assert not (tmp_path / "m.h5").exists()


# --------------------------------------------------------------------------- extraction


class FakeBackbone(nn.Module):
    name = "fake"

    def __init__(self, stride):
        super().__init__()
        self.stride = stride


class FakeICD(nn.Module):
    """Known, flip-equivariant maps: average-pool the image over stride x stride cells;
    cam_k = (k+1) * mean over RGB, td_k = channel (k % 3) - 0.5."""

    def __init__(self, num_classes=3, stride=4):
        super().__init__()
        self.backbone = FakeBackbone(stride)
        self.num_classes = num_classes
        self.calls = 0

    @staticmethod
    def maps_from_pooled(p, num_classes):
        cam = torch.stack([(k + 1) * p.mean(1) for k in range(num_classes)], 1)
        td = torch.stack([p[:, k % 3] - 0.5 for k in range(num_classes)], 1)
        return cam, td

    def predict(self, images):
        self.calls += 1
        p = F.avg_pool2d(images, self.backbone.stride)
        return self.maps_from_pooled(p, self.num_classes)


def expected_fake_maps(image: np.ndarray, present, stride=4):
    """What FakeICD gives for one image (input_scale 1): pad to a multiple of the stride
    with PAD_RGB, pool, crop to the cells covering the image."""
    h, w = image.shape[:2]
    ph, pw = -(-h // stride) * stride, -(-w // stride) * stride
    x = np.empty((3, ph, pw), np.float32)
    x[:] = np.asarray(PAD_RGB, np.float32)[:, None, None]
    x[:, :h, :w] = image.transpose(2, 0, 1) / 255.0
    cam, td = FakeICD.maps_from_pooled(F.avg_pool2d(torch.from_numpy(x)[None], stride), 3)
    idx = [c - 1 for c in present]
    return cam[0, idx].numpy(), td[0, idx].numpy()


def fake_config(**maps):
    return {"device": "cpu", "maps": {"scales": [1.0], "flip": False, "batch_size": 2, "num_workers": 0, **maps}}


@pytest.fixture()
def fake_model(monkeypatch, tmp_path):
    model = FakeICD()
    meta = {"backbone": "fake", "num_classes": 3, "class_names": CLASSES[1:],
            "config": {"input_scale": 1.0, "output_stride": 4}}
    monkeypatch.setattr(extract_maps, "load_model", lambda path, device: (model, meta))
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"fake checkpoint")
    return model, meta, ckpt


def test_extraction_on_fake_model_gives_expected_maps(voc, fake_model, tmp_path):
    model, meta, ckpt = fake_model
    out = tmp_path / "maps" / "train.h5"
    # float16 store: the check is on the extraction math, not the int8 rounding (tested above)
    result = extract_maps.run(fake_config(encoding="float16"), str(voc), "train", str(ckpt), str(out),
                              progress=False)
    assert result["extract_images"] == len(IMAGES)
    layout = VOCLayout.open(voc)
    with MapsReader(out) as r:
        assert r.ids == [i for i, _, _ in IMAGES]
        assert r.attrs["checkpoint_sha256"] == sha256_file(ckpt)
        assert r.attrs["class_names"] == CLASSES and r.attrs["stride"] == 4 and r.attrs["input_scale"] == 1.0
        assert r.attrs["scales"] == [1.0] and r.attrs["flip"] is False
        assert json.loads(r.attrs["config"])["maps"]["batch_size"] == 2
        for image_id, (h, w), present in IMAGES:
            rec = r.read(image_id)
            assert rec["class_ids"] == present and rec["image_hw"] == (h, w)
            assert rec["valid_hw"] == (-(-h // 4), -(-w // 4))
            cam, td = expected_fake_maps(read_image(layout.image_path(image_id)), present)
            np.testing.assert_allclose(rec["cam"], cam, rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(rec["td"], td, rtol=2e-3, atol=2e-3)


def test_flip_on_equivariant_model_matches_single_scale(voc, fake_model, tmp_path):
    model, _, ckpt = fake_model
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    extract_maps.run(fake_config(), str(voc), "train", str(ckpt), str(a), progress=False)
    calls = model.calls
    extract_maps.run(fake_config(scales=[1.0], flip=True), str(voc), "train", str(ckpt), str(b), progress=False)
    assert model.calls == 3 * calls  # 1 pass per batch, then 2 (the flipped pass ran)
    extract_maps.run(fake_config(scales=[1.0, 2.0], flip=True, batch_size=3), str(voc), "train", str(ckpt),
                     str(c), progress=False)
    with MapsReader(a) as ra, MapsReader(b) as rb, MapsReader(c) as rc:
        assert rb.attrs["flip"] is True and rc.attrs["scales"] == [1.0, 2.0]
        for image_id in ra.ids:
            x, y, z = ra.read(image_id), rb.read(image_id), rc.read(image_id)
            np.testing.assert_allclose(x["cam"], y["cam"], atol=1e-3)
            np.testing.assert_allclose(x["td"], y["td"], atol=1e-3)
            # multi-scale is resampled onto the scale-1 grid and stays close on these maps
            assert z["cam"].shape == x["cam"].shape and z["valid_hw"] == x["valid_hw"]
            assert np.abs(z["td"] - x["td"]).mean() < 0.2


def test_extraction_with_real_tiny_icd_model(voc, tmp_path):
    from icd_pipeline.models.icd import build_icd_model, save_icd_checkpoint

    torch.manual_seed(0)
    icd_cfg = {"backbone": "tiny", "pretrained": False, "output_stride": 8, "input_scale": 1.5, "head_channels": 16}
    model = build_icd_model(icd_cfg, 3, pretrained=False).eval()
    ckpt = tmp_path / "model.pt"
    save_icd_checkpoint(ckpt, model, icd_cfg, CLASSES)
    out = tmp_path / "maps.h5"
    rc = extract_maps.main(["--config-json", json.dumps(fake_config(batch_size=1)), "--data-root", str(voc),
                            "--split", "train", "--checkpoint", str(ckpt), "--out", str(out),
                            "--benchmark-forward", "--benchmark-batches", "2", "--no-progress"])
    assert rc == 0
    layout = VOCLayout.open(voc)
    with MapsReader(out) as r:
        assert r.attrs["backbone"] == "tiny" and r.attrs["stride"] == 8 and r.attrs["input_scale"] == 1.5
        image_id, (h, w), present = IMAGES[2]
        rec = r.read(image_id)
        sh, sw = round(h * 1.5), round(w * 1.5)
        assert rec["scaled_hw"] == (sh, sw) and rec["valid_hw"] == (-(-sh // 8), -(-sw // 8))
        # batch size 1: the input is the image resized and padded to a multiple of 8
        img = torch.from_numpy(read_image(layout.image_path(image_id))).permute(2, 0, 1).float()[None] / 255
        img = F.interpolate(img, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
        x = torch.tensor(PAD_RGB).view(1, 3, 1, 1).expand(1, 3, -(-sh // 8) * 8, -(-sw // 8) * 8).clone()
        x[:, :, :sh, :sw] = img
        cam, td = model.predict(x)
        vh, vw = rec["valid_hw"]
        idx = [c - 1 for c in present]
        np.testing.assert_allclose(rec["cam"], cam[0, idx, :vh, :vw].numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(rec["td"], td[0, idx, :vh, :vw].numpy(), rtol=2e-3, atol=2e-3)


def test_extraction_rejects_checkpoint_of_other_dataset(voc, fake_model, tmp_path, capsys):
    model, meta, ckpt = fake_model
    meta["num_classes"] = 20
    rc = extract_maps.main(["--config-json", json.dumps(fake_config()), "--data-root", str(voc), "--split", "train",
                            "--checkpoint", str(ckpt), "--out", str(tmp_path / "x.h5"), "--no-progress"])
    assert rc == 1 and "error:" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


# --------------------------------------------------------------------------- pictures


def test_choose_ids_mixes_single_and_multi_class():
    n = {"a": 1, "b": 2, "c": 1, "d": 3, "e": 1, "f": 1}
    assert pictures.choose_ids(list(n), n.get, 4) == ["a", "b", "c", "d"]
    assert pictures.choose_ids(list(n), n.get, 6) == ["a", "b", "c", "d", "e", "f"]
    assert pictures.choose_ids(["a", "c"], n.get, 3) == ["a", "c"]


def test_pseudo_mask_grid_writes_png(voc, fake_model, tmp_path):
    _, _, ckpt = fake_model
    maps = tmp_path / "maps.h5"
    extract_maps.run(fake_config(), str(voc), "train", str(ckpt), str(maps), progress=False)
    masks = tmp_path / "masks"
    layout = VOCLayout.open(voc)
    for sub in ("icd_seed", "icd_crf"):
        (masks / sub).mkdir(parents=True)
        for image_id, (h, w), present in IMAGES:
            m = np.zeros((h, w), np.uint8)
            m[: h // 2] = present[0]
            m[-2:] = 255
            write_palette_png(masks / sub / f"{image_id}.png", m)
    out = tmp_path / "fig" / "grid.png"
    rc = pictures.main(["--data-root", str(voc), "--split", "train", "--maps", str(maps),
                        "--masks-dir", str(masks), "--out", str(out), "--num", "4"])
    assert rc == 0 and out.is_file()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 250
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]
    assert layout.num_classes == 4
