"""KuaiRand-Pure (Kuaishou short-video logs; Gao et al., CIKM 2022) -> the Parquet cache.

Raw input: the folder `KuaiRand-Pure/` of `KuaiRand-Pure.tar.gz` (Zenodo record 10439422,
CC BY-SA 4.0), or the archive itself, read in place: `data/log_standard_4_08_to_4_21_pure.csv`,
`data/log_standard_4_22_to_5_08_pure.csv`, `data/log_random_4_22_to_5_08_pure.csv` (19 integer
columns, one header line), `data/user_features_pure.csv` and `data/video_features_basic_pure.csv`
(quoted values with commas, empty cells). `data/video_features_statistic_pure.csv` holds
whole-month aggregates that leak the labels across any time split: it is never opened.

- Splits by `date`: train = the first standard log's 20220409-20220415, validation = its
  20220416-20220421 (no group-hashed carving), test = the whole second standard log, and the
  random-exposure log as the extra split `test_random` (an unbiased test set), encoded with the
  same train vocabulary. A date outside a file's known range is an error.
- Exact duplicate rows are removed per file, the first occurrence kept (found by a 128-bit hash
  of the 19 values, kept per file: 16 bytes a row) and counted in the manifest.
- Labels: click = `is_click`; conversion = `is_click` and the deeper label chosen with
  `--conversion` (like -> `is_like`, long_view, follow -> `is_follow`, comment -> `is_comment`,
  forward -> `is_forward`). Rows with the deeper label but no click are counted; they stay as
  non-clicks (click 0, conversion 0), or are dropped with `--drop-unclicked-deep`.
- Features known before the impression only: `user` (user_id), `video` (video_id), `tab`,
  `hour` (= hourmin // 100); from the user file its activity degree, flags (`is_live_streamer`
  -124 = unknown), `*_range` buckets and `onehot_feat0..17` as categoricals (empty cells =
  unknown), its counts as log1p numericals; from the basic video file `author`, `video_type`,
  `upload_type`, `music`, the first tag of `tag` as categoricals, and `video_duration` as
  log1p(seconds) with a missing flag. Never a post-impression column of the log (`time_ms`,
  `play_time_ms`, `long_view`, `profile_stay_time`, `comment_stay_time`, `is_profile_enter`, the
  `is_*` labels) and not the log's `duration_ms` (0 where unknown; the video file's duration is
  used instead). Unknown values get the raw id -1, a category of its own; a text category (a
  range such as "(250,500]", an activity degree) gets blake2b-64 of its text as raw id.
- The group column is `user_id` (the raw user id): group AUC averages over users.
  Vocabulary from the train split only (min_count 0): ids unseen in train map to 0.

The logs are read in chunks (bounded memory); the two feature files (27 k users, 7.6 k videos)
are held in memory. Every bad value is an error naming the file, line and column.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import io
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prlbench.data import csvio
from prlbench.data.cache import CacheBuilder, Schema
from prlbench.data.download import verify_checksums
from prlbench.errors import ConfigError, DataError

NAME = "kuairand_pure"
LOG_COLUMNS = ("user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like",
               "is_follow", "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms",
               "duration_ms", "profile_stay_time", "comment_stay_time", "is_profile_enter",
               "is_rand", "tab")
COL = {c: i for i, c in enumerate(LOG_COLUMNS)}
# What the log holds after the impression (or about it, like duration_ms): never a feature.
NOT_FEATURES = ("time_ms", "is_click", "is_like", "is_follow", "is_comment", "is_forward",
                "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
                "comment_stay_time", "is_profile_enter", "is_rand")
CONVERSIONS = {"like": "is_like", "long_view": "long_view", "follow": "is_follow",
               "comment": "is_comment", "forward": "is_forward"}
DEEP = tuple(CONVERSIONS.values())
FILES = {  # role -> file name (without .csv)
    "log_train": "log_standard_4_08_to_4_21_pure",
    "log_test": "log_standard_4_22_to_5_08_pure",
    "log_random": "log_random_4_22_to_5_08_pure",
    "users": "user_features_pure",
    "videos": "video_features_basic_pure",
}
STATISTIC = "video_features_statistic_pure"  # leaks the labels: never opened
TRAIN_DATES, VAL_DATES = (20220409, 20220415), (20220416, 20220421)
DATES = {"log_train": (20220409, 20220421), "log_test": (20220422, 20220508),
         "log_random": (20220422, 20220508)}
SPLIT_OF = {"log_test": "test", "log_random": "test_random"}  # log_train: train / val by date
UNKNOWN = -1          # raw id of an unknown or empty categorical value
LIVE_UNKNOWN = -124   # is_live_streamer's own code for unknown
UTC_OFFSET_MS = 8 * 3600 * 1000  # Kuaishou's dates are China time (UTC+8)

USER_TEXT = ("user_active_degree", "follow_user_num_range", "fans_user_num_range",
             "friend_user_num_range", "register_days_range")
USER_FLAGS = ("is_lowactive_period", "is_live_streamer", "is_video_author")
ONEHOT = tuple(f"onehot_feat{i}" for i in range(18))
USER_CAT = ("user_active_degree", *USER_FLAGS, "follow_user_num_range", "fans_user_num_range",
            "friend_user_num_range", "register_days_range", *ONEHOT)
USER_NUM = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
VIDEO_CAT = ("author", "video_type", "upload_type", "music", "first_tag")
VIDEO_NUM = ("video_duration", "video_duration_missing")
LOG_CAT = ("user", "video", "tab", "hour")
CATEGORICAL = (*LOG_CAT, *USER_CAT, *VIDEO_CAT)
NUMERICAL = (*USER_NUM, *VIDEO_NUM)
GROUP = "user_id"
FEATURES = {  # for the manifest: where the feature columns come from
    "log": "user (user_id), video (video_id), tab, hour (hourmin // 100)",
    f"{FILES['users']}.csv, categorical": "user_active_degree and the *_range buckets as text "
    "(a quoted range such as \"(250,500]\" is one category), is_lowactive_period, "
    "is_live_streamer, is_video_author, onehot_feat0..17; empty cells and is_live_streamer "
    "-124 are unknown",
    f"{FILES['users']}.csv, numerical": "log1p of follow_user_num, fans_user_num, "
    "friend_user_num, register_days (empty: 0)",
    f"{FILES['videos']}.csv, categorical": "author (author_id), video_type, upload_type, music "
    "(music_id), first_tag (the first id of tag); empty cells are unknown",
    f"{FILES['videos']}.csv, numerical": "video_duration = log1p(video_duration / 1000), 0 when "
    "empty or the video has no feature row; video_duration_missing = 1 then, else 0",
    "no feature row": "a user or video missing from its file gets unknown categoricals and "
    "the numericals above (counted per log)",
}


def preprocess_kuairand(data_dir: Path, *, source: Path | None = None, progress: bool = True,
                        chunk_rows: int = 250_000, conversion: str = "like",
                        drop_unclicked_deep: bool = False,
                        max_unmatched: float | None = None) -> dict:
    """Build `data_dir/kuairand_pure/` from the extracted KuaiRand-Pure files (a folder), or
    from KuaiRand-Pure.tar.gz itself (read in place)."""
    if conversion not in CONVERSIONS:
        raise ConfigError(f"--conversion {conversion!r}: expected one of "
                          f"{', '.join(CONVERSIONS)}")
    if max_unmatched is not None:
        raise ConfigError(f"--max-unmatched applies to the AliExpress and Ali-CCP joins; "
                          f"{NAME} keeps the rows whose user or video has no features (they "
                          "get unknown values, and are counted in the manifest)")
    src = Path(source) if source is not None else Path(data_dir) / NAME / "raw"
    verified = src.exists() and verify_checksums(src)
    with contextlib.ExitStack() as stack:
        kind, entries = _find_inputs(src, stack)
        return _preprocess(data_dir, src, kind, entries, verified, progress, chunk_rows,
                           conversion, bool(drop_unclicked_deep))


def _preprocess(data_dir: Path, src: Path, kind: str, entries: dict, verified: bool,
                progress: bool, chunk_rows: int, conversion: str,
                drop_unclicked_deep: bool) -> dict:
    deep = CONVERSIONS[conversion]
    params = {
        "source": str(src.resolve()), "source_format": kind, "checksums_verified": verified,
        "conversion": conversion, "conversion_column": deep,
        "labels": f"click = is_click; conversion = is_click AND {deep}",
        "drop_unclicked_deep": bool(drop_unclicked_deep),
        "unclicked_deep": (f"rows with {deep} = 1 and is_click = 0 are dropped"
                           if drop_unclicked_deep else
                           f"rows with {deep} = 1 and is_click = 0 are kept as non-clicks "
                           "(click 0, conversion 0)"),
        "group": f"{GROUP}: the user (raw id); group AUC averages over users",
        "split": {
            "train": f"{FILES['log_train']}.csv, date {TRAIN_DATES[0]}-{TRAIN_DATES[1]}",
            "val": f"{FILES['log_train']}.csv, date {VAL_DATES[0]}-{VAL_DATES[1]}",
            "test": f"{FILES['log_test']}.csv, every date",
            "test_random": f"{FILES['log_random']}.csv (random exposure), every date"},
        "features": FEATURES,
        "not_features": {"log columns": list(NOT_FEATURES) + ["date (the split only)"],
                         "files": [f"{STATISTIC}.csv (whole-month aggregates: never opened)"]},
        "unknown_raw_id": UNKNOWN,
    }
    out = Path(data_dir) / NAME
    validation = {"by": "date", "source": f"{FILES['log_train']}.csv",
                  "train_dates": f"{TRAIN_DATES[0]}-{TRAIN_DATES[1]}",
                  "val_dates": f"{VAL_DATES[0]}-{VAL_DATES[1]}"}
    schema = Schema(categorical=CATEGORICAL, numerical=NUMERICAL, group=GROUP)
    total = sum(e.size for e in entries.values())
    with csvio.ByteProgress(progress, total, f"preprocess {NAME}") as bar:
        users = _read_users(entries["users"], bar)
        videos = _read_videos(entries["videos"], bar)
        with CacheBuilder(out, schema, min_count=0, carve_val=False, validation=validation,
                          extra_splits=("test_random",)) as cb:
            files = {}
            for role in ("log_train", "log_test", "log_random"):
                stats = _LogStats()
                _stream_log(cb, role, entries[role], users, videos, deep,
                            bool(drop_unclicked_deep), stats, bar, chunk_rows)
                files[f"{FILES[role]}.csv"] = stats.as_dict(deep)
            params.update(users=users.facts, videos=videos.facts, files=files)
            return cb.finish(dataset=NAME, inputs=csvio.input_facts(entries), params=params)


def _classify(entry: csvio.Entry) -> str | None:
    for stem in csvio.role_names(entry):
        for role, name in FILES.items():
            if stem == name:
                return role
    return None


ARCHIVE = "KuaiRand-Pure.tar.gz"
_DESCRIBE = ("the files of KuaiRand-Pure.tar.gz: " + ", ".join(f"{f}.csv" for f in FILES.values())
             + f", or the archive itself (fetch it with: prlbench download {NAME})")


def _find_inputs(src: Path, stack: contextlib.ExitStack) -> tuple[str, dict]:
    """("raw", role -> entry) from a folder of the extracted files, from the archive itself
    (read in place, never unpacked), or from a folder that holds only the archive."""
    if src.is_file() and (src.name.lower().endswith((".tar.gz", ".tgz", ".tar"))
                          or tarfile.is_tarfile(src)):
        return "archive", _archive_entries(src, stack)
    try:
        return csvio.find_inputs(src, _classify, {"raw": (tuple(FILES), ())}, _DESCRIBE,
                                 label=lambda role: f"{FILES[role]}.csv")
    except DataError:
        if src.is_dir() and (src / ARCHIVE).is_file():
            return "archive", _archive_entries(src / ARCHIVE, stack)
        raise


class _TarStream:
    """A member's stream; a truncated or damaged archive is a DataError naming the member and
    the line it ends in."""

    def __init__(self, stream, display: str) -> None:
        self.stream, self.display, self.lines = stream, display, 0

    def read(self, n: int = -1) -> bytes:
        return self._counted(self.stream.read, n)

    def readline(self) -> bytes:
        return self._counted(self.stream.readline)

    def _counted(self, fn, *args) -> bytes:
        try:
            data = fn(*args)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(_truncated(self.display, self.lines + 1, e)) from None
        self.lines += data.count(b"\n")
        return data


def _truncated(display: str, line: int, e: Exception) -> str:
    return (f"{display}, line {line}: the archive ends here or is damaged "
            f"({str(e) or type(e).__name__}); fetch it again: prlbench download {NAME}")


@dataclass(frozen=True)
class _TarEntry:
    """A member of the archive, read in place (the shape of a csvio.Entry)."""

    disk: Path
    tar: tarfile.TarFile
    info: tarfile.TarInfo

    @property
    def display(self) -> str:
        return f"{self.disk}/{self.info.name}"

    @property
    def size(self) -> int:
        return self.info.size

    def open(self, stack: contextlib.ExitStack) -> _TarStream:
        return _TarStream(stack.enter_context(self.tar.extractfile(self.info)), self.display)


def _archive_entries(archive: Path, stack: contextlib.ExitStack) -> dict[str, _TarEntry]:
    """The five inputs among the archive's regular files (by name; others are not read)."""
    try:
        tar = stack.enter_context(tarfile.open(archive, "r:*"))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{archive}: not a readable tar archive ({e}); fetch it again: "
                        f"prlbench download {NAME}") from None
    seen: list[tarfile.TarInfo] = []
    try:
        for info in tar:  # every header: a truncated archive fails here
            seen.append(info)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        last = next((i for i in reversed(seen) if i.isreg()), None)
        if last is None:
            raise DataError(f"{archive}: the archive ends early or is damaged ({e}); fetch it "
                            f"again: prlbench download {NAME}") from None
        _raise_where_it_ends(archive, last, e)
    found: dict[str, list[tarfile.TarInfo]] = {}
    for info in seen:
        name = info.name.rsplit("/", 1)[-1]
        if info.isreg() and not any(p.startswith(".") for p in info.name.split("/")) \
                and name.endswith(".csv") and name[:-4] in FILES.values():
            role = next(r for r, f in FILES.items() if f == name[:-4])
            found.setdefault(role, []).append(info)
    _check_member_sizes(archive, found)
    missing = [f"{FILES[r]}.csv" for r in FILES if r not in found]
    if missing:
        raise DataError(f"{archive}: no complete input found; missing {', '.join(missing)} "
                        f"(expected {_DESCRIBE})")
    twice = [infos for infos in found.values() if len(infos) > 1]
    if twice:
        raise DataError(f"{archive}: several members could be the same input: "
                        f"{', '.join(i.name for i in twice[0])}; which one is the data is "
                        "ambiguous")
    return {role: _TarEntry(archive, tar, infos[0]) for role, infos in found.items()}


