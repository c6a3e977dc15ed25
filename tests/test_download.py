"""download / import / extraction, against an HTTP server the test starts on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from prlbench.data import download as dl
from prlbench.data.datasets import DATASETS
from prlbench.errors import ConfigError, DownloadError, ManualDownloadRequired

from _reference import safe_extract

NAME = "aliexpress_nl"
OUTER = "aliexpress_NL_datasets.zip"


# ------------------------------------------------------------------------ the test server
class _State:
    """What the server does; each test sets it up."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail: list[int] = []           # statuses answered first, one per request
        self.cut_after: int | None = None   # the next body stops after this many bytes
        self.then_fail: list[int] = []      # statuses answered after that cut
        self.ignore_range = False           # answer 200 with the whole file to a Range request
        self.misalign = False               # answer the next Range request from byte 0 (206)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.redirects: dict[str, str] = {}  # path -> Location of a 302
        self.content_types: dict[str, str] = {}  # path -> Content-Type header of its answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def do_GET(self) -> None:
        st: _State = self.server.state
        st.requests.append((self.path, self.headers.get("Range")))
        if st.fail:
            return self._empty(st.fail.pop(0))
        if self.path in st.redirects:
            return self._empty(302, {"Location": st.redirects[self.path]})
        body = st.files.get(self.path)
        if body is None:
            return self._empty(404)
        start, rng = 0, self.headers.get("Range")
        if rng and not st.ignore_range:
            start = 0 if st.misalign else int(rng.removeprefix("bytes=").rstrip("-"))
            st.misalign = False
            if start >= len(body):
                return self._empty(416, {"Content-Range": f"bytes */{len(body)}"})
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        if self.path in st.content_types:
            self.send_header("Content-Type", st.content_types[self.path])
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if st.cut_after is not None:  # send a part, then drop the connection
            n, st.cut_after, st.fail = st.cut_after, None, st.then_fail
            self.wfile.write(payload[:n])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(payload)

    def _empty(self, code: int, headers: dict | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a cut connection is expected
        pass


@contextlib.contextmanager
def serve(monkeypatch) -> Iterator[tuple[str, _State]]:
    """Runs the test server on 127.0.0.1; yields its base URL and its `_State`. Other test
    modules use it through a fixture of their own (see test_kuairand.py)."""
    for var in ("no_proxy", "NO_PROXY"):  # never send the loopback requests to a proxy
        monkeypatch.setenv(var, "*")
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.state = _State()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", srv.state
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def server(monkeypatch):
    with serve(monkeypatch) as s:
        yield s


def _content(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _files(raw: Path) -> list[str]:
    """Every file under raw/, hidden ones included, except the checksum record."""
    if not raw.exists():
        return []
    return sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*")
                  if p.is_file() and p.name != dl.CHECKSUMS)


def _records(raw: Path) -> dict:
    path = raw / dl.CHECKSUMS
    return json.loads(path.read_text()) if path.exists() else {}


def _get(url: str, data_dir: Path, **kw) -> Path:
    kw.setdefault("backoff", 0.01)  # tests never wait long between retries
    return dl.download(NAME, data_dir, url=url, progress=False, **kw)


# ------------------------------------------------------------------------------------ HTTP
def test_download_streams_and_records(server, tmp_path):
    base, st = server
    body = _content(300_000)
    st.files["/d/file.bin"] = body
    raw = _get(f"{base}/d/file.bin", tmp_path)
    assert raw == tmp_path / NAME / "raw"
    assert (raw / "file.bin").read_bytes() == body
    assert _files(raw) == ["file.bin"]  # no .part left
    rec = _records(raw)["file.bin"]
    assert rec == {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body),
                   "source": f"{base}/d/file.bin",
                   "url_sha256": hashlib.sha256(f"{base}/d/file.bin".encode()).hexdigest()}
    _get(f"{base}/d/file.bin", tmp_path)  # already there and intact: not fetched again
    assert len(st.requests) == 1


def test_resume_after_cut_connection(server, tmp_path):
    base, st = server
    body = _content(200_000, seed=1)
    st.files["/f.bin"], st.cut_after = body, 70_000
    raw = _get(f"{base}/f.bin", tmp_path, retries=3)
    assert (raw / "f.bin").read_bytes() == body
    assert [r[1] for r in st.requests] == [None, "bytes=70000-"]


