import os
import stat

import pytest

from icd_pipeline.misc.io import atomic_dir, atomic_path


def test_atomic_path_renames_on_success_and_cleans_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("hello")
        assert not target.exists()
    assert target.read_text() == "hello"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "fail.txt") as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_atomic_dir_replaces_existing_and_cleans_on_failure(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "e") as tmp:
            (tmp / "x").write_text("x")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_whole_image_inference_turns_cudnn_off_on_cuda_only():
    import torch

    from icd_pipeline.misc.runtime import inference_memory_format, whole_image_inference

    before = torch.backends.cudnn.enabled
    with whole_image_inference(torch.device("cuda")):
        assert torch.backends.cudnn.enabled is False  # no per-shape cuDNN plans for whole images
    assert torch.backends.cudnn.enabled == before
    with whole_image_inference(torch.device("cpu")):
        assert torch.backends.cudnn.enabled == before
    assert inference_memory_format(torch.device("cuda")) == torch.contiguous_format
    assert inference_memory_format(torch.device("cpu")) == torch.channels_last
