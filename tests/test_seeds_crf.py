import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from icd_pipeline.stages import make_pseudo_masks as mpm
from icd_pipeline.crf import crf_from_labels, dense_crf, labels_to_probs
from icd_pipeline.data.voc import read_mask
from icd_pipeline.seeds import cam_seed, icd_seed, saliency_seed, upsample_maps

CRF = dict(gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10,
           iterations=10)


# --------------------------------------------------------------------------- seeds


def test_upsample_maps_crop_and_cell_geometry():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 7, 9)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(maps[:, :5, :6])[None], size=(40, 48), mode="bilinear",
                        align_corners=False)[0].numpy()
    np.testing.assert_allclose(upsample_maps(maps, (40, 48), valid_hw=(5, 6)), ref, atol=1e-5)
    # exact cell geometry: 6 x 8 cells of 8 px cover a 48 x 64 padded input; the image is 45 x 60
    grid = maps[:, :6, :8]
    full = F.interpolate(torch.from_numpy(grid)[None], size=(48, 64), mode="bilinear",
                         align_corners=False)[0].numpy()
    np.testing.assert_allclose(upsample_maps(grid, (45, 60), cell=(8.0, 8.0)), full[:, :45, :60], atol=1e-5)
    with pytest.raises(ValueError, match="valid_hw"):
        upsample_maps(maps, (10, 10), valid_hw=(8, 9))


def test_icd_seed_single_class():
    td = np.full((1, 4, 6), -1.0, np.float32)
    td[0, 1:3, 2:5] = 2.0
    td[0, 0, 0] = 0.0                   # neither T > 0 nor T < 0: ignore
    seed = icd_seed(td, None, [7])
    expected = np.zeros((4, 6), np.uint8)
    expected[1:3, 2:5] = 7
    expected[0, 0] = 255
    np.testing.assert_array_equal(seed, expected)


def test_icd_seed_background_threshold_leaves_the_weak_band_void():
    td = np.array([[[-10.0, -4.0, -1.0, 0.5, 2.0]]], np.float32)   # min -10: neg = 1, 0.4, 0.1
    np.testing.assert_array_equal(icd_seed(td, None, [3])[0], [0, 0, 0, 3, 3])      # authors: 1e-5
    np.testing.assert_array_equal(icd_seed(td, None, [3], icd_bg_threshold=0.3)[0], [0, 0, 255, 3, 3])
    np.testing.assert_array_equal(icd_seed(td, None, [3], icd_bg_threshold=0.5)[0], [0, 255, 255, 3, 3])
    # two classes: background must be confident for every present class (relative to its own minimum)
    td2 = np.stack([td[0], np.array([[-1.0, -1.0, -1.0, -1.0, -1.0]], np.float32)])
    td2[1, 0, 0] = -2.0
    cam = np.ones_like(td2)
    cam[0, 0, 0] = 0.0
    np.testing.assert_array_equal(icd_seed(td2, cam, [3, 4], icd_bg_threshold=0.6)[0], [0, 255, 255, 3, 3])
    np.testing.assert_array_equal(icd_seed(td2, cam, [3, 4], icd_bg_threshold=0.35)[0], [0, 0, 255, 3, 3])
    # saliency mode falls back to ICD background on a nearly empty salient area: same threshold
    sal = np.zeros((1, 5), np.float32)
    np.testing.assert_array_equal(saliency_seed(td, None, [3], sal, min_salient_area=0.5,
                                                icd_bg_threshold=0.3)[0], [0, 0, 255, 3, 3])
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="icd_bg_threshold"):
            icd_seed(td, None, [3], icd_bg_threshold=bad)