# What an input of the archive may hold, uncompressed, as its tar header declares it (read
# before any byte is decompressed): about 8x the real files (logs ~120 MB, the user file ~5 MB,
# the video file ~1 MB); and the inputs together at most MAX_RATIO times the archive (the real
# one: ~6x). A bigger member would be read for minutes into gigabytes of memory.
MAX_MEMBER_BYTES = {"log_train": 2**30, "log_test": 2**30, "log_random": 2**30,
                    "users": 64 * 2**20, "videos": 64 * 2**20}
MAX_RATIO = 100
RATIO_FLOOR = 64 * 2**20  # below it, a small (test) archive is not held to the ratio


def _check_member_sizes(archive: Path, found: dict[str, list[tarfile.TarInfo]]) -> None:
    for role, infos in found.items():
        for info in infos:
            if info.size > MAX_MEMBER_BYTES[role]:
                raise DataError(
                    f"{archive}: {info.name} declares {info.size:,} bytes uncompressed, above "
                    f"the {MAX_MEMBER_BYTES[role]:,} a KuaiRand-Pure {FILES[role]}.csv may hold "
                    "(about 8x the real file); refused, nothing read. Fetch the archive again: "
                    f"prlbench download {NAME}")
    total = sum(i.size for infos in found.values() for i in infos)
    ratio = total / max(archive.stat().st_size, 1)
    if total > RATIO_FLOOR and ratio > MAX_RATIO:
        raise DataError(f"{archive}: its inputs declare {total:,} bytes uncompressed, "
                        f"{ratio:,.0f} times the archive (the real one: about 6; the limit is "
                        f"{MAX_RATIO}); refused as a possible archive bomb, nothing read")


