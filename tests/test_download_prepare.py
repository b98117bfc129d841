"""VOC/SBD download (mirrors, resume, md5, safe extraction) and preparation, end to end
against a local HTTP server on 127.0.0.1; folder validation, including the real sample."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from icd_pipeline.data import download as dl
from icd_pipeline.stages import download as download_stage
from icd_pipeline.data.voc import VOC_CLASSES, DataError, VOCLayout, read_mask, write_palette_png
from icd_pipeline.stages import validate_dataset, prepare_voc

SAMPLE = Path(os.environ.get("ICD_VOC_SAMPLE", "/work/shared/data/voc2012-sample/VOC2012"))

# --------------------------------------------------------------------------- local server


class _Server:
    """Serves ``files`` (url path -> bytes). Per-path behaviour in ``modes``:
    "404"; "cut_once" (first request: full Content-Length, half the body, then close);
    "ignore_range" (always 200 with the whole body). Range requests are honoured otherwise.
    Every request's (path, Range header) goes to ``log``."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.log: list[tuple[str, str | None]] = []
        self.cut_done: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.log.append((self.path, rng))
                mode = server.modes.get(self.path)
                body = server.files.get(self.path)
                if body is None or mode == "404":
                    self.send_error(404, "Not Found")
                    return
                if mode == "cut_once" and self.path not in server.cut_done:
                    server.cut_done.add(self.path)
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if rng and mode != "ignore_range" and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    chunk = body[start:]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                    self.send_header("Content-Length", str(len(chunk)))
                    self.end_headers()
                    self.wfile.write(chunk)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def requests(self, path: str) -> list[str | None]:
        return [r for p, r in self.log if p == path]


@pytest.fixture
def server():
    srv = _Server()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=5)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- tiny VOC / SBD

# id -> (object classes in the XML, mask class used in the painted box)
IDS = {
    "2008_000001": ["cat"],            # VOC train, official mask
    "2008_000002": ["dog", "person"],  # VOC train + SBD train: official mask wins
    "2008_000003": ["horse"],          # VOC val + SBD train: must not be in train_aug
    "2008_000004": ["car"],            # VOC val, official mask
    "2008_000005": ["bird"],           # SBD train only
    "2008_000006": ["sheep"],          # SBD val only
    "2008_000007": ["boat"],           # detection only: on no segmentation list
}
VOC_TRAIN = ["2008_000001", "2008_000002"]
VOC_VAL = ["2008_000003", "2008_000004"]
SBD_TRAIN = ["2008_000002", "2008_000003", "2008_000005"]
SBD_VAL = ["2008_000006"]
H, W = 18, 24


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _xml(image_id: str, names: list[str]) -> bytes:
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult></object>" for n in names)
    return (f"<annotation><filename>{image_id}.jpg</filename><size><width>{W}</width>"
            f"<height>{H}</height><depth>3</depth></size>{objs}</annotation>").encode()


def _mask(names: list[str], offset: int, border: bool) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    for k, n in enumerate(names):
        m[2 + k * 6: 7 + k * 6, 2 + offset: 12 + offset] = VOC_CLASSES.index(n)
    if border:
        m[0, :] = 255
    return m


def _png_bytes(mask: np.ndarray, tmp: Path) -> bytes:
    p = tmp / "_m.png"
    write_palette_png(p, mask)
    return p.read_bytes()


def _mat_bytes(mask: np.ndarray, tmp: Path) -> bytes:
    p = tmp / "_m.mat"
    # SBD's layout: struct GTcls with Segmentation, Boundaries, CategoriesPresent
    scipy.io.savemat(p, {"GTcls": {"Segmentation": mask, "Boundaries": np.zeros((20, 1), dtype=object),
                                   "CategoriesPresent": np.unique(mask[(mask > 0) & (mask < 255)])}})
    return p.read_bytes()


