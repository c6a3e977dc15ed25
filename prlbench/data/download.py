"""Raw data: HTTP(S) downloads, imports of files fetched by hand, checksums, safe extraction.

`download` fills `data_dir/<name>/raw/` from a URL (streamed to `<file>.part`, resumed with HTTP
Range, retried with backoff on connection errors and 5xx, renamed only once complete), from a
file or folder fetched by hand, or else says where to get the files (Tianchi needs a login).
Every file's sha256 and size go into `raw/checksums.json` on first import; other content under
the same name later, or a file changed on disk (`verify_raw`), is an error. Where a data set
publishes an md5 for its archive (KuaiRand), the downloaded or imported archive must match it, or
nothing is kept; the md5 is recorded beside the sha256. An archive given on
its own or named in the spec is extracted by `extract_archive` (no absolute paths, `..`, links or
devices; a size cap; files move into place only once every entry was written). Archives inside
archives (AliExpress's inner zips) or inside an imported folder stay as they are.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
import socket
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterator, NamedTuple
from urllib.parse import unquote, urlparse

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

from prlbench import __version__
from prlbench.data.cache import (cache_folder, dataset_lock, link_refused, open_nofollow,
                                 sha256_file, sweep_stale)
from prlbench.data.csvio import check_zip_start
from prlbench.data.datasets import DATASETS, DatasetSpec
from prlbench.errors import ConfigError, DownloadError, ManualDownloadRequired
from prlbench.fileio import atomic_write_bytes
from prlbench.registry import UnknownNameError

CHECKSUMS = "checksums.json"
PART = ".part"
CHUNK = 1 << 20
TIMEOUT_S = 60.0
MAX_BACKOFF_S = 300.0
MAX_EXTRACT_BYTES = 200 * 2**30
# An archive may expand at most MAX_RATIO times its own size (CSV compresses 3-15x; a bomb
# reaches thousands), once it expands to more than RATIO_FLOOR bytes (tiny test archives of
# repeated rows compress far better than real data).
MAX_RATIO = 100
RATIO_FLOOR = 64 * 2**20
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
DEFAULT_DATA_DIR = Path("datasets")  # the CLI's default; commands we print omit it
Facts = dict[str, tuple[str, int]]  # relative path -> (sha256, bytes)


class ArchiveRefused(DownloadError):
    """An archive that is damaged, unsafe or a possible bomb (not: a full disk)."""


class _Retryable(Exception):
    """A transient failure (connection lost, 5xx): wait, then resume from the partial file."""


def download(name: str, data_dir: Path, *, url: str | None = None,
             from_path: Path | None = None, progress: bool = True, retries: int = 5,
             backoff: float = 1.0, sha256: str | None = None) -> Path:
    """Fetch or import the raw files of data set `name`; returns `data_dir/name/raw`."""
    try:
        spec = DATASETS.get(name)
    except UnknownNameError as e:
        raise ConfigError(str(e)) from e
    if url is not None and from_path is not None:
        raise ConfigError("give either --url or --from, not both")
    if spec.generated:
        raise ConfigError(f"{name} is generated locally: nothing to download; "
                          f"run: prlbench preprocess {name}")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ConfigError(f"--sha256 {sha256!r}: expected 64 hexadecimal digits")
    raw = Path(data_dir) / name / "raw"
    url = url if url is not None or from_path is not None else spec.url
    if from_path is None and url is None and not raw.parent.is_dir():
        raise ManualDownloadRequired(manual_instructions(spec, Path(data_dir)))
    if from_path is not None and not Path(from_path).expanduser().exists():
        raise DownloadError(f"--from {from_path}: no such file or folder")
    # One download or preprocess of a data set at a time: none moves raw/ or rewrites
    # checksums.json under another (a second one waits).
    with dataset_lock(Path(data_dir), name):
        sweep_stale(cache_folder(data_dir, name))  # a preprocess killed mid-swap: raw/ back
        if from_path is None and url is None and not (
                spec.raw_files and all((raw / f).is_file() for f in spec.raw_files)):
            raise ManualDownloadRequired(manual_instructions(spec, Path(data_dir)))
        fresh = [d for d in (raw.parent, raw) if not d.exists()]
        try:
            _download_locked(spec, raw, url=url, from_path=from_path, progress=progress,
                             retries=retries, backoff=backoff, sha256=sha256)
        except BaseException:
            for d in reversed(fresh):  # a failure leaves no empty folder it made behind
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if empty: a kept partial file keeps its folder
            raise
    return raw


def _download_locked(spec: DatasetSpec, raw: Path, *, url: str | None, from_path: Path | None,
                     progress: bool, retries: int, backoff: float, sha256: str | None) -> None:
    known = set(_load_records(raw)) if raw.is_dir() else set()
    if from_path is not None:
        given, single = _import(Path(from_path).expanduser(), raw, sha256=sha256,
                                progress=progress, md5=spec.md5, md5_names=spec.raw_files)
    elif url is not None:
        given, single = [_download_url(url, raw, sha256, progress, retries, backoff,
                                       md5=spec.md5)], True
    else:
        verify_raw(raw)  # imported earlier: check it, extract what is still unextracted
        given, single = [raw / f for f in spec.raw_files], True
    # Archives given alone, or named as raw files, are unpacked; so is every archive of a folder
    # when the raw files themselves are not archives (Ali-CCP's .tar.gz of CSVs).
    unpack_all = not any(_is_archive(Path(f)) for f in spec.raw_files)
    for path in given:
        if _is_archive(path) and (single or unpack_all or path.name in spec.raw_files):
            try:
                _extract_recorded(path, raw, progress)
            except ArchiveRefused as e:
                if path.relative_to(raw).as_posix() in known:  # imported on an earlier run
                    raise ArchiveRefused(f"{e}; delete {path} and its entry in "
                                         f"{raw / CHECKSUMS} first") from None
                _forget(raw, path)  # a new archive that is damaged or unsafe is not kept
                raise ArchiveRefused(f"{e} ({path.name} was not kept)") from None


def _forget(raw: Path, path: Path) -> None:
    """Remove `path` and its checksum record (what `_accept` added)."""
    records = _load_records(raw)
    records.pop(path.relative_to(raw).as_posix(), None)
    _save_records(raw, records)
    path.unlink(missing_ok=True)


def manual_instructions(spec: DatasetSpec, data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """What `prlbench download NAME` prints for a data set without a public direct URL."""
    files = spec.raw_files
    where = f"PATH/TO/{files[0]}" if len(files) == 1 else "PATH/TO/FOLDER"
    dd = ("" if Path(data_dir) == DEFAULT_DATA_DIR else
          f" --data-dir {shlex.quote(str(data_dir))}")
    return "\n".join([
        f"{spec.name} has no public direct download: fetch its raw files by hand.",
        f"  Landing page: {spec.landing_page}",
        f"  {spec.obtain}",
        "  Expected file(s): " + ", ".join(files)
        + ("" if len(files) == 1 else " (put them in one folder)"),
        "Then run:",
        f"  prlbench download {spec.name} --from {where}{dd}",
        f"  prlbench preprocess {spec.name}{dd}",
        f"(A direct mirror works too: prlbench download {spec.name} --url URL{dd})",
    ])


def verify_raw(raw_dir: Path) -> None:
    """Check every file recorded in `raw_dir/checksums.json` (size first, then sha256)."""
    raw = Path(raw_dir)
    for rel, entry in _load_records(raw).items():
        _verify_one(raw, rel, entry)


def verify_checksums(source: Path) -> bool:
    """`verify_raw` where `checksums.json` sits next to a preprocess source; True if run."""
    folder = source if source.is_dir() else source.parent
    if not (folder / CHECKSUMS).is_file():
        return False
    verify_raw(folder)
    return True


def _verify_one(raw: Path, rel: str, entry: object) -> None:
    path, name = raw / rel, raw.parent.name
    fix = (f"delete it and its entry in {raw / CHECKSUMS}, then import it again: "
           f"prlbench download {name} --from PATH (or --url URL)")
    if not isinstance(entry, dict) or not {"sha256", "bytes"} <= entry.keys():
        raise DownloadError(f"{raw / CHECKSUMS}: the entry for {rel!r} is malformed; {fix}")
    if not path.is_file():
        raise DownloadError(f"{path} is recorded in {CHECKSUMS} but missing; put it back, or "
                            f"remove its entry in {raw / CHECKSUMS} and import it again: "
                            f"prlbench download {name} --from PATH (or --url URL)")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise DownloadError(f"{path} has {size} bytes, {entry['bytes']} were recorded when it "
                            f"was imported: the file changed; {fix}")
    if sha256_file(path) != entry["sha256"]:
        raise DownloadError(f"{path} does not match the sha256 recorded when it was imported "
                            f"({entry['sha256']}): the file changed; {fix}")


# ------------------------------------------------------------------------ checksum records
def _load_records(raw: Path) -> dict:
    path = raw / CHECKSUMS
    if not path.exists():
        return {}
    try:
        records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        records = None
    if not isinstance(records, dict):
        raise DownloadError(f"{path} is not a JSON object of checksums; delete it and import "
                            "the raw files again")
    return records


def _save_records(raw: Path, records: dict) -> None:
    data = json.dumps(records, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(raw / CHECKSUMS, data.encode())  # a new, unique temporary file


def _check(raw: Path, rel: str, digest: str, expected: str | None, old: dict | None) -> None:
    """Refuse content that differs from the expected hash or from the one recorded earlier."""
    if expected is not None and digest != expected.lower():
        raise DownloadError(f"{rel}: sha256 {digest} does not match the expected {expected}; "
                            "check the URL or file, or the expected checksum")
    if old is not None and old.get("sha256") != digest:
        raise DownloadError(
            f"{rel}: sha256 {digest} differs from the one recorded on first import "
            f"({old.get('sha256')}, from {old.get('source')}). If the new file is the right "
            f"one, delete {raw / rel} and its entry in {raw / CHECKSUMS} and rerun; otherwise "
            "pass the original file")


def _accept(raw: Path, rel: str, staged: Path, source: str, expected: str | None,
            md5: str | None = None, **extra: str) -> Path:
    """Check a complete staged file, rename it to its final name and record it. `md5`: the
    hash the data set publishes for it (KuaiRand), checked too and recorded beside the sha256."""
    records = _load_records(raw)
    digest, size = sha256_file(staged), staged.stat().st_size
    try:
        if md5 is not None:
            extra["md5"] = _check_md5(rel, staged, md5)
        _check(raw, rel, digest, expected, records.get(rel))
    except DownloadError as e:
        staged.unlink(missing_ok=True)
        raise DownloadError(f"{e} (the new file was not kept)") from None
    os.replace(staged, raw / rel)
    records[rel] = {"sha256": digest, "bytes": size, "source": source, **extra}
    _save_records(raw, records)
    return raw / rel


def _check_md5(rel: str, path: Path, published: str) -> str:
    """The md5 of `path`, which must be the published one (a DownloadError names both)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    if h.hexdigest() != published.lower():
        raise DownloadError(f"{rel}: md5 {h.hexdigest()} does not match the published md5 "
                            f"{published.lower()}: the file is damaged, incomplete or another "
                            "one; fetch it again (from another mirror, or with --from a copy "
                            "you checked)")
    return h.hexdigest()


