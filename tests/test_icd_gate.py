"""ICD seeds that cannot lose a class to the CAM (issue 33): the per-image agreement gate
(seeds.icd_image_gate), the spread gate (seeds.icd_spread_gate), the cover gate
(seeds.icd_cover_gate) and the CAM blend (seeds.icd_cam_blend)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from icd_pipeline.data.voc import read_mask
from icd_pipeline.seeds import (blend_seed, cam_seed, icd_seed, image_agreement, image_extent, image_gate_classes,
                                image_spread)
from icd_pipeline.stages import make_pseudo_masks as mpm

from tests.test_cam_fallback import two_class_maps


def test_image_agreement_is_the_pearson_correlation_per_class():
    rng = np.random.default_rng(0)
    cam = rng.normal(size=(3, 5, 7))
    td = np.stack([2 * cam[0] + 1, -cam[1], rng.normal(size=(5, 7))])
    a = image_agreement(td, cam)
    assert a[0] == pytest.approx(1.0)
    assert a[1] == pytest.approx(-1.0)
    assert a[2] == pytest.approx(np.corrcoef(td[2].ravel(), cam[2].ravel())[0, 1])
    # a flat map has no direction: 0, not NaN
    flat = image_agreement(np.zeros((1, 4, 4)), cam[:1, :4, :4])
    assert flat.tolist() == [0.0]
    with pytest.raises(ValueError, match="one shape"):
        image_agreement(td, cam[:2])


def test_image_gate_picks_the_classes_whose_map_disagrees_with_the_cam():
    td, cam = two_class_maps()   # class 3's top-down map is the top rows, its CAM the right columns
    a = image_agreement(td, cam)
    assert a[0] > 0.9 and a[1] < 0.2
    assert image_gate_classes(td, cam, [1, 3], None) == []
    assert image_gate_classes(td, cam, [1, 3], 0.2) == [3]
    assert image_gate_classes(td, cam, [1, 3], -1.0) == []
    # gated classes take the CAM rule in the paper's seed
    gated = icd_seed(td, cam, [1, 3], cam_fallback=image_gate_classes(td, cam, [1, 3], 0.2), cam_threshold=0.3)
    assert (gated[2:, 5:] == 3).all() and not (gated[:2, :4] == 3).any()


def test_image_spread_is_the_ratio_of_foreground_areas():
    td, cam = two_class_maps()
    # class 1: both maps call the 24 left pixels; class 3: the top rows (16) against columns 5-7
    # (18; column 4 is 0.25 of the maximum, below 0.3)
    assert image_spread(td, cam, 0.2, 0.3).tolist() == pytest.approx([1.0, 16 / 18])
    flood = td.copy()
    flood[1] = 1.0                                   # class 3's map is the whole image: 48 / 18
    assert image_spread(flood, cam, 0.2, 0.3)[1] == pytest.approx(48 / 18)
    assert image_spread(flood, cam, 0.2, 0.2)[1] == pytest.approx(48 / 24)   # column 4 joins the CAM
    # a CAM with nothing positive counts as one pixel, not a division by zero
    assert image_spread(flood[1:], -np.ones_like(cam[1:]), 0.2, 0.3).tolist() == [48.0]
    with pytest.raises(ValueError, match="one shape"):
        image_spread(td, cam[:1], 0.2, 0.3)


def test_spread_gate_sends_a_flooding_class_to_the_cam():
    td, cam = two_class_maps()
    flood = td.copy()
    flood[1] = 1.0 + np.linspace(0, 0.1, 8)[None, :]   # correlates with the CAM, yet covers the image
    record = {"class_ids": [1, 3], "td": flood, "cam": cam, "image_hw": (6, 8), "valid_hw": None}
    assert image_agreement(flood, cam)[1] > 0.5
    assert mpm.image_gate_for(record, {"icd_image_gate": 0.0}) == []
    pm = {"cam_bg_threshold": 0.3}
    seeds_cfg = {"icd_image_gate": 0.0, "icd_spread_gate": 2.0, "icd_fg_threshold": 0.2}
    assert mpm.image_gate_for(record, seeds_cfg, pm) == [3]
    assert mpm.image_gate_for(record, {**seeds_cfg, "icd_spread_gate": 3.0}, pm) == []
    # the gated class takes the CAM rule: columns 5-7, not the whole image
    seed = mpm.icd_seed_for(flood, cam, [1, 3], pm, seeds_cfg, image_cam_only=[3])
    assert (seed[:, 5:] == 3).all() and not (seed[:, :5] == 3).any()


def test_cover_gate_sends_a_map_without_background_to_the_cam():
    td, cam = two_class_maps()
    flood = td.copy()
    flood[1] = 1.0 + np.linspace(0, 0.1, 8)[None, :]   # agrees with the CAM, covers all 48 pixels
    record = {"class_ids": [1, 3], "td": flood, "cam": cam, "image_hw": (6, 8), "valid_hw": None}
    pm = {"cam_bg_threshold": 0.3}
    seeds_cfg = {"icd_image_gate": 0.0, "icd_fg_threshold": 0.2}
    td_fg, _ = image_extent(*mpm.image_maps(record, None)[::-1], 0.2, 0.3)
    assert td_fg[1] == 48 and td_fg[0] < 0.9 * 48
    assert mpm.image_gate_for(record, seeds_cfg, pm) == []
    assert mpm.image_gate_for(record, {**seeds_cfg, "icd_cover_gate": 0.9}, pm) == [3]
    # the gate is "more than": a map covering exactly the share is kept
    assert mpm.image_gate_for(record, {**seeds_cfg, "icd_cover_gate": 1.0}, pm) == []
    # on its own, without the correlation gate
    assert mpm.image_gate_for(record, {"icd_cover_gate": 0.9, "icd_fg_threshold": 0.2}, pm) == [3]


def test_image_gate_min_spread_spares_a_compact_map_that_disagrees():
    cam = np.zeros((2, 6, 8), np.float32)
    cam[0, :, :3] = 1.0                                # class 1's CAM: columns 0-2 (18 pixels)
    cam[1, :, 6:] = 1.0                                # class 3's CAM: columns 6-7 (12 pixels)
    td = np.zeros_like(cam)
    td[0, :, 3:5] = 1.0                                # compact, beside its CAM: 12 pixels, ratio 2/3
    td[1, :, :6] = 1.0                                 # the rest of the image: 36 pixels, ratio 3
    record = {"class_ids": [1, 3], "td": td, "cam": cam, "image_hw": (6, 8), "valid_hw": None}
    assert (image_agreement(td, cam) < 0).all()
    pm = {"cam_bg_threshold": 0.3}
    seeds_cfg = {"icd_image_gate": 0.0, "icd_fg_threshold": 0.2}
    assert mpm.image_gate_for(record, seeds_cfg, pm) == [1, 3]
    assert mpm.image_gate_for(record, {**seeds_cfg, "icd_image_gate_min_spread": 2.0}, pm) == [3]
    assert mpm.image_gate_for(record, {**seeds_cfg, "icd_image_gate_min_spread": 3.0}, pm) == []
    # the spread alone does not gate: without icd_image_gate nothing is sent to the CAM
    assert mpm.image_gate_for(record, {"icd_image_gate_min_spread": 2.0, "icd_fg_threshold": 0.2}, pm) == []
    # with the spread gate as well, a class past it is gated whatever its correlation
    both = {**seeds_cfg, "icd_image_gate_min_spread": 3.0, "icd_spread_gate": 2.5}
    assert mpm.image_gate_for(record, both, pm) == [3]


def test_blend_seed_limits():
    td, cam = two_class_maps()
    # all weight on the CAM: the CAM seed at the same threshold
    for t in (0.2, 0.3, 0.6):
        assert np.array_equal(blend_seed(td, cam, [1, 3], 1.0, t), cam_seed(cam, [1, 3], t))
    # no weight on the CAM: the CAM rule on the top-down map
    assert np.array_equal(blend_seed(td, cam, [1, 3], 0.0, 0.3), cam_seed(td, [1, 3], 0.3))
    # every class CAM-only: the CAM seed whatever the weight
    assert np.array_equal(blend_seed(td, cam, [1, 3], 0.5, 0.3, cam_only=[1, 3]), cam_seed(cam, [1, 3], 0.3))
    # with the CAM seed's threshold, a fallback class is cut where the CAM seed cuts it, not at the
    # blend's threshold: column 4 (0.25 of class 3's maximum) is class 3 at 0.2 only with the CAM's
    assert np.array_equal(blend_seed(td, cam, [1, 3], 0.5, 0.3, cam_only=[1, 3], cam_threshold=0.2),
                          cam_seed(cam, [1, 3], 0.2))
    assert (blend_seed(td, cam, [1, 3], 0.5, 0.2, cam_only=[3], cam_threshold=0.3)[:, 4] != 3).all()
    assert (blend_seed(td, cam, [1, 3], 0.5, 0.2, cam_only=[3])[2:, 4] == 3).all()
    with pytest.raises(ValueError, match="cam_weight"):
        blend_seed(td, cam, [1, 3], 1.5, 0.3)
    with pytest.raises(ValueError, match="threshold"):
        blend_seed(td, cam, [1, 3], 0.5, 0.0)


def test_blend_damps_a_direction_on_the_background():
    """Class 3's top-down map is the top rows, its CAM the right columns (0.25 of its maximum on
    column 4). Half and half: 1.0 where both agree (top rows, columns 5-7), 0.625 on the top row of
    column 4, 0.5 where one of them alone says class 3. At 0.7 only the agreement is kept; the
    paper's seed gives class 3 the whole top rows between the objects."""
    td, cam = two_class_maps()
    seed = blend_seed(td, cam, [1, 3], 0.5, 0.7)
    assert (seed[:, :4] == 1).all()             # class 1: both maps agree
    assert (seed[:2, 5:] == 3).all()
    assert (seed[:2, 4] == 0).all() and (seed[2:, 4:] == 0).all()
    assert (blend_seed(td, cam, [1, 3], 0.5, 0.6)[:2, 4] == 3).all()   # 0.625 >= 0.6
    paper = icd_seed(td, cam, [1, 3])
    assert (paper[:2, 4] == 3).all()