def test_icd_seed_foreground_threshold_leaves_the_weak_band_void():
    td = np.array([[[-1.0, 0.5, 1.0, 3.0, 10.0]]], np.float32)   # max 10: P = 0.05, 0.1, 0.3, 1
    np.testing.assert_array_equal(icd_seed(td, None, [3])[0], [0, 3, 3, 3, 3])      # authors: 1e-5
    np.testing.assert_array_equal(icd_seed(td, None, [3], icd_fg_threshold=0.2)[0], [0, 255, 255, 3, 3])
    np.testing.assert_array_equal(icd_seed(td, None, [3], icd_fg_threshold=0.5)[0], [0, 255, 255, 255, 3])
    # two classes: a pixel weakly positive for one and strong for the other goes to the strong one
    # (the CAM decides only between classes that both pass the threshold)
    td2 = np.stack([td[0], np.array([[-1.0, 8.0, 0.2, -1.0, -1.0]], np.float32)])
    cam = np.ones_like(td2)
    cam[0] = 2.0                                               # the CAM prefers class 3 everywhere
    np.testing.assert_array_equal(icd_seed(td2, cam, [3, 4])[0], [0, 3, 3, 3, 3])
    np.testing.assert_array_equal(icd_seed(td2, cam, [3, 4], icd_fg_threshold=0.2)[0], [0, 4, 255, 3, 3])
    sal = np.zeros((1, 5), np.float32)
    np.testing.assert_array_equal(saliency_seed(td, None, [3], sal, min_salient_area=0.5,
                                                icd_fg_threshold=0.2)[0], [0, 255, 255, 3, 3])
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="icd_fg_threshold"):
            icd_seed(td, None, [3], icd_fg_threshold=bad)