def test_resume_of_a_partial_file_from_an_earlier_run(server, tmp_path):
    base, st = server
    body = _content(50_000, seed=2)
    st.files["/f.bin"] = body
    raw = tmp_path / NAME / "raw"
    raw.mkdir(parents=True)
    (raw / "f.bin.part").write_bytes(body[:12_345])
    _get(f"{base}/f.bin", tmp_path)
    assert (raw / "f.bin").read_bytes() == body
    assert st.requests == [("/f.bin", "bytes=12345-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    base, st = server
    body = _content(40_000, seed=3)
    st.files["/f.bin"], st.ignore_range = body, True
    raw = tmp_path / NAME / "raw"
    raw.mkdir(parents=True)
    (raw / "f.bin.part").write_bytes(b"garbage that must not stay")
    _get(f"{base}/f.bin", tmp_path)
    assert (raw / "f.bin").read_bytes() == body


def test_416_for_a_complete_partial_file(server, tmp_path):
    base, st = server
    body = _content(10_000, seed=4)
    st.files["/f.bin"] = body
    raw = tmp_path / NAME / "raw"
    raw.mkdir(parents=True)
    (raw / "f.bin.part").write_bytes(body)
    _get(f"{base}/f.bin", tmp_path)
    assert (raw / "f.bin").read_bytes() == body
    assert st.requests == [("/f.bin", "bytes=10000-")]


def test_404_fails_at_once_and_leaves_nothing(server, tmp_path):
    base, st = server
    t0 = time.perf_counter()
    with pytest.raises(DownloadError, match=r"HTTP 404.*/missing\.zip.*--from"):
        _get(f"{base}/missing.zip", tmp_path, backoff=5.0)
    assert time.perf_counter() - t0 < 2.0  # no retries, no backoff
    assert len(st.requests) == 1
    assert _files(tmp_path / NAME / "raw") == []


def test_500_then_success(server, tmp_path):
    base, st = server
    body = _content(5_000, seed=5)
    st.files["/f.bin"], st.fail = body, [500]
    raw = _get(f"{base}/f.bin", tmp_path)
    assert (raw / "f.bin").read_bytes() == body
    assert len(st.requests) == 2


def test_retries_exhausted_keep_the_partial_file(server, tmp_path):
    base, st = server
    st.files["/f.bin"], st.cut_after = _content(30_000, seed=6), 1_000
    st.then_fail = [503] * 5  # the cut leaves 1000 bytes, then the 503s use up the retries
    with pytest.raises(DownloadError, match=r"after 3 attempts.*1,000 bytes.*resume"):
        _get(f"{base}/f.bin", tmp_path, retries=2)
    assert len(st.requests) == 3
    assert _files(tmp_path / NAME / "raw") == ["f.bin.part"]  # kept, never taken as done
    assert dl._load_records(tmp_path / NAME / "raw") == {}


def test_retries_exhausted_with_nothing_received_keep_no_part_file(server, tmp_path):
    base, st = server
    st.files["/f.bin"], st.fail = _content(3_000, seed=6), [503] * 3
    with pytest.raises(DownloadError, match=r"after 3 attempts.*nothing was received") as err:
        _get(f"{base}/f.bin", tmp_path, retries=2)
    assert "is kept" not in str(err.value)
    assert _files(tmp_path / NAME / "raw") == []


def test_expected_sha256_mismatch_keeps_nothing(server, tmp_path):
    base, st = server
    body = _content(8_000, seed=7)
    st.files["/f.bin"] = body
    with pytest.raises(DownloadError, match=r"f\.bin.*does not match the expected.*not kept"):
        _get(f"{base}/f.bin", tmp_path, sha256="0" * 64)
    raw = tmp_path / NAME / "raw"
    assert _files(raw) == [] and _records(raw) == {}
    _get(f"{base}/f.bin", tmp_path, sha256=hashlib.sha256(body).hexdigest())  # the right one
    assert (raw / "f.bin").read_bytes() == body


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="only http"):
        dl.download(NAME, tmp_path, url="file:///etc/passwd", progress=False)
    with pytest.raises(ConfigError, match="not both"):
        dl.download(NAME, tmp_path, url="http://127.0.0.1/x.zip", from_path=tmp_path)
    with pytest.raises(ConfigError, match="sha256"):
        dl.download(NAME, tmp_path, url="http://127.0.0.1/x.zip", sha256="abc")
    with pytest.raises(ConfigError, match="valid data sets"):
        dl.download("nope", tmp_path)


# ---------------------------------------------------------------------- manual / synthetic
@pytest.mark.parametrize("name", ["aliexpress_nl", "aliccp"])
def test_manual_download_message(tmp_path, name):
    spec = DATASETS.get(name)
    with pytest.raises(ManualDownloadRequired) as err:
        dl.download(name, tmp_path, progress=False)
    msg = str(err.value)
    assert spec.landing_page in msg and "tianchi.aliyun.com/dataset/" in msg
    for f in spec.raw_files:
        assert f in msg
    assert f"prlbench download {name} --from PATH/TO/" in msg
    assert f"prlbench preprocess {name} --data-dir {tmp_path}" in msg
    assert not (tmp_path / name / "raw").exists()


def test_synthetic_has_nothing_to_download(tmp_path):
    with pytest.raises(ConfigError, match="nothing to download.*preprocess synthetic"):
        dl.download("synthetic", tmp_path)


# ---------------------------------------------------------------------------------- import
def test_import_file_and_reimport_checks(tmp_path):
    src = tmp_path / "dl" / "sample_skeleton_train.csv"
    src.parent.mkdir()
    src.write_bytes(b"1,0,0,abc,2,x\n")
    raw = dl.download("aliccp", tmp_path / "data", from_path=src, progress=False)
    assert (raw / src.name).read_bytes() == src.read_bytes()
    assert _records(raw)[src.name]["source"] == str(src.resolve())
    dl.download("aliccp", tmp_path / "data", from_path=src, progress=False)  # same: fine
    first_hash = _records(raw)[src.name]["sha256"]
    src.write_bytes(b"1,1,0,abc,2,y\n")
    new_hash = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(DownloadError) as err:
        dl.download("aliccp", tmp_path / "data", from_path=src, progress=False)
    msg = str(err.value)
    assert src.name in msg and first_hash in msg and new_hash in msg and "delete" in msg
    assert (raw / src.name).read_bytes() == b"1,0,0,abc,2,x\n"  # the original is untouched
    assert _files(raw) == [src.name]


def test_import_folder_then_plain_download_verifies(tmp_path):
    spec = DATASETS.get("aliccp")
    folder = tmp_path / "dl"
    (folder / "sub").mkdir(parents=True)
    for i, f in enumerate(spec.raw_files):
        (folder / f).write_text(f"{i},1\n")
    (folder / "sub" / "notes.txt").write_text("hello\n")
    (folder / ".DS_Store").write_text("x")
    raw = dl.download("aliccp", tmp_path / "data", from_path=folder, progress=False)
    assert _files(raw) == sorted([*spec.raw_files, "sub/notes.txt"])
    assert set(_records(raw)) == set(_files(raw))
    assert dl.download("aliccp", tmp_path / "data", progress=False) == raw  # all there
    (raw / spec.raw_files[0]).write_text("9,1\n")  # same size, other bytes
    with pytest.raises(DownloadError, match=spec.raw_files[0]):
        dl.download("aliccp", tmp_path / "data", progress=False)


def test_import_missing_source(tmp_path):
    with pytest.raises(DownloadError, match="no such file"):
        dl.download(NAME, tmp_path, from_path=tmp_path / "absent.zip", progress=False)


def test_verify_raw_detects_changes(tmp_path):
    src = tmp_path / "a.csv"
    src.write_bytes(b"0123456789")
    raw = dl.download("aliccp", tmp_path / "data", from_path=src, progress=False)
    dl.verify_raw(raw)
    (raw / "a.csv").write_bytes(b"0123456780")  # same size: caught by the hash
    with pytest.raises(DownloadError, match=r"a\.csv does not match the sha256"):
        dl.verify_raw(raw)
    (raw / "a.csv").write_bytes(b"012")
    with pytest.raises(DownloadError, match=r"a\.csv has 3 bytes, 10 were recorded"):
        dl.verify_raw(raw)
    (raw / "a.csv").unlink()
    with pytest.raises(DownloadError, match=r"a\.csv is recorded .* but missing; put it back, or "
                       "remove its entry"):
        dl.verify_raw(raw)


# ------------------------------------------------------------------------------ extraction
def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _csv(rows: int, cols: int, seed: int) -> bytes:
    """A small header-less CSV like the AliExpress inner files."""
    rng = np.random.default_rng(seed)
    lines = [",".join(str(v) for v in rng.integers(0, 9, cols)) for _ in range(rows)]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def aliexpress_archive(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """An outer zip holding the four inner zips, each with one header-less CSV."""
    inner = {}
    for i, (kind, cols) in enumerate([("user", 33), ("item", 49)]):
        for j, split in enumerate(["train", "test"]):
            stem = f"nl_{kind}_{split}"
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(f"{stem}.csv", _csv(20, cols, seed=2 * i + j))
            inner[f"{stem}.zip"] = buf.getvalue()
    src = tmp_path / "hand"
    src.mkdir()
    return _zip(src / OUTER, inner), inner


def _check_aliexpress_raw(raw: Path, inner: dict[str, bytes]) -> None:
    assert _files(raw) == sorted([OUTER, *inner])  # the outer zip is kept, inner not opened
    for name, data in inner.items():
        assert (raw / name).read_bytes() == data
        with zipfile.ZipFile(raw / name) as zf:
            assert zf.namelist() == [name.replace(".zip", ".csv")]
    rec = _records(raw)
    sha = rec[OUTER]["sha256"]
    assert {rec[n]["source"] for n in inner} == {f"extracted from {OUTER} (sha256 {sha})"}
    dl.verify_raw(raw)


def test_aliexpress_nested_import(aliexpress_archive, tmp_path):
    outer, inner = aliexpress_archive
    raw = dl.download(NAME, tmp_path / "data", from_path=outer, progress=False)
    _check_aliexpress_raw(raw, inner)
    before = {n: (raw / n).stat().st_mtime_ns for n in inner}
    assert dl.download(NAME, tmp_path / "data", progress=False) == raw  # no re-extraction
    assert {n: (raw / n).stat().st_mtime_ns for n in inner} == before


def test_replaced_archive_is_extracted_again(aliexpress_archive, tmp_path):
    """Deleting an archive and its record, then importing another of that name, extracts the
    new one: files only the old one held go, files both hold take the new contents."""
    outer, inner = aliexpress_archive
    raw = dl.download(NAME, tmp_path / "data", from_path=outer, progress=False)
    (raw / OUTER).unlink()
    rec = _records(raw)
    del rec[OUTER]
    (raw / dl.CHECKSUMS).write_text(json.dumps(rec))
    names = sorted(inner)
    new = {n: inner[n] for n in names[1:]}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(names[1].replace(".zip", ".csv"), "changed\n")
    new[names[1]] = buf.getvalue()
    other = tmp_path / "other"
    other.mkdir()
    dl.download(NAME, tmp_path / "data", from_path=_zip(other / OUTER, new), progress=False)
    assert not (raw / names[0]).exists()
    for n, data in new.items():
        assert (raw / n).read_bytes() == data
    assert names[0] not in _records(raw)
    dl.verify_raw(raw)


def test_aliexpress_nested_download(server, aliexpress_archive, tmp_path):
    base, st = server
    outer, inner = aliexpress_archive
    st.files[f"/mirror/{OUTER}"] = outer.read_bytes()
    raw = dl.download(NAME, tmp_path / "data", url=f"{base}/mirror/{OUTER}", progress=True)
    _check_aliexpress_raw(raw, inner)  # with the progress bars drawn, too


def test_folder_import_keeps_inner_archives(aliexpress_archive, tmp_path):
    _, inner = aliexpress_archive
    folder = tmp_path / "unzipped"
    folder.mkdir()
    for name, data in inner.items():
        (folder / name).write_bytes(data)
    raw = dl.download(NAME, tmp_path / "data", from_path=folder, progress=False)
    assert _files(raw) == sorted(inner)


def _assert_nothing_extracted(dest: Path, allowed: set[str]) -> None:
    left = {p.relative_to(dest).as_posix() for p in dest.rglob("*")}
    assert left <= allowed, left


def test_zip_with_dotdot_entry_is_refused(tmp_path):
    arc = _zip(tmp_path / "a.zip", {"ok.csv": b"1\n", "../evil": b"x"})
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match=r"\.\./evil.*'\.\.'"):
        safe_extract(arc, dest)
    _assert_nothing_extracted(dest, set())
    assert not (tmp_path / "evil").exists()


def test_unsafe_archive_through_download_is_not_kept(server, tmp_path):
    base, st = server
    arc = _zip(tmp_path / OUTER, {"x/../../evil": b"x", "nl_user_train.zip": b"z"})
    st.files[f"/{OUTER}"] = arc.read_bytes()
    with pytest.raises(DownloadError, match=rf"refusing entry.*{OUTER} was not kept"):
        _get(f"{base}/{OUTER}", tmp_path / "data")
    raw = tmp_path / "data" / NAME / "raw"
    assert _files(raw) == [] and _records(raw) == {}  # neither the file nor its record
    with pytest.raises(ManualDownloadRequired):  # nothing is taken as done later
        dl.download(NAME, tmp_path / "data", progress=False)


def test_truncated_archive_of_zips_is_refused(aliexpress_archive, tmp_path):
    """Cut inside the last inner zip, the outer zip's tail is that inner zip's directory:
    zipfile alone would read the truncated file as the one inner zip."""
    outer, inner = aliexpress_archive
    stored = tmp_path / "stored" / OUTER  # inner zips stored as they are, as zip tools do
    stored.parent.mkdir()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:
        for name, blob in inner.items():
            zf.writestr(name, blob)
    data = stored.read_bytes()
    last = list(inner.values())[-1]
    cut = data[:data.index(last) + len(last)]  # ends exactly where the last inner zip ends
    with zipfile.ZipFile(io.BytesIO(cut)) as zf:  # the trap this test is about
        assert zf.namelist() == [list(inner)[-1].replace(".zip", ".csv")]
    truncated = tmp_path / "cut" / OUTER
    truncated.parent.mkdir()
    truncated.write_bytes(cut)
    with pytest.raises(DownloadError, match=r"damaged.*truncated.*not kept"):
        dl.download(NAME, tmp_path / "data", from_path=truncated, progress=False)
    raw = tmp_path / "data" / NAME / "raw"
    assert _files(raw) == [] and _records(raw) == {}
    raw = dl.download(NAME, tmp_path / "data", from_path=stored, progress=False)
    assert sorted(p.name for p in raw.glob("*.zip")) == sorted([OUTER, *inner])


def test_archive_imported_earlier_is_left_in_place(tmp_path):
    """An archive recorded on an earlier run is never deleted by a later refusal."""
    raw = tmp_path / "data" / NAME / "raw"
    raw.mkdir(parents=True)
    arc = _zip(raw / OUTER, {"../evil": b"x"})
    dl._accept(raw, OUTER, arc, "by hand", None)
    with pytest.raises(DownloadError, match=r"refusing entry.*delete .* and its entry"):
        dl.download(NAME, tmp_path / "data", progress=False)
    assert _files(raw) == [OUTER] and set(_records(raw)) == {OUTER}


def test_zip_with_symlink_is_refused(tmp_path):
    arc = tmp_path / "link.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("a.csv", b"1\n")
        info = zipfile.ZipInfo("link")
        info.create_system = 3
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DownloadError, match="'link'.*link or special"):
        safe_extract(arc, tmp_path / "dest")
    _assert_nothing_extracted(tmp_path / "dest", set())


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_tar_with_absolute_path_is_refused(tmp_path):
    arc = _tar(tmp_path / "abs.tar.gz", [(tarfile.TarInfo("ok.csv"), b"1\n"),
                                          (tarfile.TarInfo("/tmp/evil"), b"x")])
    with pytest.raises(DownloadError, match="/tmp/evil.*absolute"):
        safe_extract(arc, tmp_path / "dest")
    _assert_nothing_extracted(tmp_path / "dest", set())


