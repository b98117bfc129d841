"""Download a dataset's archives (VOC 2012 + SBD, or COCO 2014): mirrors, resume, md5
check, safe extraction.

``download(urls, dest, md5)`` tries each mirror in order (``http(s)://``, ``file://`` or a
plain local path). HTTP transfers go to ``dest.part`` and resume with ``Range: bytes=N-``
after a cut connection (or a ``.part`` left by an earlier run); a server that ignores the
range (200 instead of 206) restarts the file from 0. The md5 is checked before the file is
renamed to ``dest``: a mismatch deletes the file and names the URL and both sums. When every
mirror fails, the error names each URL and its error.

``safe_extract(archive, target_dir)`` extracts a tar (any compression) or a zip into a
temporary folder beside ``target_dir`` and renames it on success. Absolute paths, ``..``
components, links pointing outside the archive (tar; a zip may hold no link at all) and
device files are refused (explicitly, and by tarfile's ``data`` filter where Python has it);
a refused archive leaves nothing behind.

Entry point (the ``download_voc`` / ``download_coco`` rules)::

    python -m icd_pipeline.stages.download --config-json JSON --out-dir results/voc2012/downloads

downloads and extracts the archives of ``dataset.source`` (``ARCHIVE_SETS``): for
``voc2012``, ``dataset.download.voc`` into ``OUT/voc/`` and ``dataset.download.sbd`` into
``OUT/sbd/``; for ``coco2014``, ``dataset.download.coco_train2014`` / ``coco_val2014`` /
``coco_annotations`` into ``OUT/coco_train2014/`` etc. It then writes ``OUT/extracted.json``
last (``{"voc": {"root": "voc/VOCdevkit/VOC2012", ...}, "sbd": {"root": ..., ...}}``, roots
relative to OUT). A rerun skips an archive whose extraction is already there for the same md5.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import posixpath
import shutil
import socket
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator

from tqdm import tqdm

from icd_pipeline.config import ConfigError
from icd_pipeline.data.voc import DataError
from icd_pipeline.misc.io import atomic_dir, atomic_path
from icd_pipeline.misc.progress import progress as progress_bar
from icd_pipeline.misc.runtime import get_logger

log = get_logger("icd_pipeline.data.download")

CHUNK = 1 << 20
USER_AGENT = "Mozilla/5.0 (compatible; icd-pipeline downloader)"
MARKER = ".extracted_md5"  # inside an extraction folder: the md5 of the archive it came from

# Defaults (also in workflow/schemas/config.schema.yaml, dataset.download).
VOC_URLS = [
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",
]
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
SBD_URLS = [
    "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
]
SBD_MD5 = "82b4d87ceb2ed10f6038a1cba92111cb"
# COCO 2014 (source coco2014): images.cocodataset.org is an S3 bucket, also reachable by its
# S3 path. The md5s are those public COCO loaders check (e.g. pystiche, LAVIS); the
# annotations' equals the S3 ETag of its object. Defaults, also in the schema.
COCO_TRAIN2014_URLS = [
    "http://images.cocodataset.org/zips/train2014.zip",
    "https://s3.amazonaws.com/images.cocodataset.org/zips/train2014.zip",
]
COCO_TRAIN2014_MD5 = "0da8c0bd3d6becc4dcb32757491aca88"
COCO_VAL2014_URLS = [
    "http://images.cocodataset.org/zips/val2014.zip",
    "https://s3.amazonaws.com/images.cocodataset.org/zips/val2014.zip",
]
COCO_VAL2014_MD5 = "a3d79f5ed8d289b7a7554ce06a5782b3"
COCO_ANNOTATIONS_URLS = [
    "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
    "https://s3.amazonaws.com/images.cocodataset.org/annotations/annotations_trainval2014.zip",
]
COCO_ANNOTATIONS_MD5 = "0a379cfc70b0e71301e0f377548639bd"


class _Incomplete(Exception):
    """A transfer ended early; the .part file is kept for a ranged retry."""


class _Fatal(Exception):
    """A mirror that retrying will not fix (404, bad URL, missing local file)."""


def md5_file(path: str | Path, chunk: int = CHUNK) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _local_source(url: str) -> Path | None:
    """The file a ``file://`` URL or plain path names; None for a network URL."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("http", "https", "ftp"):
        return None
    if parsed.scheme and len(parsed.scheme) > 1:  # e.g. s3://: not supported
        raise _Fatal(f"unsupported URL scheme {parsed.scheme!r}")
    return Path(url)