def test_icd_seed_all_negative_is_background():
    td = -np.abs(np.random.default_rng(0).normal(size=(2, 5, 5))).astype(np.float32) - 0.1
    cam = np.random.default_rng(1).normal(size=(2, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(icd_seed(td, cam, [3, 5]), np.zeros((5, 5), np.uint8))


def test_icd_seed_two_classes_in_conflict():
    H, W = 3, 8
    td = np.full((2, H, W), -1.0, np.float32)
    td[0, :, 0:5] = 1.0                 # class 2 claims columns 0-4
    td[1, :, 3:8] = 1.0                 # class 6 claims columns 3-7: conflict on 3-4
    cam = np.zeros((2, H, W), np.float32)
    cam[0, :, 3] = 5.0                  # column 3: CAM says class 2
    cam[1, :, 4] = 5.0                  # column 4: CAM says class 6
    cam[1, 0, 0] = 9.0                  # sets the joint min-max range only
    seed = icd_seed(td, cam, [2, 6])
    np.testing.assert_array_equal(seed[1], [255, 255, 255, 2, 6, 255, 255, 255])
    # columns 0-2 / 5-7: one proposing class but Q = N(ReLU(CAM)) * P is 0 for every class,
    # so max Q - min Q <= 1e-5: the tie rule ignores them (official behaviour, K > 1)
    cam2 = cam + 1.0                    # positive CAM on the image: no more ties
    cam2[:, 2, 7] = 0.0                 # (the joint minimum, normalised to 0)
    cam2[1, 0, 0] = 10.0
    seed2 = icd_seed(td, cam2, [2, 6])
    np.testing.assert_array_equal(seed2[1], [2, 2, 2, 2, 6, 6, 6, 6])
    # at (0, 0) class 6's CAM is the largest, but only class 2 proposes foreground there
    np.testing.assert_array_equal(seed2[0, :3], [2, 2, 2])
    with pytest.raises(ValueError, match="cam"):
        icd_seed(td, None, [2, 6])


def test_cam_seed_threshold_and_argmax():
    cam = np.zeros((2, 2, 3), np.float32)
    cam[0] = [[10, 5, 0], [-3, 1, 0]]
    cam[1] = [[0, 4, 2], [0, 0, -1]]
    seed = cam_seed(cam, [1, 4], bg_threshold=0.3)
    # per-class normalised: c1 = [[1, .5, 0], [0, .1, 0]], c4 = [[0, 1, .5], [0, 0, 0]]
    np.testing.assert_array_equal(seed, [[1, 4, 4], [0, 0, 0]])


# --------------------------------------------------------------------------- CRF


def _two_region_image(h=32, w=48):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (200, 40, 40)
    img[:, w // 2:] = (30, 60, 210)
    clean = np.zeros((h, w), np.uint8)
    clean[:, w // 2:] = 2
    return img, clean


def test_dense_crf_recovers_regions_from_noisy_unary():
    img, clean = _two_region_image()
    rng = np.random.default_rng(0)
    probs = np.full((3, *clean.shape), 0.1, np.float32)
    noisy = clean.copy()
    flip = rng.random(clean.shape) < 0.25
    noisy[flip] = rng.integers(0, 3, flip.sum())
    yy, xx = np.indices(clean.shape)
    probs[noisy, yy, xx] = 0.8
    assert (noisy != clean).mean() > 0.1
    q = dense_crf(img, probs, **CRF)
    assert q.shape == probs.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(q.argmax(0), clean)


def test_crf_from_labels_fixes_seed_errors():
    img, clean = _two_region_image()
    rng = np.random.default_rng(1)
    seed = clean.copy()
    wrong = rng.random(clean.shape) < 0.15
    seed[wrong] = rng.integers(0, 3, wrong.sum())
    seed[rng.random(clean.shape) < 0.2] = 255
    out = crf_from_labels(img, seed, num_labels=21, confidence=0.5, min_posterior=0.1, **CRF)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, clean)


def test_crf_posterior_threshold_gives_void():
    img, clean = _two_region_image(16, 16)
    p = labels_to_probs(clean, 21, 0.5)
    assert abs(p[0, 0, 0] - 0.5 / (0.5 + 20 * 0.5 / 21)) < 1e-6          # ~0.512
    void = np.full(clean.shape, 255, np.uint8)
    np.testing.assert_allclose(labels_to_probs(void, 21, 0.5), 1 / 21, atol=1e-7)
    # no evidence at all: the posterior stays uniform (1/21 < 0.1) -> 255 everywhere
    assert (crf_from_labels(img, void, 21, 0.5, 0.1, **CRF) == 255).all()
    assert (crf_from_labels(img, void, 21, 0.5, 0.0, **CRF) != 255).all()
    # a confident seed passes the threshold
    assert (crf_from_labels(img, clean, 3, 0.5, 0.1, **CRF) == clean).all()
    with pytest.raises(ValueError, match="outside"):
        crf_from_labels(img, np.full(clean.shape, 5, np.uint8), 3, **CRF)


# --------------------------------------------------------------------------- make_pseudo_masks


def _fake_dataset_and_maps(tmp_path, n=8, stride=8, scale=1.0):
    from icd_pipeline.maps_io import MapsWriter

    root = tmp_path / "data"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    names = ["background", "a", "b", "c"]
    (root / "dataset.json").write_text(json.dumps({"class_names": names}))
    rng = np.random.default_rng(0)
    ids, rows = [], ["id,split,a,b,c"]
    maps_path = tmp_path / "maps.h5"
    with MapsWriter(maps_path, attrs={"stride": stride, "input_scale": scale, "class_names": names}) as w:
        for i in range(n):
            h, wd = (40, 56) if i % 2 else (48, 40)
            img = np.zeros((h, wd, 3), np.uint8)
            img[:] = (90, 140, 60)
            img[8:30, 6:30] = (220, 30, 30)
            img[20:40, 24:] = (30, 30, 220)
            img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
            image_id = f"img{i:02d}"
            Image.fromarray(img).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            cls = [1, 3] if i % 3 else [2]
            sh, sw = round(h * scale), round(wd * scale)
            vh, vw = -(-sh // stride), -(-sw // stride)
            td = rng.normal(-0.5, 1.0, size=(len(cls), vh, vw)).astype(np.float32)
            cam = rng.normal(0.0, 1.0, size=(len(cls), vh, vw)).astype(np.float32)
            w.write(image_id, cam, td, cls, (h, wd), scaled_hw=(sh, sw))
            ids.append(image_id)
            rows.append(f"{image_id},train," + ",".join("1" if c in cls else "0" for c in (1, 2, 3)))
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "image_labels.csv").write_text("\n".join(rows) + "\n")
    return root, maps_path, ids


def _pm_json():
    return json.dumps({"pseudo_masks": {"cam_bg_threshold": 0.3, "crf": {"iterations": 5}}})


def test_make_pseudo_masks_identical_for_1_and_2_workers(tmp_path):
    root, maps_path, ids = _fake_dataset_and_maps(tmp_path)
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"masks{workers}"
        rc = mpm.main(["--config-json", _pm_json(), "--data-root", str(root), "--split", "train",
                       "--maps", str(maps_path), "--out-dir", str(out), "--workers", str(workers)])
        assert rc == 0
        outs.append(out)
    for method in mpm.METHODS:
        for i in ids:
            a = (outs[0] / method / f"{i}.png").read_bytes()
            assert a == (outs[1] / method / f"{i}.png").read_bytes()
            m = read_mask(outs[0] / method / f"{i}.png", 4)
            assert m.shape == ((40, 56) if int(i[3:]) % 2 else (48, 40))
    manifest = json.loads((outs[0] / "manifest.json").read_text())
    assert manifest["num_images"] == len(ids) and manifest["methods"] == list(mpm.METHODS)
    assert manifest["num_labels"] == 4 and manifest["config"]["crf"]["iterations"] == 5
    # the CAM baseline never marks ignore; the labels used are among the image's classes
    assert manifest["pixel_fractions"]["cam"]["ignore"] == 0
    single = read_mask(outs[0] / "icd_seed" / "img00.png")
    assert set(np.unique(single)) <= {0, 2, 255}


def test_make_pseudo_masks_failure_leaves_no_out_dir(tmp_path, capsys):
    root, maps_path, ids = _fake_dataset_and_maps(tmp_path, n=6)
    (root / "JPEGImages" / f"{ids[4]}.jpg").write_bytes(b"broken")
    out = tmp_path / "masks"
    rc = mpm.main(["--config-json", _pm_json(), "--data-root", str(root), "--maps", str(maps_path),
                   "--out-dir", str(out), "--workers", "2"])
    assert rc == 1
    assert f"{ids[4]}.jpg" in capsys.readouterr().err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".masks")]


def test_make_pseudo_masks_missing_ids_and_class_mismatch(tmp_path, capsys):
    root, maps_path, ids = _fake_dataset_and_maps(tmp_path, n=3)
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text(split.read_text() + "ghost\n")
    (root / "JPEGImages" / "ghost.jpg").write_bytes((root / "JPEGImages" / f"{ids[0]}.jpg").read_bytes())
    rc = mpm.main(["--config-json", _pm_json(), "--data-root", str(root), "--maps", str(maps_path),
                   "--out-dir", str(tmp_path / "m"), "--workers", "1"])
    assert rc == 1 and "ghost" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_crf_over_present_labels_only_assigns_them():
    from icd_pipeline.crf import crf_from_labels

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    labels = np.full((24, 32), 255, np.uint8)
    labels[:8] = 0
    labels[10:16, 4:12] = 7
    labels[18:, 20:] = 12
    out = crf_from_labels(image, labels, 21, present=[7, 12], iterations=3)
    assert set(np.unique(out).tolist()) <= {0, 7, 12, 255}
    assert (out[:8] == 0).mean() > 0.9 and (out[10:16, 4:12] == 7).mean() > 0.75
    full = crf_from_labels(image, labels, 21, iterations=3)  # all 21 labels: the same seeds win
    assert ((out == full) | (full == 255)).mean() > 0.9
    with pytest.raises(ValueError, match="present classes"):
        crf_from_labels(image, labels, 21, present=[7], iterations=1)