def test_tar_with_links_is_refused(tmp_path):
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        link = tarfile.TarInfo("data.csv")
        link.type, link.linkname = kind, "/etc/passwd"
        arc = _tar(tmp_path / f"l{kind!r}.tgz", [(link, None)])
        with pytest.raises(DownloadError, match="link or special"):
            safe_extract(arc, tmp_path / "dest")
        _assert_nothing_extracted(tmp_path / "dest", set())


def test_safe_tar_extracts(tmp_path):
    sub = tarfile.TarInfo("./d")
    sub.type = tarfile.DIRTYPE
    arc = _tar(tmp_path / "ok.tar.gz", [(sub, None), (tarfile.TarInfo("./d/a.csv"), b"1,2\n"),
                                         (tarfile.TarInfo("b.csv"), b"3\n")])
    out = safe_extract(arc, tmp_path / "dest")
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in out) == ["b.csv",
                                                                               "d/a.csv"]
    assert (tmp_path / "dest" / "d" / "a.csv").read_bytes() == b"1,2\n"
    _assert_nothing_extracted(tmp_path / "dest", {"d", "d/a.csv", "b.csv"})


def test_archive_bomb_is_refused(tmp_path):
    arc = _zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(1_000_000)})
    assert arc.stat().st_size < 10_000  # small on disk, large when extracted
    with pytest.raises(DownloadError, match="archive bomb"):
        safe_extract(arc, tmp_path / "dest", max_bytes=100_000)
    _assert_nothing_extracted(tmp_path / "dest", set())