# ---------------------------------------------------------------------------------- import
def _import(src: Path, raw: Path, *, sha256: str | None, progress: bool,
            md5: str | None = None, md5_names: tuple[str, ...] = ()) -> tuple[list[Path], bool]:
    """Copy a file, or every file of a folder, into raw/; returns (files, given as one file).
    `md5` (published) is checked on a file given alone, and on the files of a folder whose name
    is in `md5_names`."""
    if not src.exists():
        raise DownloadError(f"--from {src}: no such file or folder")
    raw.mkdir(parents=True, exist_ok=True)
    if src.is_file():
        return [_import_file(src, raw, src.name, sha256, progress, md5)], True
    if sha256 is not None:
        raise ConfigError("--sha256 checks a single file; import the files one by one")
    if raw.resolve().is_relative_to(src.resolve()):
        raise ConfigError(f"--from {src} holds the raw folder {raw}; give the folder you "
                          "fetched the files into")
    files = sorted(p for p in src.rglob("*") if p.is_file()
                   and not p.name.startswith(".") and not p.name.endswith(PART))
    if not files:
        raise DownloadError(f"--from {src}: the folder holds no files")
    return [_import_file(p, raw, p.relative_to(src).as_posix(), None, progress,
                         md5 if p.name in md5_names else None)
            for p in files], False


