"""Shared input handling for the real-data preprocessors.

- `find_inputs`: locate the input files of a data set in a folder, a zip, or zips inside a zip
  (AliExpress's nested archives), level by level, so that the cheapest copy wins;
- `iter_line_chunks`: stream a (possibly zipped) text file in chunks of whole lines, with the
  file's own 1-based line numbers, so every error can name its line;
- `read_frame` / `int_values` / `float_values`: parse a chunk with pandas and check every value,
  naming file, line and column of the first bad one;
- `ByteProgress`: a rich progress bar over the bytes read.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
import pandas as pd

from prlbench.data.cache import sha256_file
from prlbench.errors import ConfigError, DataError

READ_SIZE = 1 << 26  # 64 MiB of text per read: bounds the memory of one chunk
MAX_DEPTH = 3        # folder levels searched below the source
DATA_SUFFIXES = ("", ".csv", ".txt")
_BOM = b"\xef\xbb\xbf"
Where = Callable[[int], str]  # row index in a chunk -> "file, line N, column C"


# ----------------------------------------------------------------------------- input files
@dataclass(frozen=True)
class Entry:
    """One input file: a file on disk, a member of a zip on disk, or a member of a zip in one."""

    disk: Path
    members: tuple[str, ...] = ()
    size: int = 0
    zip_name: str = ""   # basename of the innermost enclosing zip ("" on disk)
    sole: bool = False   # the only data file of that zip: it inherits the zip's name

    @property
    def display(self) -> str:
        return "/".join([str(self.disk), *self.members])

    @property
    def name(self) -> str:
        return (self.members[-1] if self.members else self.disk.name).rsplit("/", 1)[-1]

    def open(self, stack: contextlib.ExitStack) -> BinaryIO:
        """Open for binary reading; everything opened is closed by `stack`."""
        if not self.members:
            return stack.enter_context(open(self.disk, "rb"))
        outer = stack.enter_context(_zip(self.disk, self.disk))
        if len(self.members) == 1:
            return _Reader(stack.enter_context(_member(outer, self.members[0], self.display)),
                           self.display)
        # A zip inside a zip is read through the outer member's stream (seekable), no extraction.
        inner_file = stack.enter_context(_member(outer, self.members[0], self.display))
        inner = stack.enter_context(_zip(inner_file, f"{self.disk}/{self.members[0]}"))
        return _Reader(stack.enter_context(_member(inner, self.members[1], self.display)),
                       self.display)


class _Reader:
    """A zip member's stream whose damage (bad CRC, truncation) is a DataError naming it."""

    def __init__(self, stream: BinaryIO, display: str) -> None:
        self.stream, self.display = stream, display

    def read(self, n: int = -1) -> bytes:
        return self._checked(self.stream.read, n)

    def readline(self) -> bytes:
        return self._checked(self.stream.readline)

    def _checked(self, fn, *args) -> bytes:
        try:
            return fn(*args)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise DataError(f"{self.display}: the archive is damaged ({e}); download it "
                            "again") from e


def _member(zf: zipfile.ZipFile, name: str, display: str) -> BinaryIO:
    try:
        return zf.open(name)
    except NotImplementedError as e:  # e.g. Deflate64, written by Windows for large files
        raise DataError(f"{display}: {e}; extract the archive with unzip or 7-Zip and pass the "
                        "folder with the extracted files as --source") from e
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DataError(f"{display}: the archive is damaged ({e}); download it again") from e


def check_zip_start(zf: zipfile.ZipFile) -> None:
    """Its first entry must start at byte 0. zipfile reads the central directory found nearest
    the end of the file, so a truncated archive of zips can pass for the last inner zip (whose
    entries then seem to start far into the file)."""
    infos = zf.infolist()
    if infos and min(i.header_offset for i in infos) != 0:
        raise zipfile.BadZipFile("its directory does not describe the file from the first "
                                 "byte: the archive is truncated, or has data before it")


def _zip(file, display) -> zipfile.ZipFile:
    try:
        zf = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{display}: not a readable zip archive ({e}); download it again") from e
    try:
        check_zip_start(zf)
    except zipfile.BadZipFile as e:
        zf.close()
        raise DataError(f"{display}: not a readable zip archive ({e}); download it again") from e
    return zf


