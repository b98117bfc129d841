"""Image+saliency seeds with CAM or ICD classes (seeds.saliency_seeds), agree and all."""

from __future__ import annotations

import numpy as np
import pytest

from icd_pipeline.stages.make_pseudo_masks import methods_for, pseudo_masks_for_image
from icd_pipeline.seeds import VOID, saliency_seed, saliency_seeds


def _two_classes():
    """Classes 2 (left) and 5 (right) on a 6 x 8 image; CAM and ICD agree on who is where."""
    td = np.full((2, 6, 8), -1.0, np.float32)
    td[0, :, :3] = 2.0
    td[1, :, 5:] = 3.0
    cam = np.zeros((2, 6, 8), np.float32)
    cam[0, :, :4] = 1.0
    cam[1, :, 4:] = 2.0
    return td, cam


def test_agree_with_icd_classes_is_the_papers_seed():
    rng = np.random.default_rng(0)
    for _ in range(5):
        td = rng.standard_normal((2, 7, 9)).astype(np.float32)
        cam = rng.standard_normal((2, 7, 9)).astype(np.float32)
        sal = rng.random((7, 9)).astype(np.float32)
        for area in (0.0, 0.9):
            got = saliency_seeds(td, cam, [1, 4], sal, 0.3, area, "agree", 0.3, 0.2, 0.1)["icd"]
            np.testing.assert_array_equal(got, saliency_seed(td, cam, [1, 4], sal, 0.3, area, 0.2, 0.1))


def test_all_gives_every_salient_pixel_a_class():
    td, cam = _two_classes()
    sal = np.zeros((6, 8), np.float32)
    sal[1:5, 1:7] = 0.9                  # salient: a box across both objects
    out = saliency_seeds(td, cam, [2, 5], sal, 0.5, 0.01, "all", cam_bg_threshold=0.3)
    for kind in ("cam", "icd"):
        seed = out[kind]
        assert (seed[sal < 0.5] == 0).all()                 # non-salient: background
        assert set(np.unique(seed[sal >= 0.5])) == {2, 5}   # salient: a class, never 255
    np.testing.assert_array_equal(out["cam"][1:5, 1:4], 2)
    np.testing.assert_array_equal(out["cam"][1:5, 4:7], 5)
    # ICD: its proposals where it has one (cols 0-2 class 2, 5-7 class 5); columns 3-4 have no
    # proposal: the class whose logit is largest relative to its own maximum (both -1/2, -1/3: 5)
    np.testing.assert_array_equal(out["icd"][1:5, 1:3], 2)
    np.testing.assert_array_equal(out["icd"][1:5, 3:7], 5)
    # agree: salient pixels outside the classifier's foreground are 255, and so are non-salient
    # pixels inside it
    agree = saliency_seeds(td, cam, [2, 5], sal, 0.5, 0.01, "agree")["icd"]
    assert (agree[1:5, 3:5] == VOID).all() and (agree[0, :3] == VOID).all() and (agree[1:5, 1:3] == 2).all()


def test_all_leaves_ties_void_and_falls_back_when_nothing_is_salient():
    td, cam = _two_classes()
    cam[:, 2, :] = 0.0                  # row 2: no CAM evidence for either class
    sal = np.ones((6, 8), np.float32)
    seed = saliency_seeds(td, cam, [2, 5], sal, 0.5, 0.01, "all")["cam"]
    assert (seed[2] == VOID).all() and (seed[3] != VOID).all()
    # nothing salient: background must also be the classifier's background, so the CAM's
    # foreground keeps its classes (the image's own CAM seed, instead of all background)
    seed = saliency_seeds(td, cam, [2, 5], np.zeros((6, 8), np.float32), 0.5, 0.01, "all")["cam"]
    assert (seed[3, :4] == 2).all() and (seed[3, 4:] == 5).all()
    with pytest.raises(ValueError, match="assign"):
        saliency_seeds(td, cam, [2, 5], sal, 0.5, 0.01, "some")


def test_pseudo_mask_stage_writes_both_classifiers_with_and_without_crf():
    td, cam = _two_classes()
    image = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    record = {"td": td, "cam": cam, "class_ids": [2, 5], "image_hw": (6, 8), "valid_hw": (6, 8)}
    sal = np.zeros((6, 8), np.float32)
    sal[1:5, 1:7] = 1.0
    seeds_cfg = {"background": "saliency", "saliency_assign": "all", "saliency_crf": True,
                 "saliency_bg_threshold": 0.5}
    out = pseudo_masks_for_image(image, record, 6, {"crf": {"iterations": 1, "labels": "present"}}, None,
                                 seeds_cfg, sal)
    assert set(out) == set(methods_for(seeds_cfg))
    assert set(out) >= {"cam_sal", "cam_sal_crf", "icd_sal", "icd_sal_crf"}
    np.testing.assert_array_equal(out["cam_sal"], saliency_seeds(td, cam, [2, 5], sal, 0.5, 0.01, "all")["cam"])
    assert set(np.unique(out["icd_sal_crf"])) <= {0, 2, 5, VOID}
    assert methods_for({"background": "saliency"})[-2:] == ("cam_sal", "icd_sal")