def _copy_local(src: Path, part: Path, progress: bool) -> None:
    if not src.is_file():
        raise _Fatal(f"no such file: {src}")
    total = src.stat().st_size
    with open(src, "rb") as fin, open(part, "wb") as fout, \
            progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                 desc=part.name[:-5], disable=not progress) as bar:
        while block := fin.read(CHUNK):
            fout.write(block)
            bar.update(len(block))


def _content_range_start(header: str | None) -> tuple[int | None, int | None]:
    """(start, total) from ``Content-Range: bytes START-END/TOTAL``; None where unknown."""
    if not header or not header.startswith("bytes "):
        return None, None
    try:
        span, _, total = header[6:].partition("/")
        start = int(span.split("-")[0])
        return start, (int(total) if total.strip().isdigit() else None)
    except ValueError:
        return None, None


def _fetch_http(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One HTTP attempt: continue ``part`` when it has bytes. Raises _Incomplete when the
    transfer ends short (the caller retries with a range), _Fatal for 4xx answers."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # nothing left to send: the .part is complete (or junk; the md5 check decides)
            log.info("%s: server says the %d bytes already there are the whole file", url, have)
            return
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise _Fatal(f"HTTP {exc.code} {exc.reason}") from exc
        raise _Incomplete(f"HTTP {exc.code} {exc.reason}") from exc
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        mode = "wb"
        if have and status == 206:
            start, _ = _content_range_start(resp.headers.get("Content-Range"))
            if start == have:
                mode = "ab"
                log.info("%s: resuming at byte %d", url, have)
            else:
                part.unlink()  # the next attempt starts over
                raise _Incomplete(f"server answered a range from byte {start}, asked {have}")
        elif have:
            log.info("%s: server ignored the range request (HTTP %d); restarting from 0", url, status)
            have = 0
        total = have + length if length is not None else None
        got = 0
        with open(part, mode) as fh, \
                progress_bar(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                     file=sys.stderr, desc=part.name[:-5], disable=not progress) as bar:
            try:
                while block := resp.read(CHUNK):
                    fh.write(block)
                    got += len(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as exc:
                raise _Incomplete(f"connection cut after {have + got} bytes ({type(exc).__name__})") from exc
        if length is not None and got < length:
            raise _Incomplete(f"connection cut after {have + got} of {total} bytes")


def download(urls: list[str], dest: str | Path, md5: str, progress: bool = True,
             timeout: float = 60.0, retries: int = 3, backoff: float = 2.0) -> Path:
    """Fetch ``dest`` from the first mirror that delivers a file with this ``md5``.

    An existing ``dest`` with the right md5 is kept as is (no network access).
    ``retries``: attempts per HTTP mirror (each resumes where the last one stopped);
    ``backoff``: seconds times the attempt number to wait between them.
    """
    dest = Path(dest)
    md5 = md5.lower()
    if not urls:
        raise DataError(f"{dest.name}: no download URL given")
    if dest.is_file():
        actual = md5_file(dest)
        if actual == md5:
            log.info("%s: already downloaded (md5 ok)", dest)
            return dest
        log.info("%s: md5 %s is not the expected %s; downloading again", dest, actual, md5)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors: list[str] = []
    for url in urls:
        try:
            _fetch_one(url, part, timeout, retries, backoff, progress)
        except (_Fatal, _Incomplete, urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) if isinstance(exc, urllib.error.URLError) else None
            errors.append(f"{url}: {reason or exc}")
            log.warning("%s: %s", url, errors[-1].split(": ", 1)[1])
            continue
        actual = md5_file(part)
        if actual != md5:
            part.unlink(missing_ok=True)
            errors.append(f"{url}: md5 mismatch: expected {md5}, got {actual} (file deleted)")
            log.warning("%s", errors[-1])
            continue
        os.replace(part, dest)
        log.info("%s: downloaded from %s (md5 ok)", dest, url)
        return dest
    if len(errors) == 1:
        raise DataError(f"download of {dest.name} failed: {errors[0]}")
    raise DataError(f"download of {dest.name} failed from every mirror:\n  " + "\n  ".join(errors))


def _fetch_one(url: str, part: Path, timeout: float, retries: int, backoff: float,
               progress: bool) -> None:
    src = _local_source(url)
    if src is not None:
        _copy_local(src, part, progress)
        return
    last: Exception | None = None
    for attempt in range(1, max(1, retries) + 1):
        try:
            _fetch_http(url, part, timeout, progress)
            return
        except (_Incomplete, urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                http.client.HTTPException) as exc:
            last = exc
            log.warning("%s: attempt %d/%d failed: %s", url, attempt, retries,
                        getattr(exc, "reason", None) or exc)
            if attempt < retries and backoff > 0:
                time.sleep(backoff * attempt)
    raise _Incomplete(f"gave up after {retries} attempt(s): {getattr(last, 'reason', None) or last}")


# --------------------------------------------------------------------------- extraction


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why a member may not be extracted, or None when it is safe."""
    name = member.name
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in path.parts or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' in the path"
    if member.issym() or member.islnk():
        link = member.linkname
        if link.startswith(("/", "\\")) or PurePosixPath(link).is_absolute():
            return f"link to an absolute path ({link})"
        # symlinks resolve from the member's folder, hard links from the archive root
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, link))
        if resolved == ".." or resolved.startswith("../"):
            return f"link pointing outside the archive ({link})"
    if member.ischr() or member.isblk() or member.isfifo():
        return "device or FIFO"
    return None


def _checked_members(tar: tarfile.TarFile, archive: Path, bar: tqdm) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        reason = _unsafe_reason(member)
        if reason is not None:
            raise DataError(f"{archive}: refusing to extract member {member.name!r}: {reason}")
        bar.update(1)
        yield member


def _unsafe_zip_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member may not be extracted, or None when it is safe."""
    name = info.filename
    reason = _unsafe_reason(tarfile.TarInfo(name))  # the same path rules as a tar member
    if reason is not None:
        return reason
    mode = info.external_attr >> 16  # Unix mode where the archiver recorded one
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
        return "device or FIFO"
    return None


def _extract_zip(archive: Path, tmp: Path, bar: tqdm) -> None:
    """Every member of a zip into ``tmp``, each checked before anything is written."""
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:  # check all first: a refused archive writes nothing
            reason = _unsafe_zip_reason(info)
            if reason is not None:
                raise DataError(f"{archive}: refusing to extract member {info.filename!r}: {reason}")
        bar.reset(total=len(members))
        for info in members:
            dest = tmp.joinpath(*PurePosixPath(info.filename).parts)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as fin, open(dest, "wb") as fout:
                    shutil.copyfileobj(fin, fout, CHUNK)
            bar.update(1)


def safe_extract(archive: str | Path, target_dir: str | Path, progress: bool = True,
                 marker: str | None = None) -> Path:
    """Extract ``archive`` (a tar, any compression, or a zip) into ``target_dir`` (replaced
    as a whole on success).

    Every member is checked before it is written; a refused or broken archive raises
    DataError and leaves neither ``target_dir`` nor a temporary folder behind. ``marker``:
    text written to ``target_dir/.extracted_md5`` (the download stage's rerun check).
    """
    archive, target_dir = Path(archive), Path(target_dir)
    if not archive.is_file():
        raise DataError(f"{archive}: archive is missing")
    is_zip = zipfile.is_zipfile(archive)
    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with atomic_dir(target_dir) as tmp, \
                progress_bar(unit=" files", file=sys.stderr, desc=f"extract {archive.name}",
                     disable=not progress) as bar:
            if is_zip:
                _extract_zip(archive, tmp, bar)
            else:
                with tarfile.open(archive, "r|*") as tar:
                    tar.extractall(tmp, members=_checked_members(tar, archive, bar), **kwargs)
            if marker is not None:
                (tmp / MARKER).write_text(marker + "\n")
    except tarfile.TarError as exc:  # FilterError, ReadError, truncated archive
        raise DataError(f"{archive}: cannot extract ({type(exc).__name__}: {exc})") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:  # CRC error, truncated member
        raise DataError(f"{archive}: cannot extract ({type(exc).__name__}: {exc})") from exc
    except EOFError as exc:
        raise DataError(f"{archive}: truncated archive ({exc})") from exc
    return target_dir


# --------------------------------------------------------------------------- entry point


def _archive_name(urls: list[str]) -> str:
    first = urls[0]
    src = None
    try:
        src = _local_source(first)
    except _Fatal:
        pass
    name = src.name if src is not None else PurePosixPath(urllib.parse.urlparse(first).path).name
    if not name:
        raise ConfigError(f"dataset.download: cannot derive a file name from URL {first!r}")
    return name


def _find_root(base: Path, marker_rel: tuple[str, ...], what: str) -> Path:
    """The folder under ``base`` (at most 3 levels down) that holds every ``marker_rel``."""
    candidates = [base] + [p for depth in ("*", "*/*", "*/*/*") for p in sorted(base.glob(depth)) if p.is_dir()]
    for cand in candidates:
        if all((cand / m).exists() for m in marker_rel):
            return cand
    raise DataError(f"{base}: extracted archive has no {what} folder (with {', '.join(marker_rel)})")


# dataset.source -> {key in dataset.download: (what the extraction must hold, description)};
# the root recorded for a key is the folder (at most 3 levels down) holding every marker.
ARCHIVE_SETS: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "voc2012": {
        "voc": (("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"), "VOC2012"),
        "sbd": (("cls", "train.txt", "val.txt"), "benchmark_RELEASE/dataset"),
    },
    "coco2014": {
        "coco_train2014": (("train2014",), "COCO train2014 images"),
        "coco_val2014": (("val2014",), "COCO val2014 images"),
        "coco_annotations": (("instances_train2014.json", "instances_val2014.json"),
                             "COCO 2014 annotations"),
    },
}


def fetch_datasets(dl_cfg: dict, out_dir: str | Path, progress: bool = True,
                   source: str = "voc2012") -> dict:
    """Download and extract the archives of ``source`` (a key of ARCHIVE_SETS); write
    ``out_dir/extracted.json``."""
    if source not in ARCHIVE_SETS:
        raise ConfigError(f"dataset.source: {source!r} has no archives to download "
                          f"(one of {sorted(ARCHIVE_SETS)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, dict] = {}
    for key, (markers, what) in ARCHIVE_SETS[source].items():
        if key not in dl_cfg:
            raise ConfigError(f"dataset.download.{key}: missing (needed for source {source})")
        spec = dl_cfg[key]
        urls, md5 = list(spec["urls"]), spec["md5"].lower()
        name = _archive_name(urls)
        archive = out_dir / name
        target = out_dir / key
        marker = target / MARKER
        if marker.is_file() and marker.read_text().strip() == md5:
            log.info("%s: already extracted from %s (md5 %s)", target, name, md5)
        else:
            download(urls, archive, md5, progress=progress, timeout=dl_cfg.get("timeout", 60.0),
                     retries=dl_cfg.get("retries", 3))
            log.info("extracting %s into %s", archive, target)
            safe_extract(archive, target, progress=progress, marker=md5)
            if not dl_cfg.get("keep_archives", True):
                archive.unlink(missing_ok=True)
        root = _find_root(target, markers, what)
        record[key] = {"archive": name, "md5": md5, "urls": urls,
                       "root": root.relative_to(out_dir).as_posix()}
    with atomic_path(out_dir / "extracted.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record