def _import_file(src: Path, raw: Path, rel: str, sha256: str | None, progress: bool,
                 md5: str | None = None) -> Path:
    target = raw / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + PART)
    try:
        with open(src, "rb") as fin, _open_part(part, append=False) as fout, \
                _bar(f"import {src.name}", src.stat().st_size, 0, progress) as advance:
            while block := fin.read(CHUNK):
                fout.write(block)
                advance(len(block))
        return _accept(raw, rel, part, str(src.resolve()), sha256, md5)
    except _PlantedLink:
        raise  # not ours: left alone
    except OSError as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot copy {src} to {part}: {e}") from e
    except BaseException:  # Ctrl-C / SIGTERM, also while hashing: an import starts again
        part.unlink(missing_ok=True)
        raise


class _PlantedLink(DownloadError):
    """A link (or other non-file) where prlbench writes a partial file: it is not removed."""


def _open_part(part: Path, *, append: bool) -> IO[bytes]:
    """Open a partial file for writing without following a link planted at its name."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    return os.fdopen(open_nofollow(part, flags, _PlantedLink), "ab" if append else "wb")


def _part_size(part: Path) -> int:
    """Bytes already in a partial file (0 if none); a link there is refused, not measured."""
    if part.is_symlink():
        raise _PlantedLink(link_refused(part))
    return part.stat().st_size if part.exists() else 0


@contextlib.contextmanager
def _bar(label: str, total: int | None, done: int,
         enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (bytes, speed, ETA); yields `advance(n_bytes)`."""
    if not enabled:
        yield lambda n: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True)) as bar:
        from rich.markup import escape

        task = bar.add_task(escape(label), total=total, completed=done)
        yield lambda n: bar.advance(task, n)