def test_lying_sizes_are_caught_while_writing(tmp_path):
    # Headers cannot lie to the stdlib readers (zip stops at the declared size and checks the
    # CRC), so feed the writer a stream longer than the budget it was given.
    budget = [100_000]
    dl._write_member(lambda: io.BytesIO(bytes(60_000)), tmp_path / "a.bin", budget)
    assert budget == [40_000] and (tmp_path / "a.bin").stat().st_size == 60_000
    with pytest.raises(DownloadError, match="more than the headers declare"):
        dl._write_member(lambda: io.BytesIO(bytes(60_000)), tmp_path / "b.bin", budget)


def test_misaligned_resume_restarts(server, tmp_path):
    base, st = server
    body = _content(20_000, seed=8)
    st.files["/f.bin"], st.misalign = body, True
    raw = tmp_path / NAME / "raw"
    raw.mkdir(parents=True)
    (raw / "f.bin.part").write_bytes(body[:5_000])
    _get(f"{base}/f.bin", tmp_path)
    assert (raw / "f.bin").read_bytes() == body
    assert [r[1] for r in st.requests] == ["bytes=5000-", None]


def test_damaged_archive(tmp_path):
    arc = tmp_path / "bad.zip"
    arc.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(DownloadError, match="neither a zip nor a tar"):
        safe_extract(arc, tmp_path / "dest")
    _assert_nothing_extracted(tmp_path / "dest", set())
    assert os.listdir(tmp_path / "dest") == []