def test_stage_applies_the_gate_and_the_blend_and_records_the_gate(tmp_path):
    from tests.test_seeds_crf import _fake_dataset_and_maps  # noqa: PLC0415
    from icd_pipeline.maps_io import MapsReader

    root, maps_path, ids = _fake_dataset_and_maps(tmp_path, n=6)
    base = {"pseudo_masks": {"cam_bg_threshold": 0.3, "crf": {"iterations": 2}}}
    # a gate every map passes (correlation >= -1) changes nothing
    out_paper, out_open = tmp_path / "paper", tmp_path / "open"
    for out, seeds in ((out_paper, {}), (out_open, {"icd_image_gate": -1.0})):
        assert mpm.main(["--config-json", json.dumps({**base, "seeds": seeds}), "--data-root", str(root),
                         "--maps", str(maps_path), "--out-dir", str(out), "--workers", "1"]) == 0
    for i in ids:
        assert np.array_equal(read_mask(out_paper / "icd_crf" / f"{i}.png"), read_mask(out_open / "icd_crf" / f"{i}.png"))
    manifest = json.loads((out_open / "manifest.json").read_text())
    assert manifest["image_gate"] and all(g == 0 for g, _ in manifest["image_gate"].values())
    assert sum(n for _, n in manifest["image_gate"].values()) >= len(ids)
    # a gate no map passes (correlation >= 1.0 is never reached by noisy maps): every seed is the CAM's
    out_shut = tmp_path / "shut"
    assert mpm.main(["--config-json", json.dumps({**base, "seeds": {"icd_image_gate": 1.0}}), "--data-root",
                     str(root), "--maps", str(maps_path), "--out-dir", str(out_shut), "--workers", "2"]) == 0
    manifest = json.loads((out_shut / "manifest.json").read_text())
    with MapsReader(maps_path) as r:
        gated = {i: mpm.image_gate_for(r.read(i), {"icd_image_gate": 1.0}) for i in ids}
    assert sum(g for g, _ in manifest["image_gate"].values()) == sum(len(v) for v in gated.values())
    for i in ids:
        with MapsReader(maps_path) as r:
            present = [int(c) for c in r.read(i)["class_ids"]]
        if sorted(gated[i]) == present:
            assert np.array_equal(read_mask(out_shut / "icd_seed" / f"{i}.png"), read_mask(out_shut / "cam" / f"{i}.png"))
    # a spread gate no class exceeds changes nothing; one every class exceeds gives the CAM seed
    for name, above in (("wide", 1e9), ("narrow", 1e-6)):
        assert mpm.main(["--config-json", json.dumps({**base, "seeds": {"icd_spread_gate": above}}), "--data-root",
                         str(root), "--maps", str(maps_path), "--out-dir", str(tmp_path / name), "--workers", "1"]) == 0
    narrow = json.loads((tmp_path / "narrow" / "manifest.json").read_text())["image_gate"]
    assert sum(g for g, _ in narrow.values()) == sum(n for _, n in narrow.values()) > 0
    for i in ids:
        assert np.array_equal(read_mask(tmp_path / "wide" / "icd_crf" / f"{i}.png"),
                              read_mask(out_paper / "icd_crf" / f"{i}.png"))
        assert np.array_equal(read_mask(tmp_path / "narrow" / "icd_seed" / f"{i}.png"),
                              read_mask(tmp_path / "narrow" / "cam" / f"{i}.png"))
    # the blend at full CAM weight is the CAM seed at the blend threshold (0.3 = cam_bg_threshold here)
    out_blend = tmp_path / "blend"
    cfg = {**base, "seeds": {"icd_cam_blend": 1.0, "icd_blend_threshold": 0.3}}
    assert mpm.main(["--config-json", json.dumps(cfg), "--data-root", str(root), "--maps", str(maps_path),
                     "--out-dir", str(out_blend), "--workers", "1"]) == 0
    for i in ids:
        assert np.array_equal(read_mask(out_blend / "icd_seed" / f"{i}.png"), read_mask(out_blend / "cam" / f"{i}.png"))
        assert np.array_equal(read_mask(out_blend / "icd_crf" / f"{i}.png"), read_mask(out_blend / "cam_crf" / f"{i}.png"))