def _is_zip_name(name: str) -> bool:
    return name.lower().endswith(".zip")


def _skip(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return any(p.startswith(".") or p == "__MACOSX" for p in parts if p)


def _disk_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if len(rel.parts) <= MAX_DEPTH and path.is_file() and not _skip(str(rel)):
            files.append(path)
    return files


def _members(zf: zipfile.ZipFile, disk: Path, prefix: tuple[str, ...]) -> list[Entry]:
    infos = [i for i in zf.infolist() if not i.is_dir() and not _skip(i.filename)]
    _refuse_duplicates(infos, "/".join([str(disk), *prefix]))
    data = [i for i in infos if not _is_zip_name(i.filename)]
    zip_name = (prefix[-1] if prefix else disk.name).rsplit("/", 1)[-1]
    return [Entry(disk, (*prefix, i.filename), i.file_size, zip_name, len(data) == 1)
            for i in infos]


def _refuse_duplicates(infos: list[zipfile.ZipInfo], display: str) -> None:
    """zipfile opens the last of two entries of one name: which is the data is a guess."""
    seen: set[str] = set()
    for i in infos:
        if i.filename in seen:
            raise DataError(f"{display}: two entries named {i.filename!r}, so which one is the "
                            "data is ambiguous; download the archive again")
        seen.add(i.filename)


def list_entries(root: Path, level: int) -> list[Entry]:
    """Level 1: files on disk; 2: members of zips on disk; 3: members of zips in those zips."""
    disk = _disk_files(root)
    if level == 1:
        return [Entry(p, (), p.stat().st_size) for p in disk]
    out: list[Entry] = []
    for path in disk:
        if not (_is_zip_name(path.name) or (path == root and zipfile.is_zipfile(path))):
            continue
        with _zip(path, path) as zf:
            members = _members(zf, path, ())
            if level == 2:
                out += members
                continue
            for m in members:
                if _is_zip_name(m.members[0]):
                    with zf.open(m.members[0]) as f, _zip(f, m.display) as inner:
                        out += _members(inner, path, m.members)
    return out


def find_inputs(root: Path, classify: Callable[[Entry], str | None],
                kinds: dict[str, tuple[tuple[str, ...], tuple[str, ...]]],
                describe: str, label: Callable[[str], str] = str
                ) -> tuple[str, dict[str, Entry]]:
    """Find the first `kind` whose required roles are all present, scanning level by level.

    `classify` names the role of an entry (or None); `kinds` maps a kind to (required roles,
    optional roles), in order of preference. Each role keeps the candidates of the shallowest
    level where it occurs; among them the one closest to the root, and a tie is an error.
    `label` names a missing role in the error message (e.g. "nl_item_test").
    """
    if not root.exists():
        raise DataError(f"{root} does not exist; give the raw files with --source PATH or fetch "
                        f"them first ({describe})")
    found: dict[str, list[Entry]] = {}
    for level in (1, 2, 3):
        at_level: dict[str, list[Entry]] = {}
        for entry in list_entries(root, level):
            role = classify(entry)
            if role is not None and role not in found:
                at_level.setdefault(role, []).append(entry)
        found.update(at_level)
        for kind, (required, optional) in kinds.items():
            if all(r in found for r in required):
                return kind, {r: _pick(found[r], r) for r in (*required, *optional) if r in found}
    # Name what is missing from the kind the folder comes closest to (the first on a tie):
    # a processed folder without test.csv should hear about test.csv, not the raw files.
    first = next(iter(kinds))
    closest = max(kinds, key=lambda k: (sum(r in found for r in kinds[k][0]) / len(kinds[k][0]),
                                        k == first))
    missing = [label(r) if closest == first else f"{r}.csv"
               for r in kinds[closest][0] if r not in found]
    raise DataError(f"{root}: no complete input found; missing {', '.join(missing)} "
                    f"(expected {describe})")


def _pick(cands: list[Entry], role: str) -> Entry:
    depth = [len(Path(c.display).parts) for c in cands]
    best = [c for c, d in zip(cands, depth) if d == min(depth)]
    if len(best) > 1:
        names = ", ".join(c.display for c in best[:4])
        raise DataError(f"several files could be the {role} input: {names}; pass the one you "
                        "mean with --source (a folder holding one copy)")
    return best[0]


def role_names(entry: Entry) -> list[str]:
    """Lower-case names (no extension) that may carry a data file's role: its own, then its
    zip's when it is the zip's only data file. Zips and other file types carry none."""
    name = entry.name.lower()
    stem, dot, suffix = name.rpartition(".")
    stem, suffix = (stem, dot + suffix) if dot else (name, "")
    if _is_zip_name(name) or suffix not in DATA_SUFFIXES:
        return []
    return [stem] + ([entry.zip_name.lower()[:-4]] if entry.sole and entry.zip_name else [])


def input_facts(entries: dict[str, Entry]) -> list[dict]:
    """sha256 and size of each file on disk that the inputs come from (for the manifest)."""
    roles: dict[Path, list[str]] = {}
    for role, e in entries.items():
        roles.setdefault(e.disk, []).append(role)
    return [{"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": sha256_file(p),
             "roles": sorted(r)} for p, r in roles.items()]


# ------------------------------------------------------------------------------ line chunks
@dataclass
class LineChunk:
    """Whole non-blank lines of a file: `data` (each line ends in \\n), their line numbers."""

    data: bytes
    lines: np.ndarray   # [n] int64, 1-based line numbers in the file
    starts: np.ndarray  # [n] int64 byte offset of each line in data
    ends: np.ndarray    # [n] int64 offset of each line's \n

    def __len__(self) -> int:
        return len(self.lines)

    def text(self, i: int, limit: int = 120) -> str:
        raw = self.data[self.starts[i]:self.ends[i]].rstrip(b"\r")
        return raw[:limit].decode("utf-8", "replace") + ("..." if len(raw) > limit else "")

    def field_counts(self, sep: int = ord(",")) -> np.ndarray:
        """Number of fields of each line ([n] int64): separators + 1."""
        if len(self.starts) == 0:
            return np.empty(0, np.int64)
        is_sep = (np.frombuffer(self.data, np.uint8) == sep).view(np.uint8)
        # Each segment runs from a line's start to the next line's start (lines hold no gaps).
        return np.add.reduceat(is_sep, self.starts, dtype=np.int64) + 1

    def subset(self, keep: np.ndarray) -> "LineChunk":
        parts = [self.data[s:e + 1] for s, e in zip(self.starts[keep], self.ends[keep])]
        return _chunk(b"".join(parts), self.lines[keep])


def _chunk(data: bytes, lines: np.ndarray) -> LineChunk:
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    return LineChunk(data, lines, starts, ends.astype(np.int64))


def iter_line_chunks(stream: BinaryIO, *, chunk_rows: int, first_line: int = 1,
                     on_bytes: Callable[[int], None] | None = None,
                     read_size: int = READ_SIZE) -> Iterator[LineChunk]:
    """Yield chunks of at most `chunk_rows` whole lines (blank lines skipped, numbers kept)."""
    carry, next_line, first = b"", first_line, first_line == 1
    while True:
        block = stream.read(read_size)
        if on_bytes is not None and block:
            on_bytes(len(block))
        if block:
            data = carry + block
            cut = data.rfind(b"\n") + 1
            carry, data = data[cut:], data[:cut]
            if not data:
                continue
        elif carry:
            data, carry = carry + b"\n", b""
        else:
            return
        if first and data.startswith(_BOM):
            data = data[len(_BOM):]
        first = False
        yield from _split_rows(data, next_line, chunk_rows)
        next_line += data.count(b"\n")


def _split_rows(data: bytes, first_line: int, chunk_rows: int) -> Iterator[LineChunk]:
    whole = _chunk(data, first_line + np.arange(data.count(b"\n"), dtype=np.int64))
    arr = np.frombuffer(data, np.uint8)
    length = whole.ends - whole.starts
    blank = (length == 0) | ((length == 1) & (arr[whole.starts] == 13))
    for i in np.flatnonzero(~blank & (length <= 16)):  # spaces / tabs only: blank too
        blank[i] = not data[whole.starts[i]:whole.ends[i]].strip()
    for i in range(0, len(whole), max(1, chunk_rows)):
        sl = slice(i, i + chunk_rows)
        if blank[sl].any():
            keep = np.zeros(len(whole), bool)
            keep[sl] = ~blank[sl]
            if keep.any():
                yield whole.subset(keep)
            continue
        s, e = whole.starts[sl][0], whole.ends[sl][-1] + 1
        yield LineChunk(data[s:e], whole.lines[sl], whole.starts[sl] - s, whole.ends[sl] - s)


def open_csv_with_header(entry: Entry, stack: contextlib.ExitStack
                         ) -> tuple[BinaryIO, list[str], int]:
    """Open a CSV that has a header: (stream after the header, column names, next line no)."""
    stream, line_no, text = entry.open(stack), 0, ""
    while not text:  # blank lines before the header are skipped
        raw = stream.readline()
        line_no += 1
        if not raw:
            raise DataError(f"{entry.display}: the file is empty; expected a header line")
        text = raw.decode("utf-8-sig", "replace").strip()
    header = [c.strip().strip('"') for c in text.split(",")]
    if all(re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", c) for c in header):
        raise DataError(f"{entry.display}, line {line_no}: this line holds numbers, not column "
                        "names; this format needs a header line naming the columns (a "
                        "processed CSV keeps the header its tool wrote)")
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise DataError(f"{entry.display}, line {line_no}: duplicate column names {dup}")
    return stream, header, line_no + 1


def open_processed_csv(entry: Entry, stack: contextlib.ExitStack, required: list[str]
                       ) -> tuple[BinaryIO, list[str], int, dict[str, int]]:
    """A processed split with a header that must hold `required`: (stream, header, next line
    number, column -> position)."""
    stream, header, first = open_csv_with_header(entry, stack)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{entry.display}, line {first - 1}: missing columns {missing[:5]}; "
                        "every split must have the columns of train.csv")
    return stream, header, first, {c: i for i, c in enumerate(header)}


# ------------------------------------------------------------------------ checked parsing
def drop_header(chunk: LineChunk, ncols: int) -> LineChunk:
    """Remove line 1 when it is a header (no numeric field), for header-less raw formats."""
    if len(chunk) == 0 or chunk.lines[0] != 1:
        return chunk
    fields = chunk.data[chunk.starts[0]:chunk.ends[0]].rstrip(b"\r").split(b",")[:ncols]
    for f in fields:
        try:
            float(f.decode("latin-1").strip())
            return chunk
        except ValueError:
            continue
    keep = np.ones(len(chunk), bool)
    keep[0] = False
    return chunk.subset(keep)


def check_binary(values: np.ndarray, where: Where, name: str) -> None:
    bad = np.flatnonzero((values != 0) & (values != 1))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{where(i)}: {name} = {values[i]}, expected 0 or 1; fix or drop that row")


def check_field_counts(chunk: LineChunk, expected: int, display: str) -> None:
    counts = chunk.field_counts()
    bad = np.flatnonzero(counts != expected)
    if bad.size:
        i = bad[0]
        raise DataError(f"{display}, line {chunk.lines[i]}: {counts[i]} columns, expected "
                        f"{expected} ({chunk.text(i)!r}); the file is truncated or not in the "
                        "expected format")


def read_frame(chunk: LineChunk, ncols: int, display: str) -> pd.DataFrame:
    """Parse a chunk with exactly `ncols` comma-separated fields per line (types inferred)."""
    check_field_counts(chunk, ncols, display)
    frame = pd.read_csv(io.BytesIO(chunk.data), header=None, names=list(range(ncols)),
                        na_filter=False, engine="c", low_memory=False, encoding="latin-1",
                        skip_blank_lines=False)
    if len(frame) != len(chunk):  # only quoted line breaks could cause this
        raise DataError(f"{display}, lines {chunk.lines[0]}-{chunk.lines[-1]}: could not be "
                        "split into rows (quoted line breaks?)")
    return frame


def where_fn(display: str, chunk: LineChunk, column: str) -> Where:
    return lambda i: f"{display}, line {chunk.lines[i]}, column {column}"


INT64_MAX = 2 ** 63 - 1


def int_values(values: pd.Series | np.ndarray, where: Where, what: str = "an integer id"
               ) -> np.ndarray:
    """int64 values; integral floats ("3.0") are accepted, anything else (a fraction, a value
    beyond int64) names its line; `what` says what was expected ("a label", "an integer id")."""
    v = np.asarray(values)
    if v.dtype.kind == "u" and v.size and v.max() > INT64_MAX:
        i = int(np.argmax(v > INT64_MAX))
        raise DataError(f"{where(i)}: {v[i].item()} is beyond the 64-bit integer range; expected "
                        f"{what}; fix or drop that row")
    if v.dtype.kind in "iu":
        return v.astype(np.int64)
    if v.dtype.kind == "f":
        ok = np.isfinite(v) & (v == np.floor(v)) & (np.abs(v) < 2.0 ** 63)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise DataError(f"{where(i)}: {v[i].item()} is not {what}; fix or drop that row")
        return v.astype(np.int64)
    return np.array([_one_int(x, where, i, what) for i, x in enumerate(v)], np.int64)


def _one_int(x, where: Where, i: int, what: str) -> int:
    s = str(x).strip()
    if re.fullmatch(r"[+-]?\d+", s):
        n = int(s)
    else:
        try:
            f = float(s)
        except ValueError:
            raise DataError(f"{where(i)}: {s!r} is not a number; expected {what}; fix or drop "
                            "that row") from None
        if not (np.isfinite(f) and f == int(f)):
            raise DataError(f"{where(i)}: {s!r} is not {what}; fix or drop that row")
        n = int(f)
    if not -INT64_MAX - 1 <= n <= INT64_MAX:
        raise DataError(f"{where(i)}: {s} is beyond the 64-bit integer range; expected {what}; "
                        "fix or drop that row")
    return n


def float_values(values: pd.Series | np.ndarray, where: Where) -> np.ndarray:
    """float32 values; a non-numeric or non-finite value names its line."""
    v = np.asarray(values)
    if v.dtype.kind in "iub":
        return v.astype(np.float32)
    if v.dtype.kind != "f":
        v = np.array([_one_float(x, where, i) for i, x in enumerate(v)], np.float64)
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise DataError(f"{where(int(bad[0]))}: {v[bad[0]].item()} is not a finite number; fix "
                        "or drop that row")
    return v.astype(np.float32)


def _one_float(x, where: Where, i: int) -> float:
    try:
        return float(str(x).strip())
    except ValueError:
        raise DataError(f"{where(i)}: {str(x)!r} is not a number; fix or drop that row") from None


# ------------------------------------------------------------------------------ progress
class ByteProgress:
    """A rich progress bar over bytes read; does nothing when disabled."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.enabled, self.total, self.description = enabled, total, description
        self._progress = None
        self._task = None

    def __enter__(self) -> "ByteProgress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      DownloadColumn(), TransferSpeedColumn(),
                                      TimeRemainingColumn(), console=Console(stderr=True))
            self._progress.start()
            from rich.markup import escape

            self._task = self._progress.add_task(escape(self.description),
                                                 total=self.total or None)
        return self

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            from rich.markup import escape

            self._progress.update(self._task, description=escape(text))

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


MAX_UNMATCHED = 0.001  # default share of rows that may be dropped for want of their other half


def unmatched_limit(value: float | None) -> float:
    if value is None:
        return MAX_UNMATCHED
    if not 0 <= value <= 1:
        raise ConfigError(f"--max-unmatched {value}: expected a share between 0 and 1")
    return float(value)


def check_unmatched(dropped: int, rows: int, limit: float, where: str, what: str,
                    hint: str) -> None:
    """A join that loses more than `limit` of the rows is an error naming the first lost row."""
    if dropped and dropped > limit * rows:
        raise DataError(f"{where}: {what} ({dropped} of {rows} rows are unmatched, more than "
                        f"{limit:.2%}); {hint} (if that share is expected, allow it: "
                        f"--max-unmatched {math.ceil(dropped / rows * 1e4) / 1e4:.4f})")

