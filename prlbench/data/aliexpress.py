"""AliExpress (Tianchi 74690) -> the Parquet cache, exactly as MTReclib's `data/preprocess.py`.

Raw input: per country four header-less CSVs, `{c}_user_{train,test}` (33 columns, one row per
search) and `{c}_item_{train,test}` (49 columns, one row per shown item), usually as zips inside
the archive `aliexpress_{C}_datasets.zip`. Processing:

1. inner join of item rows to user rows on `item_1 == user_1` (the search id); items whose search
   has no user row are dropped (counted in the manifest) when they are at most 0.1 % of the
   split (`--max-unmatched`), else it is an error naming the first such line. A duplicated user
   id repeats the item row once per user row, as pandas' merge does;
2. `search_id` = user_1; `categorical_1..16` = user_2..8, user_32, user_33, item_19, item_34,
   item_35, item_36, item_40, item_41, item_42; `numerical_1..63` = user_9..31, then item_2..48
   without the seven categorical ones;
3. label item_49: 0 -> (click 0, conversion 0), 1 -> (1, 0), 2 -> (1, 1); anything else is an error.

Rows keep the item file's order. MTReclib's processed `train.csv` / `test.csv` (same columns, with
a header) are read as they are. Categorical ids are re-indexed by `CacheBuilder` on train only
(min_count 0: only ids unseen in train map to 0); validation = 10 % of train searches.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path

import numpy as np

from prlbench.data import csvio
from prlbench.data.cache import CacheBuilder, Schema, aliexpress_schema
from prlbench.data.download import verify_checksums
from prlbench.errors import ConfigError, DataError

COUNTRIES = ("nl", "es", "fr", "us", "ru")
USER_COLS, ITEM_COLS = 33, 49
USER_CAT = (2, 3, 4, 5, 6, 7, 8, 32, 33)          # 1-based user columns -> categorical_1..9
ITEM_CAT = (19, 34, 35, 36, 40, 41, 42)           # item columns -> categorical_10..16
USER_NUM = tuple(range(9, 32))                    # -> numerical_1..23
ITEM_NUM = tuple(c for c in range(2, 49) if c not in ITEM_CAT)  # -> numerical_24..63
LABEL = 49
LABELS = {0: (0, 0), 1: (1, 0), 2: (1, 1)}        # item_49 -> (click, conversion)
RAW_ROLES = ("user_train", "user_test", "item_train", "item_test")
_ROLE = re.compile(r"(?:^|[^a-z])(user|item)_?(train|test)(?:[^a-z]|$)")
_COUNTRY = re.compile(r"(?:^|[^a-z])(nl|es|fr|us|ru)(?=[^a-z]|$)")
_PROCESSED = {"train": "train", "test": "test", "val": "val", "valid": "val",
              "validation": "val"}


def preprocess_aliexpress(data_dir: Path, *, country: str, source: Path | None = None,
                          progress: bool = True, chunk_rows: int = 1_000_000,
                          max_unmatched: float | None = None) -> dict:
    """Build `data_dir/aliexpress_<country>/` from the raw archive or MTReclib's CSVs."""
    country = country.lower()
    if country not in COUNTRIES:
        raise ConfigError(f"country {country!r}: expected one of {', '.join(COUNTRIES)}")
    name = f"aliexpress_{country}"
    src = Path(source) if source is not None else Path(data_dir) / name / "raw"
    limit = csvio.unmatched_limit(max_unmatched)  # a bad option fails before any hashing
    verified = src.exists() and verify_checksums(src)
    others: list[str] = []
    try:
        kind, entries = csvio.find_inputs(
            src, lambda e: _classify(e, country, others),
            {"raw": (RAW_ROLES, ()), "processed": (("train", "test"), ("val",))},
            _describe(country), label=lambda role: f"{country}_{role} (.csv or .zip)")
    except DataError as e:
        if not others:
            raise
        raise DataError(f"{e}; the source holds files of another country ({others[0]}): check "
                        f"the data set name (prlbench preprocess {name}) or --source") from None
    params = {"source": str(src.resolve()), "source_format": kind, "country": country,
              "checksums_verified": verified,
              "max_unmatched": limit}
    out = Path(data_dir) / name
    total = sum(e.size for e in entries.values())
    with csvio.ByteProgress(progress, total, f"preprocess {name}") as bar:
        if kind == "raw":
            return _from_raw(out, name, entries, params, bar, chunk_rows)
        return _from_processed(out, name, entries, params, bar, chunk_rows)


