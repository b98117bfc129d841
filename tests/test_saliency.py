"""Saliency-guided seeds (spec 5.4) and the synthetic saliency stand-in."""

import numpy as np
import pytest
from PIL import Image

from icd_pipeline.data.synthetic import generate, render_saliency, resolve_params
from icd_pipeline.data.voc import DataError
from icd_pipeline.stages.make_pseudo_masks import check_saliency, methods_for, pseudo_masks_for_image, read_saliency
from icd_pipeline.seeds import VOID, icd_seed, saliency_seed


def _maps():
    # one class (id 3): ICD foreground on the left half, background on the right half
    td = np.full((1, 4, 6), -1.0, np.float32)
    td[0, :, :3] = 2.0
    return td, np.zeros_like(td)


def test_saliency_background_and_disagreement_to_void():
    td, cam = _maps()
    sal = np.zeros((4, 6), np.float32)
    sal[:, :2] = 1.0          # salient: columns 0-1
    seed = saliency_seed(td, cam, [3], sal)
    # col 0-1: ICD fg and salient -> class; col 2: ICD fg but not salient -> 255;
    # col 3-5: not ICD fg and not salient -> background
    assert (seed[:, :2] == 3).all()
    assert (seed[:, 2] == VOID).all()
    assert (seed[:, 3:] == 0).all()
    # salient but not ICD foreground -> neither FG nor BG -> 255
    sal[:, 4] = 0.5
    seed = saliency_seed(td, cam, [3], sal)
    assert (seed[:, 4] == VOID).all()
    # the ICD-background variant differs: col 2 is foreground there
    assert (icd_seed(td, cam, [3])[:, 2] == 3).all()


def test_small_salient_area_falls_back_to_icd_background():
    td, cam = _maps()
    sal = np.zeros((4, 6), np.float32)   # nothing salient: area 0 < 1 %
    seed = saliency_seed(td, cam, [3], sal)
    # BG must also be ICD background: the ICD-foreground half is FG and not BG -> class
    assert (seed[:, :3] == 3).all() and (seed[:, 3:] == 0).all()
    # without the fallback (min area 0) the left half would be ignored (FG and BG both)
    seed = saliency_seed(td, cam, [3], sal, min_salient_area=0.0)
    assert (seed[:, :3] == VOID).all()


def test_icd_sal_mask_per_image_without_crf():
    td, cam = _maps()
    image = np.zeros((4, 6, 3), np.uint8)
    record = {"td": td, "cam": cam, "class_ids": [3], "image_hw": (4, 6), "valid_hw": (4, 6)}
    sal = np.zeros((4, 6), np.float32)
    sal[:, :2] = 1.0
    out = pseudo_masks_for_image(image, record, 4, {"crf": {"iterations": 1}}, None,
                                 {"background": "saliency", "saliency_crf": False}, sal)
    np.testing.assert_array_equal(out["icd_sal"], saliency_seed(td, cam, [3], sal))
    assert methods_for({"background": "saliency"})[-1] == "icd_sal"
    assert methods_for({"background": "icd"}) == ("cam", "cam_crf", "icd_seed", "icd_crf")


def test_missing_saliency_maps_are_listed(tmp_path):
    ids = [f"im{i:02d}" for i in range(14)]
    for i in ids[:2]:
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(DataError, match=r"12 saliency map\(s\) missing.*im02.*im11") as err:
        check_saliency(ids, tmp_path)
    assert "im12" not in str(err.value)  # first ten only


def test_saliency_png_resized_and_scaled(tmp_path):
    Image.fromarray(np.full((8, 10), 255, np.uint8)).save(tmp_path / "s.png")
    sal = read_saliency(tmp_path / "s.png", (4, 5))
    assert sal.shape == (4, 5) and np.allclose(sal, 1.0)


def test_synthetic_saliency_is_a_degraded_foreground(tmp_path):
    params = resolve_params({"num_classes": 3, "image_size": 64, "num_train": 6, "num_val": 2})
    generate(tmp_path / "d", params, seed=1, progress=False)
    from icd_pipeline.data.voc import read_mask

    agree, total = 0, 0
    for i in range(6):
        sal = np.asarray(Image.open(tmp_path / "d" / "Saliency" / f"train_{i:05d}.png"))
        mask = read_mask(tmp_path / "d" / "SegmentationClass" / f"train_{i:05d}.png")
        fg = mask != 0
        agree += ((sal >= 128) == fg).sum()
        total += fg.size
        assert sal.dtype == np.uint8 and sal.shape == mask.shape
    assert 0.75 < agree / total < 0.995  # informative but not the ground truth
    # no degradation: the stand-in is exactly the foreground
    exact = resolve_params({"num_classes": 3, "image_size": 64,
                            "saliency": {"miss": 0, "false_positive": 0, "blur": 0}})
    m = np.zeros((64, 64), np.uint8)
    m[10:20, 10:30] = 2
    sal = render_saliency(np.random.default_rng(0), m, exact)
    np.testing.assert_array_equal(sal == 255, m != 0)
    # turned off: no Saliency folder
    off = dict(params, saliency={"enabled": False})
    generate(tmp_path / "e", off, seed=1, progress=False)
    assert not (tmp_path / "e" / "Saliency").exists()
