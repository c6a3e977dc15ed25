"""Ali-CCP (Tianchi 408) -> the Parquet cache, following the official AITM processing.

Raw input: `sample_skeleton_{train,test}.csv` (sample id, click, purchase, common feature index,
feature count, feature list) and `common_features_{train,test}.csv` (common feature index, feature
count, feature list); a feature list is `field\\x02id\\x03value` items joined by `\\x01`.

- Each skeleton row is joined to its common-features row by index. The common features of a
  split are streamed once and only the kept fields are held in memory ([K, 18] int64); the
  skeleton is streamed in chunks, so the ~40 GB of raw files never have to fit in memory.
- Rows with click 0 and purchase 1 are dropped (AITM does so); they are counted in the manifest.
- The 18 sparse fields `101 121 122 124 125 126 127 128 129 205 206 207 216 508 509 702 853 301`
  become the categorical columns `f101` ... `f301` (raw value: the feature id, int64). A field is
  taken from the skeleton row, else from its common features; the first occurrence wins; an
  absent field gets the raw id -1, which the vocabulary treats like any other id.
- No numerical columns (F_num = 0). Vocabulary on train only, min_count 10 (ids seen 10 times or
  fewer map to 0). `search_id` = the first 8 bytes of blake2b of the common feature index string
  (little-endian int64): validation = 10 % of the train indexes, whole groups.
- A skeleton row whose common feature index is not in the common features file is dropped and
  counted when such rows are at most 0.1 % of the split (`--max-unmatched`), else it is an
  error naming the line.

A processed CSV folder (`train.csv` [+ `val.csv`] + `test.csv` with `click, purchase, <field ids>,
D<dense>`) is read as it is: field columns -> categorical (`101` -> `f101`), `D*` -> numerical,
purchase -> conversion, search_id = the row number over train, val, test (no groups there).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from prlbench.data import csvio
from prlbench.data.cache import CacheBuilder, Schema
from prlbench.data.download import verify_checksums
from prlbench.errors import ConfigError, DataError

NAME = "aliccp"
FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207",
          "216", "508", "509", "702", "853", "301")
CATEGORICAL = tuple(f"f{f}" for f in FIELDS)
ABSENT = -1                       # raw id of a field absent from a row
MIN_COUNT = 10                    # AITM: ids seen 10 times or fewer -> 0
_NONE = np.iinfo(np.int64).min    # internal "not found" marker, becomes ABSENT at the end
RAW_ROLES = ("skeleton_train", "skeleton_test", "common_train", "common_test")
_ROLE = re.compile(r"(sample_skeleton|common_features?)_?(train|test)")
_PROCESSED = {"train": "train", "test": "test", "val": "val", "valid": "val",
              "validation": "val"}
VARIANTS = ("aitm",)


def preprocess_aliccp(data_dir: Path, *, source: Path | None = None, progress: bool = True,
                      chunk_rows: int = 1_000_000, variant: str = "aitm",
                      max_unmatched: float | None = None) -> dict:
    """Build `data_dir/aliccp/` from the raw Ali-CCP files or a processed CSV folder."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    src = Path(source) if source is not None else Path(data_dir) / NAME / "raw"
    limit = csvio.unmatched_limit(max_unmatched)  # a bad option fails before any hashing
    verified = src.exists() and verify_checksums(src)
    kind, entries = csvio.find_inputs(
        src, _classify, {"raw": (RAW_ROLES, ()), "processed": (("train", "test"), ("val",))},
        "sample_skeleton_{train,test}.csv and common_features_{train,test}.csv (extract the "
        "downloaded .tar.gz archives, or import them with: prlbench download aliccp --from "
        "FOLDER), "
        "or a processed folder with train.csv + test.csv",
        label=_file_name)
    params = {"source": str(src.resolve()), "source_format": kind, "variant": variant,
              "checksums_verified": verified,
              "max_unmatched": limit}
    out = Path(data_dir) / NAME
    total = sum(e.size for e in entries.values())
    with csvio.ByteProgress(progress, total, f"preprocess {NAME}") as bar:
        if kind == "raw":
            return _from_raw(out, entries, params, bar, chunk_rows)
        return _from_processed(out, entries, params, bar, chunk_rows)


def _file_name(role: str) -> str:
    kind, split = role.split("_")
    return f"{'sample_skeleton' if kind == 'skeleton' else 'common_features'}_{split}.csv"


def _classify(entry: csvio.Entry) -> str | None:
    for stem in csvio.role_names(entry):
        m = _ROLE.search(stem)
        if m:
            return ("skeleton_" if m[1] == "sample_skeleton" else "common_") + m[2]
        if stem in _PROCESSED:
            return _PROCESSED[stem]
    return None