def test_printed_commands_quote_paths_for_the_shell(tmp_path):
    import shlex

    text = dl.manual_instructions(DATASETS.get(NAME), tmp_path / "my data")
    line = next(x for x in text.splitlines() if "prlbench preprocess" in x)
    assert shlex.split(line)[-2:] == ["--data-dir", str(tmp_path / "my data")]


def test_folder_of_aliccp_archives_is_unpacked(tmp_path):
    """Tianchi serves Ali-CCP as .tar.gz files of CSVs: a folder of them is unpacked on import."""
    spec = DATASETS.get("aliccp")
    folder = tmp_path / "dl"
    folder.mkdir()
    for split in ("train", "test"):
        names = [f for f in spec.raw_files if f.endswith(f"_{split}.csv")]
        _tar(folder / f"sample_{split}.tar.gz",
             [(tarfile.TarInfo(n), f"{n},1\n".encode()) for n in names])
    raw = dl.download("aliccp", tmp_path / "data", from_path=folder, progress=False)
    for name in spec.raw_files:
        assert (raw / name).read_text() == f"{name},1\n"
    rec = _records(raw)
    assert rec["sample_skeleton_train.csv"]["source"].startswith("extracted from sample_train")
    dl.verify_raw(raw)


def test_a_download_waits_while_another_works_on_the_data_set(tmp_path):
    """Two imports into one raw/ (train and test archives in two terminals) take turns, so
    neither sweeps the other's extraction nor loses the other's checksum record."""
    from prlbench.data.cache import dataset_lock

    src = tmp_path / "sample_skeleton_train.csv"
    src.write_text("1,0\n")
    done = []
    with dataset_lock(tmp_path / "data", "aliccp"):
        t = threading.Thread(target=lambda: done.append(
            dl.download("aliccp", tmp_path / "data", from_path=src, progress=False)))
        t.start()
        time.sleep(0.5)
        assert t.is_alive() and not done
    t.join(timeout=30)
    assert done and _records(done[0])[src.name]["bytes"] == 4
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["aliccp"]