# ------------------------------------------------------------------------------------ HTTP
def _download_url(url: str, raw: Path, sha256: str | None, progress: bool, retries: int,
                  backoff: float, md5: str | None = None) -> Path:
    name = _url_filename(url)
    raw.mkdir(parents=True, exist_ok=True)
    records = _load_records(raw)
    key = _url_key(url)
    served = [n for n, e in records.items() if isinstance(e, dict) and e.get("url_sha256") == key]
    if served and (raw / served[0]).is_file():  # an endpoint fetched before under its own name
        name = served[0]
    target = raw / name
    # With a query string, URLs of one path (/dl?id=1, /dl?id=2) are different files: only the
    # URL's own record counts as "fetched before", and its partial file is its own.
    endpoint = bool(urlparse(url).query)
    # Fetched before from this very URL: check it, do not fetch again. A file recorded from
    # elsewhere is fetched and compared (`_accept` refuses other content and says how to
    # replace the recorded file), so a wrong file kept earlier never hides the right one.
    if target.is_file() and name in records and _same_source(records[name], url, key):
        _verify_one(raw, name, records[name])
        _check(raw, name, records[name]["sha256"], sha256, None)
        return target
    if target.is_file() and not endpoint and name not in records:
        return _accept(raw, name, target, _without_query(url), sha256, md5)  # put by hand
    part = raw / (f"{name}.{key[:12]}{PART}" if endpoint else name + PART)
    seen: dict = {}
    try:
        _fetch(url, part, retries, backoff, progress, seen)
    except OSError as e:  # network errors are retried inside; this is the local disk
        raise DownloadError(f"cannot write {part}: {e}") from e
    _refuse_html(part, url)
    given = seen.get("name")
    if "." not in name and given and "." in given and _usable_name(given):
        name = given  # a download endpoint (/dl?id=..., a redirect): the file's own name
        if (raw / name).is_file() and name not in records and \
                sha256_file(raw / name) != sha256_file(part):
            part.unlink()
            raise DownloadError(f"{raw / name} is there already, unrecorded, and differs from "
                                f"what {_without_query(url)} sent; move it away and rerun (the "
                                "download was not kept)")
    return _accept(raw, name, part, _without_query(url), sha256, md5, url_sha256=key)