def search_id(index: str) -> int:
    """Stable int64 of a common feature index: first 8 bytes of blake2b, little-endian."""
    return int.from_bytes(hashlib.blake2b(index.encode(), digest_size=8).digest(), "little",
                          signed=True)


# --------------------------------------------------------------------------- parsing
def _strings(chunk: csvio.LineChunk, ncols: int, display: str) -> list[pa.Array]:
    """The chunk's columns as Arrow strings (field count checked first)."""
    csvio.check_field_counts(chunk, ncols, display)
    names = [str(i) for i in range(ncols)]
    try:
        table = pacsv.read_csv(
            io.BytesIO(chunk.data),
            read_options=pacsv.ReadOptions(column_names=names,
                                           block_size=max(1 << 20, len(chunk.data) + 1)),
            parse_options=pacsv.ParseOptions(quote_char=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False))
    except pa.ArrowInvalid as e:
        bad = next((i for i in range(len(chunk)) if not _utf8(chunk, i)), 0)
        raise DataError(f"{display}, line {chunk.lines[bad]}: could not be read ({e})") from e
    return [pc.utf8_trim_whitespace(table.column(n).combine_chunks()) for n in names]


def _utf8(chunk: csvio.LineChunk, i: int) -> bool:
    try:
        chunk.data[chunk.starts[i]:chunk.ends[i]].decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _ints(values: pa.Array, where: csvio.Where, what: str = "an integer id") -> np.ndarray:
    try:
        return pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return csvio.int_values(np.asarray(values.to_pylist(), dtype=object), where, what)


def extract_fields(lists: pa.Array, where: csvio.Where) -> tuple[np.ndarray, np.ndarray, int]:
    """Feature ids of FIELDS in each feature list: ([n, 18] int64, features per row [n], dups).

    Ids are `_NONE` where a field is absent; a repeated field keeps its first occurrence.
    """
    n, width = len(lists), len(FIELDS)
    feats = pc.split_pattern(lists, "\x01")
    parents = pc.list_parent_indices(feats).to_numpy()
    flat = pc.list_flatten(feats)
    nonempty = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    flat, parents = flat.filter(pa.array(nonempty)), parents[nonempty]
    parts = pc.split_pattern(flat, "\x02", max_splits=1)
    bad = np.flatnonzero(pc.list_value_length(parts).to_numpy() < 2)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{where(int(parents[i]))}: feature {flat[i].as_py()!r} has no field "
                        "separator \\x02 (expected field\\x02id\\x03value)")
    field = pc.list_element(parts, 0) if len(parts) else pa.array([], pa.string())
    col = pc.fill_null(pc.index_in(field, value_set=pa.array(FIELDS)), -1).to_numpy()
    keep = col >= 0
    kept_parents = parents[keep]
    ids = np.empty(0, np.int64)
    if keep.any():
        rest = pc.list_element(parts.filter(pa.array(keep)), 1)
        id_str = pc.list_element(pc.split_pattern(rest, "\x03", max_splits=1), 0)
        ids = _ints(pc.utf8_trim_whitespace(id_str), lambda i: where(int(kept_parents[i])))
    key = kept_parents * width + col[keep]
    uniq, first = np.unique(key, return_index=True)
    out = np.full(n * width, _NONE, np.int64)
    out[uniq] = ids[first]
    return out.reshape(n, width), np.bincount(parents, minlength=n), int(len(key) - len(uniq))


def _chunks(entry: csvio.Entry, stack, ncols: int, bar, chunk_rows: int):
    stream = entry.open(stack)
    for chunk in csvio.iter_line_chunks(stream, chunk_rows=chunk_rows, on_bytes=bar.advance):
        chunk = csvio.drop_header(chunk, ncols)
        if len(chunk):
            yield chunk, _strings(chunk, ncols, entry.display)


def _where(entry: csvio.Entry, chunk: csvio.LineChunk, column: str) -> csvio.Where:
    return csvio.where_fn(entry.display, chunk, column)


# ------------------------------------------------------------------------ common features
class _Common:
    """Kept fields of one split's common features, by index: keys [K], search ids, [K, 18]."""

    def __init__(self, keys: pa.Array, vals: np.ndarray) -> None:
        dup = keys.to_pandas().duplicated(keep="first").to_numpy()
        self.duplicates = int(dup.sum())
        self.keys = keys.filter(pa.array(~dup))
        self.vals = vals[~dup]
        self.search_ids = np.array([search_id(k) for k in self.keys.to_pylist()], np.int64)

    def lookup(self, index: pa.Array) -> np.ndarray:
        """Row of each index in this table, -1 where absent ([n] int64)."""
        pos = pc.index_in(index, value_set=self.keys)
        return pc.fill_null(pos, -1).to_numpy().astype(np.int64)