def _raise_where_it_ends(archive: Path, info: tarfile.TarInfo, error: Exception) -> None:
    """The archive ends inside `info` or just after it: decompress what is there (gzip or plain
    tar) and name the line where the member's data stops."""
    start, end = info.offset_data, info.offset_data + info.size
    got = lines = pos = 0  # the member's bytes that are there, their line ends; stream offset
    with open(archive, "rb") as f:
        unzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if f.read(2) == b"\x1f\x8b" else None
        f.seek(0)
        while pos < end and (block := f.read(1 << 20)):
            try:
                out = unzip.decompress(block) if unzip else block
            except zlib.error:
                break
            a, b = max(start - pos, 0), min(end - pos, len(out))
            if b > a:
                lines += out.count(b"\n", a, b)
                got += b - a
            pos += len(out)
    if got < info.size:
        raise DataError(f"{archive}/{info.name}, line {lines + 1}: the archive ends inside this "
                        f"line ({got:,} of the file's {info.size:,} bytes are there: truncated "
                        f"or damaged, {error}); fetch it again: prlbench download {NAME}")
    raise DataError(f"{archive}: the archive ends after {info.name} or is damaged ({error}); "
                    f"fetch it again: prlbench download {NAME}")


# ------------------------------------------------------------------------ parsing helpers
def text_id(text: str) -> int:
    """Raw id of a text category: the first 8 bytes of blake2b, little-endian int64."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little",
                          signed=True)


def _where(display: str, lines: np.ndarray, column: str) -> csvio.Where:
    return lambda i: f"{display}, line {lines[i]}, column {column}"


def _blank(cells: np.ndarray) -> np.ndarray:
    return np.char.str_len(np.char.strip(cells)) == 0 if cells.size else np.zeros(0, bool)


def _ints(cells: np.ndarray, where: csvio.Where, what: str, *,
          empty: int | None = None) -> np.ndarray:
    """int64 of text cells ("3.0" accepted); empty cells -> `empty` (None: an error)."""
    blank = _blank(cells)
    if blank.any() and empty is None:
        raise DataError(f"{where(int(np.flatnonzero(blank)[0]))}: an empty cell; expected {what}")
    filled = np.where(blank, "0", np.char.strip(cells)) if cells.size else cells
    try:
        out = filled.astype(np.int64)
    except (ValueError, OverflowError):
        out = csvio.int_values(filled.astype(object), where, what)
    out[blank] = empty if empty is not None else 0
    return out


def _floats(cells: np.ndarray, where: csvio.Where) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, empty mask); empty cells are 0 there."""
    blank = _blank(cells)
    filled = np.where(blank, "0", np.char.strip(cells)) if cells.size else cells
    try:
        out = filled.astype(np.float64)
        if not np.isfinite(out).all():
            raise ValueError
    except (ValueError, OverflowError):
        out = csvio.float_values(filled.astype(object), where).astype(np.float64)
    return out, blank