def _describe(country: str) -> str:
    return (f"aliexpress_{country.upper()}_datasets.zip, or {country}_user_train / "
            f"{country}_user_test / {country}_item_train / {country}_item_test (.zip or .csv), "
            "or MTReclib's processed train.csv + test.csv")


def _classify(entry: csvio.Entry, country: str, others: list[str]) -> str | None:
    for stem in csvio.role_names(entry):
        m = _ROLE.search(stem)
        role = f"{m[1]}_{m[2]}" if m else _PROCESSED.get(stem)
        if role is not None:
            break
    else:
        return None
    # The country is what the data's own names say: the members of an archive (inner zip,
    # CSV) were written by Tianchi, the archive's file name by whoever saved it.
    inner = _countries(entry.members or [entry.disk.name])
    if not inner - {country}:
        return role
    if entry.members and country in _countries([entry.disk.name, *entry.members]):
        # es_* data inside an archive named (or a member named) for nl: refused, not skipped
        found = sorted(inner - {country})[0]
        raise DataError(
            f"{entry.disk}: named for {country.upper()} but holds {found.upper()} data "
            f"({'/'.join(entry.members)}); fetch aliexpress_{country.upper()}_datasets.zip "
            f"again, or preprocess it as what it is: prlbench preprocess aliexpress_{found} "
            f"--source {shlex.quote(str(entry.disk))}")
    others.append(entry.display)  # another country's file (es_user_train.csv for nl)
    return None


def _countries(names: list[str]) -> set[str]:
    return set(_COUNTRY.findall(" ".join(names).lower()))