def _read_common(entry: csvio.Entry, bar, chunk_rows: int, stats: dict) -> _Common:
    keys, vals = [], []
    mismatches = dups = 0
    with contextlib.ExitStack() as stack:
        for chunk, cols in _chunks(entry, stack, 3, bar, chunk_rows):
            count = _ints(cols[1], _where(entry, chunk, "2 (feature count)"))
            v, nfeat, d = extract_fields(cols[2], _where(entry, chunk, "3 (feature list)"))
            keys.append(cols[0])
            vals.append(v)
            mismatches += int((count != nfeat).sum())
            dups += d
    common = _Common(pa.concat_arrays(keys) if keys else pa.array([], pa.string()),
                     np.concatenate(vals) if vals else np.empty((0, len(FIELDS)), np.int64))
    stats.update(common_rows=int(sum(len(k) for k in keys)),
                 duplicate_common_indexes=common.duplicates,
                 common_feature_count_mismatches=mismatches, common_repeated_fields=dups)
    return common


# ------------------------------------------------------------------------------ skeleton
def _skeleton_chunk(entry, chunk, cols, common: _Common, stats: dict) -> dict | None:
    """Schema columns of one chunk of skeleton rows (None when every row is dropped)."""
    click = _ints(cols[1], _where(entry, chunk, "2 (click)"), "a label (0 or 1)")
    purchase = _ints(cols[2], _where(entry, chunk, "3 (purchase)"), "a label (0 or 1)")
    csvio.check_binary(click, _where(entry, chunk, "2 (click)"), "click")
    csvio.check_binary(purchase, _where(entry, chunk, "3 (purchase)"), "purchase")
    count = _ints(cols[4], _where(entry, chunk, "5 (feature count)"))
    vals, nfeat, dups = extract_fields(cols[5], _where(entry, chunk, "6 (feature list)"))
    pos = common.lookup(cols[3])
    drop = (click == 0) & (purchase == 1)
    missing = (pos < 0) & ~drop
    if missing.any() and "first_missing" not in stats:
        i = int(np.flatnonzero(missing)[0])
        stats["first_missing"] = (int(chunk.lines[i]), cols[3][i].as_py())
    stats["rows"] += len(click)
    stats["purchase_without_click"] += int(drop.sum())
    stats["missing_common_features"] += int(missing.sum())
    stats["feature_count_mismatches"] += int((count != nfeat).sum())
    stats["repeated_fields"] += dups
    keep = ~drop & ~missing
    if not keep.any():
        return None
    own, rows = vals[keep], pos[keep]
    merged = np.where(own != _NONE, own, common.vals[rows])   # [m, 18]
    merged[merged == _NONE] = ABSENT
    columns = {"search_id": common.search_ids[rows], "click": click[keep],
               "conversion": purchase[keep]}
    columns.update({c: merged[:, j] for j, c in enumerate(CATEGORICAL)})
    return columns


def _stream_skeleton(cb: CacheBuilder, split: str, entries: dict, bar, chunk_rows: int,
                     max_unmatched: float) -> dict:
    stats = {"rows": 0, "purchase_without_click": 0, "missing_common_features": 0,
             "feature_count_mismatches": 0, "repeated_fields": 0}
    common = _read_common(entries[f"common_{split}"], bar, chunk_rows, stats)
    entry = entries[f"skeleton_{split}"]
    with contextlib.ExitStack() as stack:
        for chunk, cols in _chunks(entry, stack, 6, bar, chunk_rows):
            columns = _skeleton_chunk(entry, chunk, cols, common, stats)
            if columns is not None:
                cb.add(split, columns, source=entry.display, first_line=int(chunk.lines[0]))
    _check_missing(stats, entry, entries[f"common_{split}"], max_unmatched)
    stats.pop("first_missing", None)
    return stats


def _check_missing(stats: dict, skeleton: csvio.Entry, common: csvio.Entry,
                   max_unmatched: float) -> None:
    missing = stats["missing_common_features"]
    line, index = stats.get("first_missing", (None, None))
    csvio.check_unmatched(missing, stats["rows"] - stats["purchase_without_click"],
                          max_unmatched, f"{skeleton.display}, line {line}",
                          f"common feature index {index!r} is not in {common.display}",
                          "are the two files of the same split and complete?")


def _from_raw(out: Path, entries: dict, params: dict, bar, chunk_rows: int) -> dict:
    inputs = csvio.input_facts(entries)
    schema = Schema(categorical=CATEGORICAL, numerical=())
    with CacheBuilder(out, schema, min_count=MIN_COUNT) as cb:
        rows = {split: _stream_skeleton(cb, split, entries, bar, chunk_rows,
                                        params["max_unmatched"]) for split in ("train", "test")}
        params = {**params, "fields": list(FIELDS), "absent_field_id": ABSENT,
                  "search_id": "blake2b-64 (little-endian int64) of the common feature index",
                  "dropped_rows": "click 0 and purchase 1 (AITM); rows without common features "
                  f"(allowed up to {params['max_unmatched']:.2%})", "read": rows}
        return cb.finish(dataset=NAME, inputs=inputs, params=params)