def _texts(cells: np.ndarray) -> np.ndarray:
    """Raw ids of text categories; empty -> UNKNOWN."""
    out = np.full(len(cells), UNKNOWN, np.int64)
    for i, c in enumerate(np.char.strip(cells)):
        if c:
            out[i] = text_id(str(c))
    return out


def _log1p(values: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(values, 0.0)).astype(np.float32)


# --------------------------------------------------------------------------- feature files
@dataclass
class _Table:
    """One feature file in memory, by id: sorted ids [K], categoricals [K, C], numericals [K, N]
    and the values of an id that the file lacks."""

    ids: np.ndarray
    cat: np.ndarray
    num: np.ndarray
    missing_num: np.ndarray
    facts: dict = field(default_factory=dict)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(categoricals [n, C], numericals [n, N], found [n]) of each id; an id the file
        lacks gets UNKNOWN categoricals and `missing_num`."""
        n = len(ids)
        if len(self.ids) == 0:
            return (np.full((n, self.cat.shape[1]), UNKNOWN, np.int64),
                    np.tile(self.missing_num, (n, 1)), np.zeros(n, bool))
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        found = self.ids[pos] == ids
        cat, num = self.cat[pos], self.num[pos]  # copies, changed in place below
        cat[~found] = UNKNOWN
        num[~found] = self.missing_num
        return cat, num, found


def _read_table(entry: csvio.Entry, required: tuple[str, ...], bar
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every required column of a headed, quoted CSV as text cells, with each row's line."""
    with contextlib.ExitStack() as stack:
        raw = entry.open(stack)
        data = raw.read()
        bar.advance(len(data))
    text = data.decode("utf-8-sig", "replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows, lines = [], []
    try:
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue  # a blank line
            if header is None:
                header = [c.strip() for c in row]
                head_line = reader.line_num
                missing = [c for c in required if c not in header]
                if missing:
                    raise DataError(f"{entry.display}, line {head_line}: missing column "
                                    f"{missing[0]} (the header is {','.join(header)[:200]!r}); "
                                    f"expected the KuaiRand-Pure header with "
                                    f"{', '.join(required)}")
                continue
            if len(row) != len(header):
                raise DataError(f"{entry.display}, line {reader.line_num}: {len(row)} columns, "
                                f"expected {len(header)}; the file is truncated or not in the "
                                "expected format")
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{entry.display}, line {reader.line_num}: {e}") from None
    if header is None:
        raise DataError(f"{entry.display}: the file is empty; expected a header line")
    pos = {c: header.index(c) for c in required}
    cols = {c: np.array([r[pos[c]] for r in rows], dtype=str) if rows else np.empty(0, str)
            for c in required}
    return cols, np.array(lines, np.int64)


def _unique_first(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(sorted unique ids, row of each one's first occurrence, number of repeats)."""
    uniq, first = np.unique(ids, return_index=True)
    return uniq, first, int(len(ids) - len(uniq))


def _read_users(entry: csvio.Entry, bar) -> _Table:
    cols, lines = _read_table(entry, ("user_id", *USER_CAT, *USER_NUM), bar)
    def w(c):
        return _where(entry.display, lines, c)
    ids = _ints(cols["user_id"], w("user_id"), "an integer user id")
    cat = {c: _texts(cols[c]) for c in USER_TEXT}
    for c in (*USER_FLAGS, *ONEHOT):
        cat[c] = _ints(cols[c], w(c), "an integer category or an empty cell", empty=UNKNOWN)
    live_unknown = int((cat["is_live_streamer"] == LIVE_UNKNOWN).sum())
    cat["is_live_streamer"][cat["is_live_streamer"] == LIVE_UNKNOWN] = UNKNOWN
    num, empty_counts = [], {}
    for c in USER_NUM:
        v, blank = _floats(cols[c], w(c))
        num.append(_log1p(v))
        empty_counts[c] = int(blank.sum())
    uniq, first, dups = _unique_first(ids)
    facts = {"file": f"{FILES['users']}.csv", "rows": int(len(ids)), "duplicate_ids": dups,
             "is_live_streamer_unknown_-124": live_unknown,
             "empty_cells": {c: int(_blank(cols[c]).sum()) for c in (*USER_CAT, *USER_NUM)
                             if _blank(cols[c]).any()}}
    return _Table(uniq, np.stack([cat[c] for c in USER_CAT], 1)[first],
                  np.stack(num, 1)[first], np.zeros(len(USER_NUM), np.float32), facts)


def _read_videos(entry: csvio.Entry, bar) -> _Table:
    cols, lines = _read_table(entry, ("video_id", "author_id", "video_type", "upload_type",
                                      "music_id", "tag", "video_duration"), bar)
    def w(c):
        return _where(entry.display, lines, c)
    ids = _ints(cols["video_id"], w("video_id"), "an integer video id")
    first_tag = np.array([t.split(",")[0] for t in cols["tag"]] or [""], dtype=str)[:len(ids)]
    cat = [_ints(cols["author_id"], w("author_id"), "an integer id or an empty cell",
                 empty=UNKNOWN),
           _texts(cols["video_type"]), _texts(cols["upload_type"]),
           _ints(cols["music_id"], w("music_id"), "an integer id or an empty cell",
                 empty=UNKNOWN),
           _ints(first_tag, w("tag"), "a comma-separated list of integer tags or an empty "
                 "cell", empty=UNKNOWN)]
    duration, blank = _floats(cols["video_duration"], w("video_duration"))
    num = [_log1p(duration / 1000.0), blank.astype(np.float32)]
    uniq, first, dups = _unique_first(ids)
    facts = {"file": f"{FILES['videos']}.csv", "rows": int(len(ids)), "duplicate_ids": dups,
             "video_duration_empty": int(blank.sum()),
             "tag_empty": int(_blank(cols["tag"]).sum())}
    return _Table(uniq, np.stack(cat, 1)[first], np.stack(num, 1)[first],
                  np.array([0.0, 1.0], np.float32), facts)


# --------------------------------------------------------------------------------- the logs
def _calendar(first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """(dates YYYYMMDD [D] int64 sorted, days since 1970-01-01 [D]) from `first` to `last`."""
    d0 = datetime.date(first // 10000, first // 100 % 100, first % 100)
    d1 = datetime.date(last // 10000, last // 100 % 100, last % 100)
    days = [d0 + datetime.timedelta(n) for n in range((d1 - d0).days + 1)]
    return (np.array([d.year * 10000 + d.month * 100 + d.day for d in days], np.int64),
            np.array([(d - datetime.date(1970, 1, 1)).days for d in days], np.int64))


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def row_keys(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 128-bit hash of each row of `values` ([n, k] int64) as two uint64 arrays: two
    independent chains of splitmix64, so equal keys mean equal rows (collisions ~2^-128)."""
    u = np.ascontiguousarray(values).view(np.uint64)
    n = len(u)
    a = np.full(n, 0x9E3779B97F4A7C15, np.uint64)
    b = np.full(n, 0xD1B54A32D192ED03, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(u.shape[1]):
            a = _mix(a ^ u[:, j])
            b = _mix(b + u[:, j] * np.uint64(0x2545F4914F6CDD1D) + np.uint64(j))
    return a, b


class _Dedup:
    """The keys of the rows kept so far in one file, sorted by their first half, to drop exact
    repeats (16 bytes a kept row)."""

    def __init__(self) -> None:
        self.a = np.empty(0, np.uint64)
        self.b = np.empty(0, np.uint64)

    def first_occurrences(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Mask of the rows seen for the first time (in the file so far and in this chunk)."""
        n = len(a)
        order = np.lexsort((np.arange(n), b, a))  # equal keys together, earliest row first
        sa, sb = a[order], b[order]
        head = np.ones(n, bool)
        head[1:] = (sa[1:] != sa[:-1]) | (sb[1:] != sb[:-1])
        cand = order[head]  # the first row of each key of the chunk
        ca, cb = a[cand], b[cand]
        lo = np.searchsorted(self.a, ca, "left")
        hi = np.searchsorted(self.a, ca, "right")
        seen = np.zeros(len(cand), bool)
        one = hi - lo == 1
        seen[one] = self.b[lo[one]] == cb[one]
        for i in np.flatnonzero(hi - lo > 1):  # kept keys sharing a first half: rare
            seen[i] = bool((self.b[lo[i]:hi[i]] == cb[i]).any())
        new = cand[~seen]
        keep = np.zeros(n, bool)
        keep[new] = True
        a2, b2 = np.concatenate([self.a, a[new]]), np.concatenate([self.b, b[new]])
        o = np.argsort(a2, kind="stable")
        self.a, self.b = a2[o], b2[o]
        return keep


@dataclass
class _LogStats:
    rows: int = 0
    duplicates: int = 0
    deep_without_click: int = 0
    dropped: int = 0
    split_rows: dict = field(default_factory=dict)
    labels: dict = field(default_factory=lambda: dict.fromkeys(("is_click", *DEEP), 0))
    deep_without_click_by_label: dict = field(default_factory=lambda: dict.fromkeys(DEEP, 0))
    date_range: list = field(default_factory=list)
    time_ms_other_date: int = 0
    no_user_features: int = 0
    no_video_features: int = 0

    def as_dict(self, deep: str) -> dict:
        kept = self.rows - self.duplicates
        return {
            "rows": self.rows, "duplicates_removed": self.duplicates,
            "rows_after_dedup": kept,
            f"{deep}_without_click": self.deep_without_click,
            "unclicked_deep_dropped": self.dropped,
            "rows_kept": kept - self.dropped, "rows_by_split": self.split_rows,
            "dates": self.date_range,
            "label_counts_after_dedup": self.labels,
            "label_rates_after_dedup": {k: v / kept if kept else 0.0
                                        for k, v in self.labels.items()},
            "without_click_after_dedup": self.deep_without_click_by_label,
            "time_ms_on_another_date": self.time_ms_other_date,
            "rows_without_user_features": self.no_user_features,
            "rows_without_video_features": self.no_video_features,
        }


def _log_header(entry: csvio.Entry, stack) -> tuple:
    stream, header, first = csvio.open_csv_with_header(entry, stack)
    if tuple(header) != LOG_COLUMNS:
        j = next((i for i, (a, b) in enumerate(zip(header, LOG_COLUMNS)) if a != b),
                 min(len(header), len(LOG_COLUMNS)))
        got = header[j] if j < len(header) else "nothing"
        want = LOG_COLUMNS[j] if j < len(LOG_COLUMNS) else "no more columns"
        raise DataError(f"{entry.display}, line {first - 1}, column {j + 1}: the header has "
                        f"{got!r} where {want!r} is expected; expected the KuaiRand-Pure log "
                        f"header {','.join(LOG_COLUMNS)}")
    return stream, first


def _check_chunk(v: np.ndarray, role: str, where, display: str,
                 calendar: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Check dates, hours and labels of a chunk ([n, 19] int64); returns each row's day number."""
    dates, days = calendar
    d = v[:, COL["date"]]
    pos = np.minimum(np.searchsorted(dates, d), len(dates) - 1)
    bad = np.flatnonzero(dates[pos] != d)
    if bad.size:
        i = int(bad[0])
        lo, hi = DATES[role]
        raise DataError(f"{where(i, 'date')}: {d[i]} is not a date from {lo} to {hi}, the dates "
                        f"of {Path(display).name}; the file is damaged or not the KuaiRand-Pure "
                        "one")
    hm = v[:, COL["hourmin"]]
    bad = np.flatnonzero((hm < 0) | (hm > 2359) | (hm % 100 >= 60))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{where(i, 'hourmin')}: {hm[i]} is not an hour x 100 (0 to 2300)")
    for c in ("is_click", *DEEP):
        col = v[:, COL[c]]
        bad = np.flatnonzero((col != 0) & (col != 1))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{where(i, c)}: {c} = {col[i]}, expected 0 or 1")
    return days[pos]


def _stream_log(cb: CacheBuilder, role: str, entry: csvio.Entry, users: _Table, videos: _Table,
                deep: str, drop: bool, stats: _LogStats, bar, chunk_rows: int) -> None:
    calendar = _calendar(*DATES[role])
    dedup = _Dedup()
    lo = hi = None
    with contextlib.ExitStack() as stack:
        stream, first = _log_header(entry, stack)
        for chunk in csvio.iter_line_chunks(stream, chunk_rows=chunk_rows, first_line=first,
                                            on_bytes=bar.advance):
            frame = csvio.read_frame(chunk, len(LOG_COLUMNS), entry.display)
            def where(i, c, chunk=chunk):
                return f"{entry.display}, line {chunk.lines[i]}, column {COL[c] + 1} ({c})"
            v = np.stack([csvio.int_values(frame[j], lambda i, c=c: where(i, c), "an integer")
                          for j, c in enumerate(LOG_COLUMNS)], 1)
            del frame
            day = _check_chunk(v, role, where, entry.display, calendar)
            stats.rows += len(v)
            keep = dedup.first_occurrences(*row_keys(v))
            stats.duplicates += int((~keep).sum())
            v, day, lines = v[keep], day[keep], chunk.lines[keep]
            click = v[:, COL["is_click"]]
            for c in ("is_click", *DEEP):
                stats.labels[c] += int(v[:, COL[c]].sum())
            for c in DEEP:
                stats.deep_without_click_by_label[c] += int(((v[:, COL[c]] == 1) &
                                                             (click == 0)).sum())
            unclicked = (v[:, COL[deep]] == 1) & (click == 0)
            stats.deep_without_click += int(unclicked.sum())
            if len(v):
                d = v[:, COL["date"]]
                lo = int(d.min()) if lo is None else min(lo, int(d.min()))
                hi = int(d.max()) if hi is None else max(hi, int(d.max()))
                local_day = (v[:, COL["time_ms"]] + UTC_OFFSET_MS) // 86_400_000
                stats.time_ms_other_date += int((local_day != day).sum())
            if drop:
                stats.dropped += int(unclicked.sum())
                v, lines = v[~unclicked], lines[~unclicked]
            if not len(v):
                continue
            columns, no_user, no_video = _columns(v, users, videos, deep)
            stats.no_user_features += no_user
            stats.no_video_features += no_video
            if role == "log_train":
                in_val = v[:, COL["date"]] >= VAL_DATES[0]
                parts = {"train": ~in_val, "val": in_val}
            else:
                parts = {SPLIT_OF[role]: np.ones(len(v), bool)}
            for split, mask in parts.items():
                if mask.any():
                    part = columns if mask.all() else {k: a[mask] for k, a in columns.items()}
                    cb.add(split, part, source=entry.display, first_line=int(lines[mask][0]))
                    stats.split_rows[split] = stats.split_rows.get(split, 0) + int(mask.sum())
    stats.date_range = [lo, hi] if lo is not None else []


def _columns(v: np.ndarray, users: _Table, videos: _Table,
             deep: str) -> tuple[dict[str, np.ndarray], int, int]:
    """The schema columns of checked, deduplicated log rows; (columns, rows without user
    features, rows without video features)."""
    user, video = v[:, COL["user_id"]], v[:, COL["video_id"]]
    ucat, unum, ufound = users.lookup(user)
    vcat, vnum, vfound = videos.lookup(video)
    click = v[:, COL["is_click"]].astype(np.int8)
    columns = {GROUP: user, "user": user, "video": video, "tab": v[:, COL["tab"]],
               "hour": v[:, COL["hourmin"]] // 100,
               "click": click, "conversion": (click & v[:, COL[deep]]).astype(np.int8)}
    for names, matrix in ((USER_CAT, ucat), (USER_NUM, unum), (VIDEO_CAT, vcat),
                          (VIDEO_NUM, vnum)):
        columns.update(zip(names, np.ascontiguousarray(matrix.T)))  # one column a row
    return columns, int((~ufound).sum()), int((~vfound).sum())