# ---------------------------------------------------------------------------------- raw
class _Users:
    """The user (search) table of one split, in memory; item rows look their search up here."""

    def __init__(self, ids: np.ndarray, cat: np.ndarray, num: np.ndarray) -> None:
        self.order = np.argsort(ids, kind="stable")  # [U]: file order kept among equal ids
        self.sorted_ids = ids[self.order]
        self.cat, self.num = cat, num                # [U, 9] int64, [U, 23] float32
        self.used = np.zeros(len(ids), bool)
        self.duplicates = int(len(ids) - len(np.unique(ids)))

    def match(self, sid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(item row, user row) pairs of the inner join, in item order ([M], [M])."""
        lo = np.searchsorted(self.sorted_ids, sid, "left")
        cnt = np.searchsorted(self.sorted_ids, sid, "right") - lo
        if (cnt <= 1).all():
            items = np.flatnonzero(cnt == 1)
            users = self.order[lo[items]]
        else:
            items = np.repeat(np.arange(len(sid)), cnt)
            offset = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            users = self.order[np.repeat(lo, cnt) + offset]
        self.used[users] = True
        return items, users


def _raw_chunks(entry: csvio.Entry, stack, ncols: int, bar, chunk_rows: int):
    stream = entry.open(stack)
    for chunk in csvio.iter_line_chunks(stream, chunk_rows=chunk_rows, on_bytes=bar.advance):
        chunk = csvio.drop_header(chunk, ncols)
        if len(chunk):
            yield chunk, csvio.read_frame(chunk, ncols, entry.display)


def _where(entry: csvio.Entry, chunk: csvio.LineChunk, prefix: str, col: int):
    return csvio.where_fn(entry.display, chunk, f"{col} ({prefix}_{col})")


def _read_users(entry: csvio.Entry, bar, chunk_rows: int) -> _Users:
    ids, cats, nums = [], [], []
    with contextlib.ExitStack() as stack:
        for chunk, frame in _raw_chunks(entry, stack, USER_COLS, bar, chunk_rows):
            def w(c, chunk=chunk):
                return _where(entry, chunk, "user", c)
            ids.append(csvio.int_values(frame[0], w(1)))
            cats.append(np.stack([csvio.int_values(frame[c - 1], w(c)) for c in USER_CAT], 1))
            nums.append(np.stack([csvio.float_values(frame[c - 1], w(c)) for c in USER_NUM], 1))
    if not ids:
        return _Users(np.empty(0, np.int64), np.empty((0, len(USER_CAT)), np.int64),
                      np.empty((0, len(USER_NUM)), np.float32))
    return _Users(np.concatenate(ids), np.concatenate(cats), np.concatenate(nums))


def _labels(values: np.ndarray, where) -> tuple[np.ndarray, np.ndarray]:
    bad = np.flatnonzero(~np.isin(values, list(LABELS)))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{where(i)}: label {values[i]} is not 0, 1 or 2 (0: no click, 1: click, "
                        "2: click and purchase); fix or drop that row")
    return (values >= 1).astype(np.int8), (values == 2).astype(np.int8)


def _item_chunk_columns(entry, chunk, frame, users: _Users) -> tuple[dict, int, int | None]:
    """The schema columns of one chunk of item rows joined to their users;
    (columns, rows dropped, line of the first dropped row or None)."""
    def w(c):
        return _where(entry, chunk, "item", c)
    sid = csvio.int_values(frame[0], w(1))
    label = csvio.int_values(frame[LABEL - 1], w(LABEL), "a label (0, 1 or 2)")
    click, conversion = _labels(label, w(LABEL))
    icat = [csvio.int_values(frame[c - 1], w(c)) for c in ITEM_CAT]
    inum = [csvio.float_values(frame[c - 1], w(c)) for c in ITEM_NUM]
    items, urows = users.match(sid)
    schema = aliexpress_schema()
    cat = [users.cat[urows, j] for j in range(len(USER_CAT))] + [v[items] for v in icat]
    num = [users.num[urows, j] for j in range(len(USER_NUM))] + [v[items] for v in inum]
    columns = {"search_id": sid[items], "click": click[items], "conversion": conversion[items]}
    columns.update(zip(schema.categorical, cat))
    columns.update(zip(schema.numerical, num))
    kept = np.zeros(len(sid), bool)
    kept[items] = True
    first = np.flatnonzero(~kept)
    return columns, int(len(first)), int(chunk.lines[first[0]]) if len(first) else None


def _stream_items(cb: CacheBuilder, split: str, entry: csvio.Entry, users: _Users, bar,
                  chunk_rows: int, max_unmatched: float) -> dict:
    item_rows = dropped = 0
    first_dropped: int | None = None
    with contextlib.ExitStack() as stack:
        for chunk, frame in _raw_chunks(entry, stack, ITEM_COLS, bar, chunk_rows):
            columns, n_dropped, line = _item_chunk_columns(entry, chunk, frame, users)
            item_rows += len(frame)
            dropped += n_dropped
            first_dropped = first_dropped if first_dropped is not None else line
            if len(columns["search_id"]):
                cb.add(split, columns, source=entry.display, first_line=int(chunk.lines[0]))
    csvio.check_unmatched(dropped, item_rows, max_unmatched, f"{entry.display}, line "
                          f"{first_dropped}", f"the search id is not in the {split} user file",
                          "are the user and item files of the same country and split, and "
                          "complete?")
    return {"user_rows": int(len(users.used)), "duplicate_user_ids": users.duplicates,
            "item_rows": item_rows, "items_without_user": dropped,
            "users_without_items": int((~users.used).sum())}


def _from_raw(out: Path, name: str, entries: dict, params: dict, bar, chunk_rows: int) -> dict:
    inputs = csvio.input_facts(entries)
    join = {}
    with CacheBuilder(out, aliexpress_schema(), min_count=0) as cb:
        for split in ("train", "test"):
            users = _read_users(entries[f"user_{split}"], bar, chunk_rows)
            join[split] = _stream_items(cb, split, entries[f"item_{split}"], users, bar,
                                        chunk_rows, params["max_unmatched"])
        params = {**params, "join": join, "label_mapping": "item_49: 0 -> (0,0), 1 -> (1,0), "
                  "2 -> (1,1) as (click, conversion)"}
        return cb.finish(dataset=name, inputs=inputs, params=params)


# ---------------------------------------------------------------------------- processed
def _processed_schema(entries: dict) -> tuple[Schema, list[str]]:
    with contextlib.ExitStack() as stack:
        _, header, _ = csvio.open_csv_with_header(entries["train"], stack)
    def numbered(prefix: str) -> list[str]:  # canonical order, whatever the header's order
        names = [c for c in header if re.fullmatch(rf"{prefix}_\d+", c)]
        return sorted(names, key=lambda c: int(c.rsplit("_", 1)[1]))
    cats, nums = numbered("categorical"), numbered("numerical")
    schema = Schema(categorical=tuple(cats), numerical=tuple(nums))
    expected = aliexpress_schema()
    missing = [c for c in expected.columns() if c not in header]
    extra = [c for c in cats + nums if c not in expected.columns()]
    if missing or extra:
        what = (f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing[:5])}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "") if missing
                else f"unexpected column {extra[0]}")
        raise DataError(f"{entries['train'].display}, line 1: {what}; expected MTReclib's header "
                        "search_id, categorical_1..16, numerical_1..63, click, conversion "
                        "(any order)")
    return schema, [c for c in header if c not in schema.columns()]


def _processed_split(cb: CacheBuilder, split: str, entry: csvio.Entry, schema: Schema, bar,
                     chunk_rows: int) -> None:
    with contextlib.ExitStack() as stack:
        stream, header, first, pos = csvio.open_processed_csv(entry, stack, schema.columns())
        for chunk in csvio.iter_line_chunks(stream, chunk_rows=chunk_rows, first_line=first,
                                            on_bytes=bar.advance):
            frame = csvio.read_frame(chunk, len(header), entry.display)
            cols = {}
            for c in schema.columns():
                w = csvio.where_fn(entry.display, chunk, c)
                if c in schema.numerical:
                    cols[c] = csvio.float_values(frame[pos[c]], w)
                else:
                    cols[c] = csvio.int_values(frame[pos[c]], w, "a label (0 or 1)" if c in (
                        schema.click, schema.conversion) else "an integer id")
            for c in ("click", "conversion"):
                csvio.check_binary(cols[c], csvio.where_fn(entry.display, chunk, c), c)
            bad = np.flatnonzero((cols["conversion"] == 1) & (cols["click"] == 0))
            if bad.size:
                raise DataError(f"{entry.display}, line {chunk.lines[bad[0]]}: conversion 1 "
                                "with click 0; in this format conversion implies click")
            cb.add(split, cols, source=entry.display, first_line=int(chunk.lines[0]))


def _from_processed(out: Path, name: str, entries: dict, params: dict, bar,
                    chunk_rows: int) -> dict:
    schema, ignored = _processed_schema(entries)
    inputs = csvio.input_facts(entries)
    has_val = "val" in entries
    with CacheBuilder(out, schema, min_count=0, carve_val=not has_val) as cb:
        for split in ("train", "val", "test"):
            if split in entries:
                _processed_split(cb, split, entries[split], schema, bar, chunk_rows)
        params = {**params, "ignored_columns": ignored}
        return cb.finish(dataset=name, inputs=inputs, params=params)