def _tar_bytes(entries: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _voc_entries(tmp: Path) -> dict[str, bytes]:
    root = "VOCdevkit/VOC2012"
    e: dict[str, bytes] = {}
    for k, (image_id, names) in enumerate(IDS.items()):
        e[f"{root}/JPEGImages/{image_id}.jpg"] = _jpeg(k)
        e[f"{root}/Annotations/{image_id}.xml"] = _xml(image_id, names)
        if image_id in VOC_TRAIN + VOC_VAL:
            e[f"{root}/SegmentationClass/{image_id}.png"] = _png_bytes(_mask(names, 0, True), tmp)
    e[f"{root}/ImageSets/Segmentation/train.txt"] = "".join(f"{i}\n" for i in VOC_TRAIN).encode()
    e[f"{root}/ImageSets/Segmentation/val.txt"] = "".join(f"{i}\n" for i in VOC_VAL).encode()
    e[f"{root}/ImageSets/Segmentation/trainval.txt"] = "".join(f"{i}\n" for i in VOC_TRAIN + VOC_VAL).encode()
    return e


def _sbd_entries(tmp: Path) -> dict[str, bytes]:
    root = "benchmark_RELEASE/dataset"
    e: dict[str, bytes] = {}
    for k, image_id in enumerate(sorted(set(SBD_TRAIN + SBD_VAL))):
        # SBD masks are shifted and have no void border: distinguishable from official ones
        e[f"{root}/cls/{image_id}.mat"] = _mat_bytes(_mask(IDS[image_id], 8, False), tmp)
        e[f"{root}/img/{image_id}.jpg"] = _jpeg(100 + k)
    e[f"{root}/train.txt"] = "".join(f"{i}\n" for i in SBD_TRAIN).encode()
    e[f"{root}/val.txt"] = "".join(f"{i}\n" for i in SBD_VAL).encode()
    return e


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("archives")
    voc = _tar_bytes(_voc_entries(tmp))
    sbd = _tar_bytes(_sbd_entries(tmp), mode="w:gz")
    return {"voc": voc, "sbd": sbd}


def _cfg(dataset: dict) -> str:
    return json.dumps({"dataset": dataset})


# --------------------------------------------------------------------------- end to end


def test_download_and_prepare_end_to_end(server, archives, tmp_path, capsys):
    server.files["/voc/VOCtrainval_11-May-2012.tar"] = archives["voc"]
    server.files["/sbd/benchmark.tgz"] = archives["sbd"]
    dataset = {
        "name": "tinyvoc", "source": "voc2012", "train_split": "train_aug", "eval_split": "val",
        "download": {
            "voc": {"urls": [server.url("/voc/VOCtrainval_11-May-2012.tar")], "md5": _md5(archives["voc"])},
            "sbd": {"urls": [server.url("/sbd/benchmark.tgz")], "md5": _md5(archives["sbd"])},
            "retries": 1,
        },
        "expected_counts": {"train_aug": 4, "train": 2, "val": 2},
    }
    downloads = tmp_path / "downloads"
    assert download_stage.main(["--config-json", _cfg(dataset), "--out-dir", str(downloads), "--no-progress"]) == 0
    record = json.loads((downloads / "extracted.json").read_text())
    assert record["voc"]["root"] == "voc/VOCdevkit/VOC2012"
    assert record["sbd"]["root"] == "sbd/benchmark_RELEASE/dataset"
    assert (downloads / "VOCtrainval_11-May-2012.tar").is_file()
    assert not list(downloads.glob("*.part"))

    # a rerun finds both extractions and asks the server nothing
    n_requests = len(server.log)
    assert download_stage.main(["--config-json", _cfg(dataset), "--out-dir", str(downloads), "--no-progress"]) == 0
    assert len(server.log) == n_requests

    out = tmp_path / "data"
    assert prepare_voc.main(["--config-json", _cfg(dataset), "--downloads", str(downloads),
                         "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == {"source": "voc2012", "root": str(out), "class_names": list(VOC_CLASSES),
                        "splits": {"train_aug": 4, "train": 2, "val": 2}}

    seg = out / "ImageSets" / "Segmentation"
    # (SBD train ∪ SBD val ∪ VOC train) − VOC val
    assert seg.joinpath("train_aug.txt").read_text().split() == [
        "2008_000001", "2008_000002", "2008_000005", "2008_000006"]
    assert seg.joinpath("train.txt").read_text().split() == VOC_TRAIN
    assert seg.joinpath("val.txt").read_text().split() == VOC_VAL
    assert not (out / "JPEGImages" / "2008_000007.jpg").exists()  # on no list
    assert sorted(p.stem for p in (out / "SegmentationClass").glob("*.png")) == sorted(VOC_TRAIN + VOC_VAL)

    layout = VOCLayout.open(out)
    assert layout.mask_dir == out / "SegmentationClassAug"
    for split in ("train_aug", "train", "val"):
        layout.validate(split)
    for image_id in sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL)):
        expect = sorted(VOC_CLASSES.index(n) for n in IDS[image_id])
        assert layout.labels(image_id) == expect
        mask = read_mask(out / "SegmentationClassAug" / f"{image_id}.png", 21)
        official = image_id in VOC_TRAIN + VOC_VAL
        # official VOC masks take precedence over SBD (id 2 is in both)
        assert np.array_equal(mask, _mask(IDS[image_id], 0 if official else 8, official)), image_id
    # images are hard links into the extraction where the file system allows
    src = downloads / "voc" / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2008_000001.jpg"
    assert os.path.samefile(out / "JPEGImages" / "2008_000001.jpg", src)

    # wrong expected counts: error naming them, no output folder
    bad = dict(dataset, expected_counts={"train_aug": 10582, "train": 2, "val": 2})
    out2 = tmp_path / "data2"
    capsys.readouterr()
    assert prepare_voc.main(["--config-json", _cfg(bad), "--downloads", str(downloads),
                         "--out", str(out2), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "train_aug: got 4, expected 10582" in err
    assert not out2.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data2")]


# --------------------------------------------------------------------------- download


def test_resume_after_cut_connection(server, tmp_path):
    body = os.urandom(3 * 1024 * 1024 + 17)
    server.files["/f.bin"] = body
    server.modes["/f.bin"] = "cut_once"
    dest = dl.download([server.url("/f.bin")], tmp_path / "f.bin", _md5(body), progress=False,
                       timeout=10, retries=3, backoff=0)
    assert dest.read_bytes() == body
    ranges = server.requests("/f.bin")
    assert ranges[0] is None and len(ranges) == 2
    assert ranges[1] == f"bytes={len(body) // 2}-"  # continued where the cut left it
    assert not (tmp_path / "f.bin.part").exists()


def test_resume_from_earlier_part_and_range_ignored(server, tmp_path):
    body = os.urandom(200_000)
    server.files["/a.bin"] = body
    server.files["/b.bin"] = body
    server.modes["/b.bin"] = "ignore_range"
    # a .part left by an interrupted earlier run is continued with a range request
    (tmp_path / "a.bin.part").write_bytes(body[:1234])
    dl.download([server.url("/a.bin")], tmp_path / "a.bin", _md5(body), progress=False, backoff=0)
    assert server.requests("/a.bin") == ["bytes=1234-"]
    assert (tmp_path / "a.bin").read_bytes() == body
    # a server that answers 200 to a range request: start again from byte 0
    (tmp_path / "b.bin.part").write_bytes(b"junk" * 100)
    dl.download([server.url("/b.bin")], tmp_path / "b.bin", _md5(body), progress=False, backoff=0)
    assert server.requests("/b.bin") == ["bytes=400-"]
    assert (tmp_path / "b.bin").read_bytes() == body
    # a complete .part (run killed before the rename): the server answers 416, md5 decides
    (tmp_path / "c.bin.part").write_bytes(body)
    dl.download([server.url("/a.bin")], tmp_path / "c.bin", _md5(body), progress=False, backoff=0)
    assert server.requests("/a.bin")[-1] == f"bytes={len(body)}-"
    assert (tmp_path / "c.bin").read_bytes() == body


def test_mirror_fallback_file_urls_and_existing_dest(server, tmp_path):
    body = b"hello mirrors" * 1000
    server.files["/good/x.tar"] = body
    dest = dl.download([server.url("/missing/x.tar"), server.url("/good/x.tar")], tmp_path / "x.tar",
                       _md5(body), progress=False, backoff=0)
    assert dest.read_bytes() == body
    assert server.requests("/missing/x.tar") == [None]  # a 404 is not retried
    # an existing file with the right md5 is kept without any request
    n = len(server.log)
    dl.download([server.url("/good/x.tar")], dest, _md5(body), progress=False)
    assert len(server.log) == n
    # file:// URLs and plain paths
    src = tmp_path / "src.bin"
    src.write_bytes(body)
    assert dl.download([src.as_uri()], tmp_path / "y.bin", _md5(body), progress=False).read_bytes() == body
    assert dl.download([str(tmp_path / "nope"), str(src)], tmp_path / "z.bin", _md5(body),
                       progress=False).read_bytes() == body


def test_md5_mismatch_and_all_mirrors_failing(server, tmp_path, capsys):
    body = b"corrupted payload" * 500
    server.files["/c.tar"] = body
    wrong = "0" * 32
    with pytest.raises(DataError) as info:
        dl.download([server.url("/c.tar")], tmp_path / "c.tar", wrong, progress=False, backoff=0)
    msg = str(info.value)
    assert server.url("/c.tar") in msg and wrong in msg and _md5(body) in msg
    assert list(tmp_path.iterdir()) == []  # neither c.tar nor c.tar.part

    urls = [server.url("/gone1.tar"), server.url("/gone2.tar"), server.url("/c.tar")]
    with pytest.raises(DataError) as info:
        dl.download(urls, tmp_path / "c.tar", wrong, progress=False, backoff=0)
    msg = str(info.value)
    assert all(u in msg for u in urls) and "404" in msg and "md5 mismatch" in msg
    assert list(tmp_path.iterdir()) == []

    # through the entry point: error on stderr, exit 1, nothing left
    dataset = {"source": "voc2012", "download": {
        "voc": {"urls": [server.url("/c.tar")], "md5": wrong},
        "sbd": {"urls": [server.url("/c.tar")], "md5": wrong}, "retries": 1}}
    out = tmp_path / "downloads"
    capsys.readouterr()
    assert download_stage.main(["--config-json", _cfg(dataset), "--out-dir", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and wrong in err and _md5(body) in err
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------- extraction


def _evil_tar(path: Path, kind: str) -> None:
    with tarfile.open(path, "w") as tar:
        ok = tarfile.TarInfo("pkg/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        if kind in ("dotdot", "absolute"):
            info = tarfile.TarInfo("pkg/../../evil.txt" if kind == "dotdot" else
                                   str(path.parent / "abs_evil.txt"))
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        else:
            info = tarfile.TarInfo("pkg/etc")
            info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
            info.linkname = "/etc" if kind == "symlink" else "../../outside.txt"
            tar.addfile(info)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_safe_extract_refuses_escaping_members(tmp_path, kind):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    archive = work / "evil.tar"
    _evil_tar(archive, kind)
    target = work / "out"
    with pytest.raises(DataError, match="refusing to extract member"):
        dl.safe_extract(archive, target, progress=False)
    assert not target.exists()
    assert sorted(p.name for p in work.iterdir()) == ["evil.tar"]  # no temp folder left
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "a" / "evil.txt").exists()
    assert not (work / "abs_evil.txt").exists()


def test_safe_extract_ok_and_truncated(tmp_path, archives):
    archive = tmp_path / "sbd.tgz"
    archive.write_bytes(archives["sbd"])
    dl.safe_extract(archive, tmp_path / "sbd", progress=False, marker="abc")
    assert (tmp_path / "sbd" / "benchmark_RELEASE" / "dataset" / "train.txt").read_text().split() == SBD_TRAIN
    assert (tmp_path / "sbd" / dl.MARKER).read_text().strip() == "abc"
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(archives["sbd"][: len(archives["sbd"]) // 2])
    with pytest.raises(DataError, match="broken.tgz"):
        dl.safe_extract(broken, tmp_path / "broken", progress=False)
    assert not (tmp_path / "broken").exists()


# --------------------------------------------------------------------------- folder validation


def _voc_folder(root: Path) -> None:
    entries = _voc_entries(root.parent)
    for name, data in entries.items():
        rel = Path(name).relative_to("VOCdevkit/VOC2012")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_folder_validation_and_missing_image(tmp_path, capsys):
    root = tmp_path / "mydata"
    _voc_folder(root)
    dataset = {"name": "mine", "source": "folder", "root": str(root), "train_split": "train",
               "eval_split": "val", "allow_empty_classes": True}
    out = tmp_path / "results" / "mine" / "data"
    assert validate_dataset.main(["--config-json", _cfg(dataset), "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "folder" and manifest["layout"] == "voc"
    assert manifest["root"] == str(root.resolve()) and manifest["class_names"] == list(VOC_CLASSES)
    assert manifest["splits"] == {"train": 2, "val": 2} and manifest["masks"] == {"train": 2, "val": 2}
    # the view: links to the folder's own, the checked split lists; later stages read it
    assert (out / "JPEGImages").resolve() == (root / "JPEGImages").resolve()
    view = VOCLayout.open(out)
    assert view.ids("val") == VOCLayout.open(root).ids("val") and view.class_names == VOC_CLASSES

    missing = root / "JPEGImages" / "2008_000004.jpg"
    missing.unlink()
    shutil.rmtree(out)
    capsys.readouterr()
    assert validate_dataset.main(["--config-json", _cfg(dataset), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(missing) in err
    assert not out.exists() and list(out.parent.iterdir()) == []

    # a mask whose size differs from its image is named too
    missing.write_bytes(_jpeg(0))
    write_palette_png(root / "SegmentationClass" / "2008_000003.png", np.zeros((5, 5), np.uint8))
    assert validate_dataset.main(["--config-json", _cfg(dataset), "--out", str(out), "--no-progress"]) == 1
    assert "2008_000003.png: mask size" in capsys.readouterr().err

    # source folder without dataset.root
    assert validate_dataset.main(["--config-json", _cfg({"source": "folder"}),
                                  "--out", str(out), "--no-progress"]) == 1
    assert "dataset.root" in capsys.readouterr().err


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real VOC sample not at {SAMPLE}")
def test_real_sample_validates(tmp_path):
    dataset = {"name": "voc2012-sample", "source": "folder", "root": str(SAMPLE),
               "train_split": "train_small", "eval_split": "val_small", "allow_empty_classes": True}
    out = tmp_path / "data"
    assert validate_dataset.main(["--config-json", _cfg(dataset), "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "folder" and manifest["root"] == str(SAMPLE.resolve())
    assert manifest["splits"] == {"train_small": 100, "val_small": 50}
    assert manifest["masks"] == {"train_small": 100, "val_small": 50}
    assert manifest["class_names"] == list(VOC_CLASSES)
    assert manifest["images_per_class"]["train_small"]["aeroplane"] == 0  # hence allow_empty_classes
    assert manifest["images_per_class"]["train_small"]["dog"] == 37  # the sample's README table