# ---------------------------------------------------------------------------- processed
def _processed_schema(entries: dict) -> tuple[Schema, dict[str, str], str]:
    """(schema, output name -> input column, input conversion column) from train.csv's header."""
    with contextlib.ExitStack() as stack:
        _, header, _ = csvio.open_csv_with_header(entries["train"], stack)
    conv = next((c for c in ("purchase", "conversion") if c in header), None)
    if "click" not in header or conv is None:
        raise DataError(f"{entries['train'].display}, line 1: expected the columns click and "
                        f"purchase (found {header[:6]}...)")
    features = [c for c in header if c not in ("click", conv, "search_id")]
    dense = [c for c in features if c.startswith("D")]
    sparse = [c for c in features if not c.startswith("D")]
    odd = [c for c in sparse if not re.fullmatch(r"\d+(_\d+)?", c)]
    if odd:
        hint = (" These are MTReclib's processed AliExpress columns: use prlbench preprocess "
                "aliexpress_XX --source with that folder" if any(
                    c.startswith(("categorical_", "numerical_")) for c in odd) else "")
        raise DataError(f"{entries['train'].display}, line 1: columns {odd[:4]} are not Ali-CCP "
                        "fields; the processed Ali-CCP layout has click, purchase, field ids "
                        f"(101, 109_14, ...) and dense D* columns.{hint}")
    source = {("f" + c if c[:1].isdigit() else c): c for c in sparse}
    source.update({c: c for c in dense})
    schema = Schema(categorical=tuple(n for n in source if n not in dense), numerical=tuple(dense))
    return schema, source, conv


def _processed_chunk(entry, chunk, frame, pos, schema, source, conv, row0) -> tuple[dict, int]:
    """Schema columns of one chunk (purchase-without-click rows dropped), and rows dropped."""
    def w(c):
        return csvio.where_fn(entry.display, chunk, c)
    click = csvio.int_values(frame[pos["click"]], w("click"), "a label (0 or 1)")
    purchase = csvio.int_values(frame[pos[conv]], w(conv), "a label (0 or 1)")
    csvio.check_binary(click, w("click"), "click")
    csvio.check_binary(purchase, w(conv), conv)
    cols = {"click": click, "conversion": purchase}
    cols["search_id"] = (csvio.int_values(frame[pos["search_id"]], w("search_id"))
                         if "search_id" in pos else row0 + np.arange(len(frame), dtype=np.int64))
    for name in schema.categorical:
        cols[name] = csvio.int_values(frame[pos[source[name]]], w(source[name]))
    for name in schema.numerical:
        cols[name] = csvio.float_values(frame[pos[source[name]]], w(name))
    keep = ~((click == 0) & (purchase == 1))
    return {k: v[keep] for k, v in cols.items()}, int((~keep).sum())


def _processed_split(cb, split, entry, spec, bar, chunk_rows, row0) -> tuple[int, int]:
    schema, source, conv = spec
    rows = dropped = 0
    with contextlib.ExitStack() as stack:
        stream, header, first, pos = csvio.open_processed_csv(
            entry, stack, ["click", conv, *source.values()])
        for chunk in csvio.iter_line_chunks(stream, chunk_rows=chunk_rows, first_line=first,
                                            on_bytes=bar.advance):
            frame = csvio.read_frame(chunk, len(header), entry.display)
            cols, n_drop = _processed_chunk(entry, chunk, frame, pos, schema, source, conv,
                                            row0 + rows)
            rows, dropped = rows + len(frame), dropped + n_drop
            if len(cols["click"]):
                cb.add(split, cols, source=entry.display, first_line=int(chunk.lines[0]))
    return rows, dropped


def _from_processed(out: Path, entries: dict, params: dict, bar, chunk_rows: int) -> dict:
    spec = _processed_schema(entries)
    inputs = csvio.input_facts(entries)
    with contextlib.ExitStack() as stack:
        _, header, _ = csvio.open_csv_with_header(entries["train"], stack)
    has_groups = "search_id" in header
    read, row0 = {}, 0
    with CacheBuilder(out, spec[0], min_count=0, has_groups=has_groups,
                      carve_val="val" not in entries) as cb:
        for split in ("train", "val", "test"):
            if split in entries:
                rows, dropped = _processed_split(cb, split, entries[split], spec, bar,
                                                 chunk_rows, row0)
                read[split] = {"rows": rows, "purchase_without_click": dropped}
                row0 += rows
        params = {**params, "columns_from": spec[1], "conversion_from": spec[2],
                  "search_id": "given" if has_groups else "row number over train, val, test",
                  "read": read}
        return cb.finish(dataset=NAME, inputs=inputs, params=params)