def test_a_presigned_url_is_recorded_without_its_token(server, tmp_path):
    base, st = server
    st.files["/d/file.bin?token=SECRET&sig=x"] = _content(1_000)
    raw = _get(f"{base}/d/file.bin?token=SECRET&sig=x", tmp_path)
    assert _records(raw)["file.bin"]["source"] == f"{base}/d/file.bin"
    assert "SECRET" not in (raw / dl.CHECKSUMS).read_text()


def test_an_interrupted_import_keeps_no_partial_copy(tmp_path, monkeypatch):
    import contextlib

    src = tmp_path / "sample_skeleton_train.csv"
    src.write_bytes(b"1,0\n" * 1000)

    @contextlib.contextmanager
    def interrupting(*args):
        def advance(n):
            raise KeyboardInterrupt
        yield advance

    monkeypatch.setattr(dl, "_bar", interrupting)
    with pytest.raises(KeyboardInterrupt):
        dl.download("aliccp", tmp_path / "data", from_path=src, progress=False)
    assert _files(tmp_path / "data" / "aliccp" / "raw") == []
    monkeypatch.undo()

    def interrupted_hash(path, *a, **k):  # Ctrl-C while the copy is being hashed
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "sha256_file", interrupted_hash)
    with pytest.raises(KeyboardInterrupt):
        dl.download("aliccp", tmp_path / "data", from_path=src, progress=False)
    assert _files(tmp_path / "data" / "aliccp" / "raw") == []


def test_a_redirecting_download_endpoint_keeps_the_files_own_name(server, aliexpress_archive,
                                                                  tmp_path):
    base, st = server
    outer, inner = aliexpress_archive
    st.files[f"/files/{OUTER}"] = outer.read_bytes()
    st.redirects["/dl"] = f"{base}/files/{OUTER}"
    raw = _get(f"{base}/dl", tmp_path)
    assert not (raw / "dl").exists()
    _check_aliexpress_raw(raw, inner)  # named as served, so recognised and extracted
    n = len(st.requests)
    _get(f"{base}/dl", tmp_path)  # found again under its own name: not fetched again
    assert len(st.requests) == n


def test_recorded_urls_keep_ipv6_brackets_and_drop_credentials():
    assert dl._without_query("http://[::1]:8080/x.zip?sig=1") == "http://[::1]:8080/x.zip"
    assert dl._without_query("https://u:pw@h.example/a.zip#f") == "https://h.example/a.zip"


def test_an_html_page_is_not_taken_for_data(server, tmp_path):
    base, st = server
    st.files["/aliexpress_NL_datasets.zip"] = b"\n  <!DOCTYPE html><html>Please log in</html>"
    with pytest.raises(DownloadError, match="sent an HTML page, not a data file.*--from PATH"):
        _get(f"{base}/aliexpress_NL_datasets.zip", tmp_path)
    assert _files(tmp_path / NAME / "raw") == [] and _records(tmp_path / NAME / "raw") == {}


