"""HDF5 store for the CAM and ICD (top-down) maps of one split.

Layout (flat, with an index; one file per split)::

    /data                int8 or float16 (N_elements,)  every image's maps back to back,
                                                chunked (32768 elements) + gzip + shuffle
    /index/ids           bytes   (N,)   image ids (UTF-8, fixed width), in the order written
    /index/offset        int64   (N,)   start of the image's ``cam`` block in /data; ``td``
                                        follows it: cam = data[o : o+n], td = data[o+n : o+2n],
                                        n = k * vh * vw
    /index/num_present   int32   (N,)   k, the number of classes present in the image
    /index/class_ids     int16   (sum k,) the present class ids (1-based, sorted), image by image
    /index/scale         float32 (sum 4k,) int8 encoding only: two scales (positive part,
                                        negative part) per stored map, image by image (its
                                        k cam maps, then its k td maps)
    /index/image_hw      int32   (N, 2) original image size (H, W)
    /index/scaled_hw     int32   (N, 2) network-input size of the image: round(H * input_scale)
    /index/valid_hw      int32   (N, 2) (vh, vw): the map cells that cover the scaled image;
                                        the stored maps are exactly this crop, (k, vh, vw)

Encoding (file attribute ``encoding``). ``int8`` (default): each map (one class, one of cam /
td) is stored as ``round(x / s)``, with ``s = max(x) / 127`` for its positive values and
``s = -min(x) / 127`` for its negative ones (the seeds normalise the two parts separately), and
a value that would round to 0 is stored as +-1, so every value keeps its sign exactly (the
seeds threshold ICD logits at 0 and CAM after a ReLU); the error is at most ``s``, under 0.8 %
of the part's range (:func:`quantize_int8`). The
maps compress to about a quarter of float32 .npy this way (0.24 on the embedded maps, index
included); logits are noise-like in their low bits, so float16 + gzip only reaches ~0.43. ``float16``: half precision, relative
error ~1e-3 (``maps.encoding: float16``). Files of format version 1 (float16, no ``encoding``
attribute) are still read.

File attributes: ``format``, ``format_version``, ``encoding``, ``method_version``, ``checkpoint_sha256``,
``config`` (JSON), ``class_names`` (with background first), ``scales``, ``flip``,
``input_scale``, ``stride``, ``backbone``, ``split``, ``num_images``. Non-scalar values are
stored as JSON and decoded by :class:`MapsReader`.

Geometry: the image is resized by ``input_scale`` to ``scaled_hw`` and padded bottom/right;
map cell (i, j) covers scaled-image pixels [i*stride, (i+1)*stride) x [j*stride, (j+1)*stride),
so ``valid_hw = ceil(scaled_hw / stride)``. Maps are *logits* (CAM A and top-down T, before any
sigmoid), for the present classes only, sorted by class id (spec 5.1).

Why flat: one HDF5 group per image costs ~2-9 KB of object headers per image, several times
the maps themselves on small grids; the flat store costs only the (compressed) data. Reading
one image reads its index row (the index is loaded once, O(N) integers) and the one or two
data chunks that hold it, never the whole file.

Writing is atomic: :class:`MapsWriter` writes to a temporary name in the target folder and
renames it on a clean ``close``; an exception (or a kill) never leaves the final file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

FORMAT = "icd-pipeline/maps"
FORMAT_VERSION = 2          # 2: int8 encoding and the ``encoding`` attribute (1: float16 only)
ENCODINGS = ("int8", "float16")
DATA_CHUNK = 32768          # elements per chunk (32-64 KiB before compression)
INDEX_CHUNK = 4096
FLUSH_ELEMENTS = 1 << 21    # buffer at most ~2-4 MiB of map values before appending to /data
F16_MAX = float(np.finfo(np.float16).max)
INT8_LEVELS = 127
_JSON_KEYS_ATTR = "_json_keys"


class MapsError(ValueError):
    """A maps file that is missing, malformed, or lacks the requested image."""


def _to_f16(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    return np.clip(a, -F16_MAX, F16_MAX).astype(np.float16)


def quantize_int8(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sign-exact int8 quantisation of a (k, h, w) stack, two scales per map.

    The positive and the negative part of each map get their own scale (the seeds normalise
    them separately: ReLU(CAM) and ICD foreground by the map's maximum, ICD background by its
    minimum), so each part keeps 127 levels of its own range. Returns ``(q, scale)``: ``q``
    int8 in -127..127, ``q = round(x / s)`` with ``s = max(x) / 127`` where x > 0 and
    ``s = -min(x) / 127`` where x < 0, except that a non-zero value that would round to 0
    becomes +-1 (its sign is kept); ``scale`` float32 (k, 2) = (positive s, negative s), 1 for
    a part that is absent. ``dequantize_int8(q, scale)`` differs from ``x`` by at most the
    part's ``s``."""
    x = np.asarray(maps, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"maps must be (k, h, w), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("maps contain NaN or infinite values")
    k = x.shape[0]
    if x.size:
        peaks = np.stack([x.max(axis=(1, 2)), -x.min(axis=(1, 2))], axis=1)
    else:
        peaks = np.zeros((k, 2), np.float32)
    scale = np.where(peaks > 0, peaks / INT8_LEVELS, 1.0).astype(np.float32)
    s = np.where(x >= 0, scale[:, 0, None, None], scale[:, 1, None, None])
    q = np.rint(x / s)
    q = np.where((q == 0) & (x != 0), np.sign(x), q)
    return np.clip(q, -INT8_LEVELS, INT8_LEVELS).astype(np.int8), scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_int8`: (k, h, w) float32 from int8 ``q`` and (k, 2) ``scale``."""
    q = np.asarray(q, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32).reshape(-1, 2)
    return q * np.where(q >= 0, scale[:, 0, None, None], scale[:, 1, None, None])


class MapsWriter:
    """Stream maps into a new HDF5 file; the file appears at ``path`` only on a clean close.

    ``attrs`` (or ``writer.attrs``, a dict filled any time before close) become file
    attributes; lists/dicts are stored as JSON. Use as a context manager::

        with MapsWriter(out, attrs={...}) as w:
            w.write(image_id, cam, td, class_ids, image_hw, scaled_hw=...)
    """

    def __init__(self, path: str | Path, attrs: dict[str, Any] | None = None,
                 compression: str | None = "gzip", compression_opts: int | None = 4, encoding: str = "int8"):
        if encoding not in ENCODINGS:
            raise MapsError(f"{path}: unknown maps encoding {encoding!r} (expected one of {list(ENCODINGS)})")
        self.encoding = encoding
        self.path = Path(path)
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.compression = compression
        self.compression_opts = compression_opts if compression == "gzip" else None
        # the filters of every dataset but the variable-length ones
        self._comp = dict(compression=compression, compression_opts=self.compression_opts,
                          shuffle=compression is not None)
        self._file: h5py.File | None = None
        self._tmp: Path | None = None
        # ids in the order written (a dict: ordered, O(1) duplicate check); stored on close
        # as one compressed fixed-width dataset
        self._ids: dict[str, None] = {}
        self._pending: list[tuple] = []
        self._pending_elems = 0
        self._n = 0
        self._elems = 0
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> "MapsWriter":
        if self._file is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        f = h5py.File(self._tmp, "w")
        self._file = f
        comp = self._comp
        f.create_dataset("data", shape=(0,), maxshape=(None,), dtype=self._dtype, chunks=(DATA_CHUNK,), **comp)
        idx = f.create_group("index")
        if self.encoding == "int8":
            idx.create_dataset("scale", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(INDEX_CHUNK,),
                               **comp)
        for name, dt in (("offset", np.int64), ("num_present", np.int32), ("class_ids", np.int16)):
            idx.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(INDEX_CHUNK,), **comp)
        for name in ("image_hw", "scaled_hw", "valid_hw"):
            idx.create_dataset(name, shape=(0, 2), maxshape=(None, 2), dtype=np.int32,
                               chunks=(INDEX_CHUNK, 2), **comp)
        return self

    @property
    def _dtype(self):
        return np.int8 if self.encoding == "int8" else np.float16

    def __enter__(self) -> "MapsWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> None:
        """Flush, write the attributes and rename the temporary file onto ``path``."""
        if self._closed:
            return
        self.open()
        try:
            self._flush()
            self._write_ids()
            attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.attrs, "encoding": self.encoding,
                     "num_images": self._n}
            json_keys = []
            for key, value in attrs.items():
                if isinstance(value, (list, tuple, dict)) or value is None:
                    self._file.attrs[key] = json.dumps(value)
                    json_keys.append(key)
                else:
                    self._file.attrs[key] = value
            self._file.attrs[_JSON_KEYS_ATTR] = json.dumps(json_keys)
            self._file.close()
            self._file = None
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual mode
            os.replace(self._tmp, self.path)
            self._closed = True
        except BaseException:
            self.abort()
            raise

    def _write_ids(self) -> None:
        # fixed-width UTF-8 bytes compress; variable-length strings sit uncompressed in the
        # global heap (~65 B per image, more than the int8 maps of a small image)
        encoded = [i.encode("utf-8") for i in self._ids]
        width = max([len(e) for e in encoded] + [1])
        idx = self._file["index"]
        if not encoded:
            idx.create_dataset("ids", shape=(0,), dtype="S1")
            return
        idx.create_dataset("ids", data=np.array(encoded, dtype=f"S{width}"),
                           chunks=(min(INDEX_CHUNK, len(encoded)),), **self._comp)

    def abort(self) -> None:
        """Drop everything written so far; no file is left at ``path`` or the temporary name."""
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - best effort on the failure path
                pass
            self._file = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._closed = True

    # ------------------------------------------------------------------ writing

    def __len__(self) -> int:
        return self._n + len(self._pending)

    def write(self, image_id: str, cam: np.ndarray, td: np.ndarray, class_ids: Sequence[int],
              image_hw: Sequence[int], scaled_hw: Sequence[int] | None = None,
              valid_hw: Sequence[int] | None = None) -> None:
        """Add one image: ``cam`` and ``td`` are (k, vh, vw) logits of the k present classes,
        in the order of ``class_ids`` (1-based, strictly increasing)."""
        if self._closed:
            raise MapsError(f"{self.path}: writer is closed")
        self.open()
        image_id = str(image_id)
        if image_id in self._ids:
            raise MapsError(f"{self.path}: image id {image_id!r} written twice")
        cam = np.asarray(cam)
        td = np.asarray(td)
        ids = [int(c) for c in class_ids]
        if cam.ndim != 3 or cam.shape != td.shape:
            raise MapsError(f"{image_id}: cam {cam.shape} and td {td.shape} must be equal (k, h, w) arrays")
        if cam.shape[0] != len(ids):
            raise MapsError(f"{image_id}: {cam.shape[0]} maps for {len(ids)} class ids")
        if any(c < 1 for c in ids) or any(b <= a for a, b in zip(ids, ids[1:])):
            raise MapsError(f"{image_id}: class ids must be >= 1 and strictly increasing, got {ids}")
        vhw = tuple(cam.shape[1:]) if valid_hw is None else tuple(int(v) for v in valid_hw)
        if vhw != tuple(cam.shape[1:]):
            raise MapsError(f"{image_id}: valid_hw {vhw} differs from the stored map size {cam.shape[1:]}")
        ihw = tuple(int(v) for v in image_hw)
        shw = ihw if scaled_hw is None else tuple(int(v) for v in scaled_hw)
        if self.encoding == "int8":
            try:
                (cam, cam_scale), (td, td_scale) = quantize_int8(cam), quantize_int8(td)
            except ValueError as exc:
                raise MapsError(f"{image_id}: {exc} (the model's outputs diverged)") from None
            scales = np.concatenate([cam_scale.ravel(), td_scale.ravel()])
        else:
            cam, td, scales = _to_f16(cam), _to_f16(td), np.zeros(0, np.float32)
        self._ids[image_id] = None
        self._pending.append((image_id, cam, td, ids, ihw, shw, vhw, scales))
        self._pending_elems += 2 * cam.size
        if self._pending_elems >= FLUSH_ELEMENTS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        f = self._file
        rows = self._pending
        blocks, offsets = [], []
        pos = self._elems
        for _, cam, td, *_ in rows:
            offsets.append(pos)
            blocks.append(cam.ravel())
            blocks.append(td.ravel())
            pos += 2 * cam.size
        _append(f["data"], np.concatenate(blocks) if blocks else np.zeros(0, self._dtype))
        idx = f["index"]
        _append(idx["offset"], np.asarray(offsets, np.int64))
        _append(idx["num_present"], np.asarray([len(r[3]) for r in rows], np.int32))
        _append(idx["class_ids"], np.asarray([c for r in rows for c in r[3]], np.int16))
        if self.encoding == "int8":
            _append(idx["scale"], np.concatenate([r[7] for r in rows]).astype(np.float32))
        for name, col in (("image_hw", 4), ("scaled_hw", 5), ("valid_hw", 6)):
            _append(idx[name], np.asarray([r[col] for r in rows], np.int32).reshape(-1, 2))
        self._elems = pos
        self._n += len(rows)
        self._pending = []
        self._pending_elems = 0


def _append(dset: h5py.Dataset, values: np.ndarray) -> None:
    n = len(values)
    if n == 0:
        return
    start = dset.shape[0]
    dset.resize(start + n, axis=0)
    dset[start:start + n] = values


class MapsReader:
    """Read one image's maps at a time. Cheap to open; picklable (it pickles its path and
    reopens the file lazily in each process, so DataLoader workers can share it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._index: dict[str, int] | None = None
        self._load_index()

    # ------------------------------------------------------------------ lifecycle

    def _open(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            if not self.path.is_file():
                raise MapsError(f"{self.path}: maps file is missing")
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise MapsError(f"{self.path}: unreadable maps file ({exc})") from exc
            self._pid = os.getpid()
            if self._file.attrs.get("format") != FORMAT:
                raise MapsError(f"{self.path}: not a maps file (format attribute is not {FORMAT!r})")
        return self._file

    def _load_index(self) -> None:
        f = self._open()
        try:
            idx = f["index"]
            self._ids = [s.decode() if isinstance(s, bytes) else str(s) for s in idx["ids"][...]]
            self._offset = idx["offset"][...]
            self._k = idx["num_present"][...]
            cls = idx["class_ids"][...]
            self._image_hw = idx["image_hw"][...]
            self._scaled_hw = idx["scaled_hw"][...]
            self._valid_hw = idx["valid_hw"][...]
        except KeyError as exc:
            raise MapsError(f"{self.path}: malformed maps file ({exc})") from exc
        starts = np.concatenate([[0], np.cumsum(self._k)]).astype(np.int64)
        self._classes = [cls[starts[i]:starts[i + 1]].astype(int).tolist() for i in range(len(self._ids))]
        self._class_start = starts
        self._index = {image_id: i for i, image_id in enumerate(self._ids)}
        raw = dict(f.attrs)
        json_keys = set(json.loads(raw.pop(_JSON_KEYS_ATTR, "[]")))
        attrs = {}
        for key, value in raw.items():
            if isinstance(value, bytes):
                value = value.decode()
            if key in json_keys:
                value = json.loads(value)
            elif isinstance(value, np.generic):
                value = value.item()
            attrs[key] = value
        self.attrs: dict[str, Any] = attrs
        self.encoding = str(attrs.get("encoding", "float16"))  # format version 1: float16, no attribute
        if self.encoding not in ENCODINGS:
            raise MapsError(f"{self.path}: unknown maps encoding {self.encoding!r}")
        self._scale = None
        if self.encoding == "int8":
            if "scale" not in f["index"]:
                raise MapsError(f"{self.path}: malformed maps file (int8 encoding without index/scale)")
            self._scale = f["index"]["scale"][...]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> "MapsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    # ------------------------------------------------------------------ reading

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def info(self, image_id: str) -> dict:
        """Index row of one image (no map data read)."""
        i = self._row(image_id)
        return {
            "class_ids": list(self._classes[i]),
            "image_hw": tuple(int(v) for v in self._image_hw[i]),
            "scaled_hw": tuple(int(v) for v in self._scaled_hw[i]),
            "valid_hw": tuple(int(v) for v in self._valid_hw[i]),
        }

    def _row(self, image_id: str) -> int:
        try:
            return self._index[image_id]
        except KeyError:
            raise MapsError(f"{self.path}: no maps for image id {image_id!r}") from None

    def read(self, image_id: str) -> dict:
        """``dict(cam, td, class_ids, image_hw, valid_hw, scaled_hw)``; cam/td float32 (k, vh, vw)."""
        i = self._row(image_id)
        out = self.info(image_id)
        k = int(self._k[i])
        vh, vw = out["valid_hw"]
        n = k * vh * vw
        o = int(self._offset[i])
        block = self._open()["data"][o:o + 2 * n] if n else np.zeros(0, np.float32)
        cam = block[:n].reshape(k, vh, vw)
        td = block[n:].reshape(k, vh, vw)
        if self._scale is not None:
            s = self._scale[4 * self._class_start[i]:4 * self._class_start[i + 1]].reshape(2 * k, 2)
            out["cam"], out["td"] = dequantize_int8(cam, s[:k]), dequantize_int8(td, s[k:])
        else:
            out["cam"], out["td"] = cam.astype(np.float32), td.astype(np.float32)
        return out


__all__ = ["MapsWriter", "MapsReader", "MapsError", "quantize_int8", "dequantize_int8", "FORMAT", "FORMAT_VERSION",
           "ENCODINGS"]