def _same_source(record: object, url: str, key: str) -> bool:
    """Whether `record` was fetched from `url`: the same full URL, or for a URL without a
    query string, the same recorded address (records written before url_sha256 was)."""
    if not isinstance(record, dict):
        return False
    return record.get("url_sha256") == key or (
        not urlparse(url).query and record.get("source") == _without_query(url))


def _url_key(url: str) -> str:
    """The full URL, hashed: finds an endpoint's file again without storing its token."""
    return hashlib.sha256(url.encode()).hexdigest()


def _usable_name(name: str) -> bool:
    """A file name raw/ can hold: not hidden, no path, not the records or a partial file."""
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name \
        and name != CHECKSUMS and not name.endswith(PART)


_HTML_TAGS = (b"<!doctype html", b"<html", b"<head", b"<body")
_PREAMBLE = ((b"<?", b"?>"), (b"<!--", b"-->"))  # an XML prolog, comments: skipped
_SNIFF = 1 << 16


def _refuse_html(part: Path, url: str) -> None:
    """A login or error page served with status 200 is not a data file: say so, keep nothing."""
    with os.fdopen(open_nofollow(part, os.O_RDONLY, _PlantedLink), "rb") as f:
        head = f.read(_SNIFF)
    if _looks_like_html(head):
        part.unlink()
        raise DownloadError(_html_message(url, "an HTML page"))


def _looks_like_html(head: bytes) -> bool:
    """True if the bytes, read as UTF-8 / ASCII or as UTF-16 / UTF-32 (with a byte-order mark,
    or without one when every other byte is zero, as ASCII markup in UTF-16 is), start after
    whitespace, an XML prolog and comments with an HTML tag. No raw file of the data sets (zip,
    tar, CSV in UTF-8) starts with '<' in any of these readings, so this cannot refuse data."""
    return any(_starts_with_markup(text) for text in _readings(head))


_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def _readings(head: bytes) -> list[bytes]:
    """`head` as ASCII-compatible bytes in each encoding it may be in."""
    out = [head.removeprefix(b"\xef\xbb\xbf")]
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return out + [_ascii(head[len(bom):], encoding)]
    sample = head[:256]
    for width, text, encoding in ((2, 0, "utf-16-le"), (2, 1, "utf-16-be"),
                                  (4, 0, "utf-32-le"), (4, 3, "utf-32-be")):
        lanes = [sample[i::width] for i in range(width)]
        zero = [lane for i, lane in enumerate(lanes) if i != text]
        if len(sample) >= 2 * width and all(b == 0 for lane in zero for b in lane) \
                and any(lanes[text]):
            out.append(_ascii(head, encoding))
    return out


def _ascii(data: bytes, encoding: str) -> bytes:
    return data.decode(encoding, "ignore").encode("ascii", "ignore")


def _starts_with_markup(text: bytes) -> bool:
    text = text.lower()
    while True:
        text = text.lstrip()
        for start, end in _PREAMBLE:
            if text.startswith(start):
                cut = text.find(end, len(start))
                if cut < 0:  # a comment longer than what was read: no data file is that
                    return True
                text = text[cut + len(end):]
                break
        else:
            return text.startswith(_HTML_TAGS)


def _html_message(url: str, what: str) -> str:
    return (f"{_without_query(url)} sent {what}, not a data file (a login or error page?); "
            "Tianchi needs a login: download by hand in a browser and import the file with "
            "--from PATH")


def _without_query(url: str) -> str:
    """The URL as recorded in checksums.json: no query string or credentials (pre-signed
    links carry tokens)."""
    u = urlparse(url)
    host = u.hostname or ""
    host = f"[{host}]" if ":" in host else host  # IPv6 literals keep their brackets
    return u._replace(netloc=host + (f":{u.port}" if u.port else ""), query="",
                      fragment="").geturl()


def _url_filename(url: str) -> str:
    parts = urlparse(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"--url {url}: only http:// and https:// URLs are supported; "
                          "for a local file use --from PATH")
    name = PurePosixPath(unquote(parts.path)).name
    if not _usable_name(name):
        raise ConfigError(f"--url {url}: the URL path does not end in a usable file name; "
                          "download by hand and use --from PATH")
    return name


