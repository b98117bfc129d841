"""Per-class CAM fallback of the ICD seeds (issue 33, seeds.cam_fallback_below)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from icd_pipeline.stages import make_pseudo_masks as mpm
from icd_pipeline.data.voc import read_mask
from icd_pipeline.models.backbones import build_backbone
from icd_pipeline.models.icd import ICDModel, load_icd_model, save_icd_checkpoint
from icd_pipeline.seeds import VOID, cam_fallback_classes, cam_seed, icd_seed


def two_class_maps():
    """Class 1 on the left, class 3 on the right (CAM); ICD's map of class 3 is wrong: positive
    on the top rows instead."""
    H, W = 6, 8
    cam = np.zeros((2, H, W), np.float32)
    cam[0, :, :4] = 2.0
    cam[1, :, 5:] = 4.0
    cam[1, :, 4] = 1.0   # 0.25 of class 3's maximum: below a 0.3 threshold
    td = -np.ones((2, H, W), np.float32)
    td[0, :, :4] = 1.0
    td[1, :2, :] = 1.0
    return td, cam


def test_no_fallback_is_the_paper_seed():
    td, cam = two_class_maps()
    assert np.array_equal(icd_seed(td, cam, [1, 3], cam_fallback=()), icd_seed(td, cam, [1, 3]))


def test_fallback_class_takes_the_cam_rule_and_the_other_keeps_icd():
    td, cam = two_class_maps()
    seed = icd_seed(td, cam, [1, 3], cam_fallback=[3], cam_threshold=0.3)
    # class 3 now where its normalised CAM reaches 0.3 (columns 5-7), not on ICD's top rows
    assert (seed[2:, 5:] == 3).all()
    assert not (seed[:2, :4] == 3).any()
    # class 1 is still ICD's: its T > 0 on the left half
    assert (seed[:, :4] == 1).all()
    # column 4: ICD says background for class 1, the CAM (0.25 < 0.3) says background for class 3
    assert (seed[:, 4] == 0).all()
    # without the fallback the wrong ICD map of class 3 claims the top rows of the middle
    paper = icd_seed(td, cam, [1, 3])
    assert (paper[:2, 4] == 3).all()


def test_every_class_falling_back_gives_the_cam_seed_exactly():
    td, cam = two_class_maps()
    for t in (0.2, 0.3, 0.6):
        assert np.array_equal(icd_seed(td, cam, [1, 3], cam_fallback=[1, 3], cam_threshold=t),
                              cam_seed(cam, [1, 3], t))
    assert VOID not in icd_seed(td[:1], cam[:1], [1], cam_fallback=[1])
    with pytest.raises(ValueError, match="not among"):
        icd_seed(td, cam, [1, 3], cam_fallback=[2])


def test_cam_fallback_classes():
    assert cam_fallback_classes([0.5, 0.1, -0.2, 0.3], None) == []
    assert cam_fallback_classes([0.5, 0.1, -0.2, 0.3], 0.3) == [2, 3]
    assert cam_fallback_classes([0.5, 0.1, -0.2, 0.3], 0.31) == [2, 3, 4]
    with pytest.raises(ValueError, match="agreement"):
        cam_fallback_classes(None, 0.2)
    with pytest.raises(ValueError, match="agreement"):
        cam_fallback_classes([0.5, float("nan")], 0.2)


def test_stage_reads_the_agreement_from_the_maps_file(tmp_path):
    from tests.test_seeds_crf import _fake_dataset_and_maps  # noqa: PLC0415
    from icd_pipeline.maps_io import MapsReader, MapsWriter

    root, maps_path, ids = _fake_dataset_and_maps(tmp_path, n=6)
    # the same maps with an agreement per class: b (class 2) low, a and c high
    agreed = tmp_path / "maps_agree.h5"
    with MapsReader(maps_path) as r, MapsWriter(agreed, attrs={**r.attrs, "class_agreement": [0.6, 0.05, 0.7]},
                                                encoding=r.encoding) as w:
        for i in r.ids:
            rec = r.read(i)
            w.write(i, rec["cam"], rec["td"], rec["class_ids"], rec["image_hw"], scaled_hw=rec["scaled_hw"])
    cfg = {"pseudo_masks": {"cam_bg_threshold": 0.3, "crf": {"iterations": 2}}, "seeds": {"cam_fallback_below": 0.2}}
    out = tmp_path / "masks"
    assert mpm.main(["--config-json", json.dumps(cfg), "--data-root", str(root), "--maps", str(agreed),
                     "--out-dir", str(out), "--workers", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cam_fallback"] == ["b"]
    # images of class b alone (every third): the ICD seed is the CAM seed
    for i in ids[::3]:
        assert np.array_equal(read_mask(out / "icd_seed" / f"{i}.png"), read_mask(out / "cam" / f"{i}.png"))
        assert np.array_equal(read_mask(out / "icd_crf" / f"{i}.png"), read_mask(out / "cam_crf" / f"{i}.png"))
    # a maps file without the agreement cannot honour the setting: a clear error, no output
    out2 = tmp_path / "masks2"
    assert mpm.main(["--config-json", json.dumps(cfg), "--data-root", str(root), "--maps", str(maps_path),
                     "--out-dir", str(out2), "--workers", "1"]) == 1
    assert not out2.exists()


def test_checkpoints_carry_the_agreement_and_older_ones_load_without_it(tmp_path):
    torch.manual_seed(0)
    model = ICDModel(build_backbone("tiny", pretrained=False, output_stride=8), 3, head_channels=16)
    model.agree_acc.copy_(torch.tensor([[0.5], [0.1], [-0.3]]))
    cfg = {"backbone": "tiny", "pretrained": False, "output_stride": 8, "head_channels": 16}
    path = tmp_path / "model.pt"
    save_icd_checkpoint(path, model, cfg, ["a", "b", "c"])
    loaded, _ = load_icd_model(path)
    assert loaded.working_agreement().tolist() == pytest.approx([0.5, 0.1, -0.3])
    # a checkpoint written before issue 33 has neither buffer: agreement unknown (NaN)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["agree_acc"], ckpt["state_dict"]["direction"]
    torch.save(ckpt, path)
    old, _ = load_icd_model(path)
    assert torch.isnan(old.working_agreement()).all()
