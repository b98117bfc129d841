import json
import pickle

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from icd_pipeline.stages import superpixels as sp
from icd_pipeline.superpixels import (
    SuperpixelStore, felzenszwalb_segments, greedy_merge, merge_superpixels, segment_features,
)


def _blocky_image(h, w, seed=0):
    """Non-square image of flat colour blocks (a few dozen FH segments)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    for y in range(0, h, 8):
        for x in range(0, w, 12):
            img[y:y + 8, x:x + 12] = rng.integers(0, 256, 3)
    return img


def _naive_merge(feats, sizes, total, max_regions):
    """The official generate_superpixel.py loop (O(n^2) per step), for reference."""
    feats = feats.astype(np.float64).copy()
    size = sizes.astype(np.float64).copy()
    n = len(size)
    owner = np.arange(n)
    alive = np.ones(n, bool)

    def sim(i, j):
        cos = feats[i] @ feats[j] / (np.linalg.norm(feats[i]) * np.linalg.norm(feats[j]))
        return cos + 1.0 - (size[i] + size[j]) / total

    S = np.full((n, n), -np.inf)
    for i in range(n):
        for j in range(i + 1, n):
            S[i, j] = S[j, i] = sim(i, j)
    while alive.sum() > max_regions:
        i, j = np.unravel_index(S.argmax(), S.shape)
        i, j = min(i, j), max(i, j)
        feats[i] = feats[i] * (size[i] / (size[i] + size[j])) + feats[j] * (size[j] / (size[i] + size[j]))
        size[i] += size[j]
        owner[owner == j] = i
        alive[j] = False
        S[j, :] = S[:, j] = -np.inf
        for k in range(n):
            if alive[k] and k != i:
                S[i, k] = S[k, i] = sim(i, k)
    return np.unique(owner, return_inverse=True)[1]


def test_greedy_merge_matches_official_loop():
    rng = np.random.default_rng(1)
    for n, c, m in ((40, 5, 8), (25, 3, 24), (60, 8, 1)):
        feats = rng.normal(size=(n, c))
        sizes = rng.integers(1, 50, n)
        ours = greedy_merge(feats, sizes, sizes.sum(), m)
        ref = _naive_merge(feats, sizes, sizes.sum(), m)
        np.testing.assert_array_equal(ours, ref)
        assert ours.max() + 1 == min(n, m)


def test_merge_layout_non_square_is_union_of_segments():
    img = _blocky_image(40, 72)
    seg = felzenszwalb_segments(img, 75, 0.8, 20)
    n = seg.max() + 1
    assert n > 10 and set(np.unique(seg)) == set(range(n))
    merged = merge_superpixels(seg, img.astype(np.float64) / 255, max_regions=7)
    assert merged.shape == (40, 72)
    assert merged.max() + 1 == 7 and set(np.unique(merged)) == set(range(7))
    # every FH segment lies inside one merged region, and each region is the union of its
    # segments (pixel for pixel, in the (H, W) layout)
    for s in range(n):
        assert len(np.unique(merged[seg == s])) == 1
    for r in range(7):
        members = np.unique(seg[merged == r])
        np.testing.assert_array_equal(np.isin(seg, members), merged == r)


def test_merge_count_never_exceeds_max_regions():
    img = _blocky_image(33, 50, seed=3)
    seg = felzenszwalb_segments(img, 75, 0.8, 10)
    feats = np.random.default_rng(0).normal(size=(33, 50, 4))
    for m in (1, 5, 64, 1000):
        out = merge_superpixels(seg, feats, m)
        assert out.max() + 1 == min(m, seg.max() + 1)


def test_segment_features_grid_equals_explicit_upsampling():
    rng = np.random.default_rng(2)
    grid = rng.normal(size=(6, 5, 7)).astype(np.float32)           # (C, h, w), cells of 4 px
    up = F.interpolate(torch.from_numpy(grid)[None], size=(20, 28), mode="bilinear",
                       align_corners=False)[0].numpy()
    seg = rng.integers(0, 9, size=(18, 27))                         # image smaller than the grid: crop
    seg[0, 0:9] = np.arange(9)
    dense = up[:, :18, :27].transpose(1, 2, 0)
    a, sa = segment_features(seg, dense)
    b, sb = segment_features(seg, grid, cell=(4.0, 4.0))
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_allclose(a, b, atol=1e-5)


def _fake_dataset(root, n=6, sizes=((48, 64), (64, 48), (40, 40))):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    ids = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        Image.fromarray(_blocky_image(h, w, seed=i)).save(root / "JPEGImages" / f"im{i}.jpg", quality=95)
        ids.append(f"im{i}")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "dataset.json").write_text(json.dumps({"class_names": ["background", "a", "b"]}))
    rows = ["id,split,a,b"] + [f"{i},train,1,0" for i in ids]
    (root / "image_labels.csv").write_text("\n".join(rows) + "\n")
    return ids


def _cfg(backbone="rgb", **kw):
    return json.dumps({"device": "cpu", "superpixels": {"feature_backbone": backbone, "min_size": 20,
                                                         "max_regions": 8, **kw}})


def test_entry_point_store_round_trip_workers_and_pickle(tmp_path):
    ids = _fake_dataset(tmp_path / "data")
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"sp{workers}.h5"
        rc = sp.main(["--config-json", _cfg(), "--data-root", str(tmp_path / "data"), "--split", "train",
                      "--out", str(out), "--workers", str(workers), "--batch-size", "4"])
        assert rc == 0
        outs[workers] = out
    store = SuperpixelStore(outs[1])
    other = SuperpixelStore(outs[2])
    assert sorted(store.ids) == sorted(ids)
    assert store.attrs["feature_backbone"] == "rgb" and store.attrs["max_regions"] == 8
    for i in ids:
        m = store(i)
        assert m.dtype == np.int64 and m.max() < 8
        h, w = Image.open(tmp_path / "data" / "JPEGImages" / f"{i}.jpg").size[::-1]
        assert m.shape == (h, w)
        np.testing.assert_array_equal(m, other(i))
    with h5py.File(outs[1]) as f:
        assert f[ids[0]].dtype == np.uint8 and f[ids[0]].compression == "gzip"
    clone = pickle.loads(pickle.dumps(store))
    assert clone._h5 is None
    np.testing.assert_array_equal(clone(ids[1]), store(ids[1]))
    with pytest.raises(KeyError, match="nope"):
        store("nope")
    assert not list(tmp_path.glob(".*.tmp"))


def test_entry_point_with_network_features(tmp_path):
    ids = _fake_dataset(tmp_path / "data", n=3)
    out = tmp_path / "sp.h5"
    rc = sp.main(["--config-json", _cfg("tiny", feature_output_stride=8), "--data-root", str(tmp_path / "data"),
                  "--out", str(out), "--workers", "1"])
    assert rc == 0
    store = SuperpixelStore(out)
    assert all(store(i).max() < 8 for i in ids)
    assert store.attrs["merged_images"] == 3 and store.attrs["mean_fh_segments"] > 8


def test_failure_leaves_no_file(tmp_path, capsys):
    _fake_dataset(tmp_path / "data", n=4)
    (tmp_path / "data" / "JPEGImages" / "im2.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "sp.h5"
    rc = sp.main(["--config-json", _cfg(), "--data-root", str(tmp_path / "data"), "--out", str(out),
                  "--workers", "2", "--batch-size", "1"])
    assert rc == 1
    assert "im2.jpg" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