def test_bad_blend_settings_are_refused_by_the_schema(tmp_path):
    from tests.test_seeds_crf import _fake_dataset_and_maps  # noqa: PLC0415

    root, maps_path, _ = _fake_dataset_and_maps(tmp_path, n=3)
    for seeds in ({"icd_cam_blend": 1.5}, {"icd_blend_threshold": 0}, {"icd_image_gate": 2},
                  {"icd_spread_gate": 0}, {"icd_image_gate_min_spread": -1}, {"icd_cover_gate": 0},
                  {"icd_cover_gate": 1.5}):
        out = tmp_path / "bad"
        cfg = {"pseudo_masks": {"crf": {"iterations": 1}}, "seeds": seeds}
        assert mpm.main(["--config-json", json.dumps(cfg), "--data-root", str(root), "--maps", str(maps_path),
                         "--out-dir", str(out), "--workers", "1"]) == 1
        assert not out.exists()


def test_seed_sweep_builds_the_stage_seed():
    """benchmarks/icd_seed_sweep.py, which chose the issue-33 settings, must make the stage's seed
    for the same settings (gates, minimum spread, class fallback)."""
    import importlib.util  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "icd_seed_sweep.py"
    spec = importlib.util.spec_from_file_location("icd_seed_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    rng = np.random.default_rng(1)
    cam = rng.normal(size=(2, 6, 8)).astype(np.float32)
    td = rng.normal(size=(2, 6, 8)).astype(np.float32)
    td[0] = cam[0] + 0.1 * td[0]                          # class 1 agrees with its CAM
    td[1] = -cam[1] + 0.5                                 # class 3 disagrees with its CAM and spreads
    record = {"class_ids": [1, 3], "td": td, "cam": cam, "image_hw": (6, 8), "valid_hw": None}
    pm = {"cam_bg_threshold": 0.4}
    sd = {"icd_bg_threshold": 1e-5, "icd_fg_threshold": 0.2, "icd_cam_blend": 0.5, "icd_blend_threshold": 0.3}
    cfg = {"pseudo_masks": pm, "seeds": sd}
    for min_spread, class_fallback in ((None, ()), (1.0, ()), (50.0, ()), (1.0, (1,))):
        rows = sweep.seeds_of(record, td, cam, cfg, [0.0], [(0.5, 0.3)], min_spreads=[min_spread],
                              class_fallback=class_fallback)
        stage_cfg = {**sd, "icd_image_gate": 0.0, "icd_image_gate_min_spread": min_spread}
        gated = mpm.image_gate_for(record, stage_cfg, pm)
        expected = mpm.icd_seed_for(td, cam, [1, 3], pm, stage_cfg, class_fallback, gated)
        tag = " gate 0" + ("" if min_spread is None else f" if spread > {min_spread:g}")
        assert np.array_equal(rows["blend 0.5/0.3" + tag], expected)
    assert mpm.image_gate_for(record, {**sd, "icd_image_gate": 0.0}, pm) == [3]
    assert mpm.image_gate_for(record, {**sd, "icd_image_gate": 0.0, "icd_image_gate_min_spread": 50.0}, pm) == []