def _fetch(url: str, part: Path, retries: int, backoff: float, progress: bool,
           seen: dict | None = None) -> None:
    last: _Retryable | None = None
    for attempt in range(retries + 1):
        try:
            return _fetch_once(url, part, progress, seen)
        except _Retryable as e:
            last = e
            if attempt < retries:
                time.sleep(min(backoff * 2**attempt, MAX_BACKOFF_S))
    kept = part.stat().st_size if part.exists() else 0
    if not kept:
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {url} failed after {retries + 1} attempts ({last}); "
                            "nothing was received: check the URL and the connection, then rerun "
                            "the same command")
    raise DownloadError(f"download of {url} failed after {retries + 1} attempts ({last}); the "
                        f"partial file {part} ({kept:,} bytes) is kept: rerun the same command "
                        "to resume")


def _fetch_once(url: str, part: Path, progress: bool, seen: dict | None = None) -> None:
    offset = _part_size(part)
    headers = {"User-Agent": f"prlbench/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        return _http_error(e, url, part, offset, progress, seen)
    except urllib.error.URLError as e:
        if isinstance(e.reason, socket.gaierror):  # no such host, or no network: no retry helps
            host = urlparse(url).hostname
            if not _part_size(part):
                part.unlink(missing_ok=True)
            raise DownloadError(f"cannot reach {host} (name lookup failed: {e.reason}): check "
                                "the URL and that this machine is online, then rerun the same "
                                "command") from e
        raise _Retryable(f"connection error: {e}") from e
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets
        raise _Retryable(f"connection error: {e}") from e
    kind = resp.headers.get_content_type()
    if kind in ("text/html", "application/xhtml+xml"):  # a login page, whatever its body
        resp.close()
        raise DownloadError(_html_message(url, f"an HTML page (Content-Type: {kind})"))
    if seen is not None:  # the name the server gives (Content-Disposition, or after redirects)
        seen["name"] = resp.headers.get_filename() or PurePosixPath(
            unquote(urlparse(resp.geturl()).path)).name
    with resp:
        if resp.status == 206:
            first, last, total = _content_range(resp.headers.get("Content-Range"))
            if first != offset:
                part.unlink(missing_ok=True)
                raise _Retryable(f"the server resumed at byte {first}, not {offset}")
            end = total if total is not None else last + 1
        else:  # 200: the server ignored the Range header (or none was sent): start again
            offset, length = 0, resp.headers.get("Content-Length")
            end = int(length) if length and length.isdigit() else None
        done = _stream(resp, part, offset, end, progress)
    if end is not None and done != end:
        raise _Retryable(f"connection cut at byte {done} of {end}")


def _http_error(e: urllib.error.HTTPError, url: str, part: Path, offset: int,
                progress: bool, seen: dict | None = None) -> None:
    if e.code == 416 and offset:
        total = re.search(r"/(\d+)\s*$", e.headers.get("Content-Range") or "")
        if total and int(total.group(1)) == offset:
            return  # the partial file already holds every byte
        part.unlink(missing_ok=True)  # a partial file the server cannot continue: restart
        return _fetch_once(url, part, progress, seen)
    if e.code >= 500:
        raise _Retryable(f"HTTP {e.code} {e.reason}")
    hint = ("the site wants a login: download the file in a browser and use --from PATH"
            if e.code in (401, 403) else
            "check the URL (or download the file by hand and use --from PATH)")
    raise DownloadError(f"HTTP {e.code} {e.reason} for {url}: {hint}")


def _content_range(value: str | None) -> tuple[int, int, int | None]:
    """'bytes 100-199/1000' -> (100, 199, 1000); 'bytes */1000' -> (-1, -1, 1000)."""
    m = re.fullmatch(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", (value or "").strip())
    if not m:
        raise _Retryable(f"unreadable Content-Range header {value!r}")
    first, last, total = m.groups()
    return (int(first) if first else -1, int(last) if last else -1,
            int(total) if total != "*" else None)


def _stream(resp: IO[bytes], part: Path, offset: int, end: int | None, progress: bool) -> int:
    """Append the body to `part` (from byte `offset`); returns the size of `part` after."""
    done = offset
    with _open_part(part, append=bool(offset)) as out, \
            _bar(part.name[:-len(PART)], end, offset, progress) as advance:
        while True:
            try:
                block = resp.read(CHUNK)
            except (OSError, http.client.HTTPException) as e:
                raise _Retryable(f"connection lost at byte {done}: {e}") from e
            if not block:
                return done
            out.write(block)
            done += len(block)
            advance(len(block))


# ------------------------------------------------------------------------------ extraction
def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _extract_recorded(archive: Path, raw: Path, progress: bool) -> None:
    """Extract `archive` into raw/ once, checking and recording every extracted file."""
    records = _load_records(raw)
    entry = records.get(archive.relative_to(raw).as_posix())
    digest = entry.get("sha256") if isinstance(entry, dict) else None
    source = f"extracted from {archive.name}" + (f" (sha256 {digest})" if digest else "")
    mine = [rel for rel, entry in records.items()
            if isinstance(entry, dict) and entry.get("source") == source]
    if mine and all((raw / rel).is_file() for rel in mine):
        return  # done on an earlier run (verify_raw checks the contents)
    # files extracted from an earlier archive of this name are replaced, not compared
    bare = f"extracted from {archive.name}"  # as recorded before archives' sha256 was
    older = [rel for rel, entry in records.items() if isinstance(entry, dict) and (
        entry.get("source") == bare or str(entry.get("source", "")).startswith(f"{bare} (sha256 "))]
    for rel in older:
        records.pop(rel)
    for stale in raw.glob(".extract-*"):  # left by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    facts = extract_archive(archive, raw, progress=progress,
                            check=lambda rel, digest: _check(raw, rel, digest, None,
                                                             records.get(rel)))
    for rel in set(older) - set(facts):  # what only the earlier archive held
        (raw / rel).unlink(missing_ok=True)
    for rel, (digest, size) in facts.items():
        records[rel] = {"sha256": digest, "bytes": size, "source": source}
    _save_records(raw, records)


def extract_archive(archive: Path, dest: Path, *, max_bytes: int = MAX_EXTRACT_BYTES,
                    progress: bool = False,
                    check: Callable[[str, str], None] | None = None) -> Facts:
    """Extract a zip or tar archive into `dest`, every entry or none, and return each file's
    path relative to `dest` with its sha256 and size.

    Every entry is checked (no absolute paths, `..`, links or devices) and written into a
    hidden folder inside `dest` first, counting the bytes against `max_bytes`; `check(rel,
    sha256)`, if given, then sees each file and may raise to refuse the archive; only then do
    the files move into place. ArchiveRefused or DownloadError says why nothing was extracted.
    """
    archive, dest = Path(archive), Path(dest)
    with _staged_extract(archive, dest, max_bytes, progress) as (stage, facts):
        if check is not None:
            for rel, (digest, _) in facts.items():
                check(rel, digest)
        _move_into_place(stage, dest, list(facts))
    return facts


@contextlib.contextmanager
def _staged_extract(archive: Path, dest: Path, max_bytes: int,
                    progress: bool) -> Iterator[tuple[Path, Facts]]:
    """Write every entry into a hidden folder inside `dest`, removed on leaving, come what may."""
    dest.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        yield stage, _extract_all(archive, stage, max_bytes, progress)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class _Entry(NamedTuple):
    name: str
    kind: str  # "file", "dir", or why the entry is refused
    size: int
    open: Callable[[], IO[bytes]]


@contextlib.contextmanager
def _entries(archive: Path) -> Iterator[list[_Entry]]:
    """The entries of a zip or tar archive, in one form."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            check_zip_start(zf)
            yield [_Entry(i.filename, _zip_kind(i), i.file_size, functools.partial(zf.open, i))
                   for i in zf.infolist()]
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            yield [_Entry(m.name, "dir" if m.isdir() else "file" if m.isreg() else
                          "a link or special file", m.size, functools.partial(tf.extractfile, m))
                   for m in tf.getmembers()]
    else:
        raise ArchiveRefused(f"{archive} is neither a zip nor a tar archive")


def _zip_kind(info: zipfile.ZipInfo) -> str:
    if info.flag_bits & 0x1:
        return "encrypted"
    if stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "a link or special file"  # Unix mode bits in the high word: S_IFLNK etc.
    return "dir" if info.is_dir() else "file"


def _extract_all(archive: Path, stage: Path, max_bytes: int, progress: bool) -> Facts:
    """Check every entry first (nothing is written if one is refused), then write the files."""
    try:
        with _entries(archive) as entries:
            names: set[str] = set()
            for e in entries:
                _check_entry(archive, e)
                if e.kind == "file" and _rel(e.name) in names:  # a reader would pick one
                    raise ArchiveRefused(f"{archive.name}: refusing entry {e.name!r} (a second "
                                         "entry of that name); nothing was extracted. The "
                                         "archive is damaged or tampered with: fetch it again")
                names.add(_rel(e.name))
            files = [e for e in entries if e.kind == "file"]
            declared = sum(e.size for e in files)
            if declared > max_bytes:
                raise ArchiveRefused(f"{archive.name} declares {declared} uncompressed bytes, "
                                    f"over the limit of {max_bytes}; refused as a possible "
                                    "archive bomb")
            ratio = declared / max(archive.stat().st_size, 1)
            if declared > RATIO_FLOOR and ratio > MAX_RATIO:
                raise ArchiveRefused(f"{archive.name} declares {declared:,} uncompressed bytes, "
                                    f"{ratio:,.0f} times its own size (the data sets' archives "
                                    f"expand about 3-15 times; the limit is {MAX_RATIO}); "
                                    "refused as a possible archive bomb, nothing extracted")
            budget = [max_bytes]
            with _bar(f"extract {archive.name}", declared, 0, progress) as advance:
                return {_rel(e.name): _write_member(e.open, stage / _rel(e.name), budget,
                                                    advance) for e in files}
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error,
            NotImplementedError) as e:
        raise ArchiveRefused(f"{archive} is damaged or unreadable ({e}); fetch it again") from e
    except OSError as e:
        raise DownloadError(f"cannot extract {archive}: {e}") from e


def _rel(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).as_posix()


def _check_entry(archive: Path, e: _Entry) -> None:
    norm = e.name.replace("\\", "/")
    why = ("an absolute path" if norm.startswith("/") or re.match(r"[A-Za-z]:", norm) else
           "a '..' component" if ".." in PurePosixPath(norm).parts else
           e.kind if e.kind not in ("file", "dir") else
           "a reserved or empty name" if e.kind == "file" and _rel(norm) in ("", ".", CHECKSUMS)
           else None)
    if why:
        raise ArchiveRefused(f"{archive.name}: refusing entry {e.name!r} ({why}); nothing was "
                            "extracted. The archive is unsafe or damaged: fetch it again")


def _write_member(opener: Callable[[], IO[bytes]], target: Path, budget: list[int],
                  advance: Callable[[int], None] = lambda n: None) -> tuple[str, int]:
    """Write one entry; `budget` = [bytes still allowed], counted on the bytes really written
    so that a header that lies about sizes is caught too."""
    target.parent.mkdir(parents=True, exist_ok=True)
    h, n = hashlib.sha256(), 0
    with opener() as src, open(target, "wb") as out:
        while block := src.read(CHUNK):
            budget[0] -= len(block)
            if budget[0] < 0:
                raise ArchiveRefused(f"{target.name} expands beyond the limit (more than the "
                                    "headers declare); refused as a possible archive bomb, "
                                    "nothing was extracted")
            h.update(block)
            out.write(block)
            n += len(block)
            advance(len(block))
    return h.hexdigest(), n


def _move_into_place(stage: Path, dest: Path, rels: list[str]) -> list[Path]:
    """Rename the staged files into `dest`, after checking that none is blocked."""
    for rel in rels:
        target = dest / rel
        between = [p for p in target.parents if dest in p.parents]  # folders under dest
        if target.is_dir() or any(p.exists() and not p.is_dir() for p in between):
            raise DownloadError(f"cannot extract {rel} into {dest}: a file or folder of that "
                                "name is in the way; move it and rerun")
    for rel in rels:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / rel, dest / rel)
    return [dest / rel for rel in rels]