def test_two_endpoints_of_one_path_never_mix(server, tmp_path):
    base, st = server
    a, b = _content(20_000, seed=11), _content(20_000, seed=12)
    st.files["/dl?id=1"], st.files["/dl?id=2"] = a, b
    raw = _get(f"{base}/dl?id=1", tmp_path)
    assert (raw / "dl").read_bytes() == a
    with pytest.raises(DownloadError, match="differs from the one recorded"):
        _get(f"{base}/dl?id=2", tmp_path)  # fetched, compared, refused: not id=1's file
    assert (raw / "dl").read_bytes() == a and _files(raw) == ["dl"]
    n = len(st.requests)
    assert _get(f"{base}/dl?id=1", tmp_path) == raw and len(st.requests) == n  # found again


def test_an_html_page_with_a_bom_is_refused_too(server, tmp_path):
    base, st = server
    st.files["/x.zip"] = b"\xef\xbb\xbf<!DOCTYPE html><html>log in</html>"
    with pytest.raises(DownloadError, match="sent an HTML page"):
        _get(f"{base}/x.zip", tmp_path)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32",
                                      "utf-32-le", "utf-32-be"])
def test_an_html_page_in_utf16_or_utf32_is_refused_too(server, tmp_path, encoding):
    base, st = server
    st.files["/x.zip"] = "\n<!DOCTYPE html><html>log in</html>".encode(encoding)
    with pytest.raises(DownloadError, match="sent an HTML page"):
        _get(f"{base}/x.zip", tmp_path)


def test_the_html_check_cannot_refuse_data():
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.csv", "x,y\n1,2\n")
    for data in (buf.getvalue(), b"search_id,feature\n1,2\n", b"\x1f\x8b\x08\x00" + bytes(300),
                 bytes(300), "a,b\n1,2\n".encode("utf-16")):
        assert not dl._looks_like_html(data), data[:20]


@pytest.mark.parametrize("page", [
    b"<!-- SSO -->\n<html><body>Please log in</body></html>",
    b"<head><title>Login</title></head><body>log in</body>",
    b"\xef\xbb\xbf<?xml version='1.0'?>\n<!-- a -->\r\n  <!--b-->\n<BODY>log in</BODY>",
])
def test_an_html_page_behind_a_comment_or_without_doctype_is_refused(server, tmp_path, page):
    base, st = server
    st.files["/sample_skeleton_train.csv"] = page
    with pytest.raises(DownloadError, match="sent an HTML page, not a data file"):
        dl.download("aliccp", tmp_path, url=f"{base}/sample_skeleton_train.csv",
                    progress=False, backoff=0.01)
    raw = tmp_path / "aliccp" / "raw"
    assert _files(raw) == [] and _records(raw) == {}


def test_a_text_html_answer_is_refused_whatever_its_body(server, tmp_path):
    base, st = server
    st.files["/sample_skeleton_train.csv"] = b"1,0,0,abc,0,\n"  # looks like data, is not
    st.content_types["/sample_skeleton_train.csv"] = "text/html; charset=utf-8"
    with pytest.raises(DownloadError, match="sent an HTML page.*text/html"):
        dl.download("aliccp", tmp_path, url=f"{base}/sample_skeleton_train.csv",
                    progress=False, backoff=0.01)
    raw = tmp_path / "aliccp" / "raw"
    assert _files(raw) == [] and _records(raw) == {}


def test_a_new_url_for_a_recorded_file_is_fetched_and_replaced_only_deliberately(server,
                                                                                  tmp_path):
    """A wrong file kept earlier (a page an older prlbench took for data) must not make a
    later --url to the right file a silent no-op: it is fetched, compared, and the message
    says how to replace the recorded one."""
    base, st = server
    wrong, right = b"wrong,0\n", b"1,0,0,abc,0,\n"
    st.files["/old/sample_skeleton_train.csv"] = wrong
    st.files["/new/sample_skeleton_train.csv"] = right
    get = functools.partial(dl.download, "aliccp", tmp_path, progress=False, backoff=0.01)
    raw = get(url=f"{base}/old/sample_skeleton_train.csv")
    n = len(st.requests)
    with pytest.raises(DownloadError, match=r"differs from the one recorded.*delete .*"
                       r"sample_skeleton_train\.csv and its entry in .*checksums\.json"):
        get(url=f"{base}/new/sample_skeleton_train.csv")
    assert len(st.requests) == n + 1  # the new URL was asked, not skipped
    assert (raw / "sample_skeleton_train.csv").read_bytes() == wrong  # nothing replaced yet
    assert _files(raw) == ["sample_skeleton_train.csv"]
    (raw / "sample_skeleton_train.csv").unlink()  # what the message says to do
    records = _records(raw)
    del records["sample_skeleton_train.csv"]
    (raw / dl.CHECKSUMS).write_text(json.dumps(records))
    get(url=f"{base}/new/sample_skeleton_train.csv")
    assert (raw / "sample_skeleton_train.csv").read_bytes() == right
    assert _records(raw)["sample_skeleton_train.csv"]["source"].endswith("/new/"
                                                                         "sample_skeleton_train.csv")
    n = len(st.requests)
    get(url=f"{base}/new/sample_skeleton_train.csv")  # the same URL again: not fetched again
    assert len(st.requests) == n


# ------------------------------------------------- links planted in a shared --data-dir
def _plant(link: Path, victim: Path, content: bytes | None = b"precious\n") -> None:
    """A symlink at `link` to a file outside the data folder (which may not exist)."""
    if content is not None:
        victim.write_bytes(content)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)


@pytest.mark.parametrize("exists", [True, False])
def test_a_planted_lock_file_link_is_refused(tmp_path, exists):
    from prlbench.data.cache import dataset_lock
    from prlbench.errors import CacheError

    victim = tmp_path / "victim"
    link = tmp_path / "data" / f".{NAME}.lock"
    _plant(link, victim, b"precious\n" if exists else None)
    with pytest.raises(CacheError, match=rf"{link}.* is a symbolic link; prlbench does not "
                       "follow links it did not make: remove it"):
        with dataset_lock(tmp_path / "data", NAME):
            pass
    assert victim.read_bytes() == b"precious\n" if exists else not victim.exists()
    assert link.is_symlink()


def test_a_planted_part_file_link_receives_nothing(server, tmp_path):
    base, st = server
    st.files["/f.bin"] = _content(5_000, seed=5)
    victim = tmp_path / "victim"
    link = tmp_path / NAME / "raw" / "f.bin.part"
    _plant(link, victim)
    with pytest.raises(DownloadError, match=rf"{link} is a symbolic link; .*remove it"):
        _get(f"{base}/f.bin", tmp_path)
    assert victim.read_bytes() == b"precious\n" and link.is_symlink()
    assert not (tmp_path / NAME / "raw" / "f.bin").exists()


def test_a_planted_part_file_link_is_refused_on_import_too(tmp_path):
    src = tmp_path / "sample_skeleton_train.csv"
    src.write_bytes(b"1,0\n")
    victim = tmp_path / "victim"
    link = tmp_path / "data" / "aliccp" / "raw" / "sample_skeleton_train.csv.part"
    _plant(link, victim)
    with pytest.raises(DownloadError, match=rf"{link} is a symbolic link"):
        dl.download("aliccp", tmp_path / "data", from_path=src, progress=False)
    assert victim.read_bytes() == b"precious\n" and link.is_symlink()


def test_a_planted_checksums_temporary_link_is_not_written_through(server, tmp_path):
    base, st = server
    body = _content(3_000, seed=6)
    st.files["/f.bin"] = body
    victim = tmp_path / "victim"
    link = tmp_path / NAME / "raw" / (dl.CHECKSUMS + ".tmp")
    _plant(link, victim)
    raw = _get(f"{base}/f.bin", tmp_path)
    assert victim.read_bytes() == b"precious\n" and link.is_symlink()
    assert _records(raw)["f.bin"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert (raw / "f.bin").read_bytes() == body
    assert sorted(p.name for p in raw.iterdir()) == [dl.CHECKSUMS, link.name, "f.bin"]


def test_a_zip_with_a_duplicate_entry_name_is_refused(tmp_path):
    """Two entries of one name: which one is 'the' file is up to the reader (zipfile: the
    last), so neither is taken."""
    import warnings

    arc = tmp_path / "a.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(arc, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile warns "Duplicate name"
        zf.writestr("ok.csv", b"1\n")
        zf.writestr("d/x.csv", b"first\n")
        zf.writestr("d/x.csv", b"second\n")
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match=r"a\.zip: refusing entry 'd/x\.csv' \(a second "
                       r"entry of that name\)"):
        safe_extract(arc, dest)
    _assert_nothing_extracted(dest, set())


def test_a_host_that_does_not_resolve_fails_at_once_without_retrying(tmp_path, monkeypatch):
    """No network (or a mistyped host): the name lookup fails, which no retry mends, so the
    download fails at once, naming the host, and keeps nothing. No packet leaves this machine:
    the lookup itself is replaced."""
    def lookup(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    slept = []
    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(dl.time, "sleep", slept.append)
    with pytest.raises(DownloadError, match=r"cannot reach mirror\.example .*online"):
        dl.download("aliexpress_nl", tmp_path, url="http://mirror.example/NL.zip",
                    progress=False)
    assert slept == []
    assert not (tmp_path / "aliexpress_nl").exists()  # no empty folder left behind
