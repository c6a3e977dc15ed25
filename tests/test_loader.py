"""The tensor loader: values equal the Parquet files, batches cover every row once, no per-sample
Python is needed, column roles come from the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from prlbench.data.cache import CacheBuilder, Manifest, Schema, open_cache
from prlbench.data.loader import TensorData, batches, load_side, load_split
from prlbench.data.synthetic import preprocess_synthetic
from prlbench.errors import CacheError, ConfigError, DataError


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loader")
    preprocess_synthetic(root, rows=3000, seed=5, progress=False)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A cache with odd column names and no numericals, written through CacheBuilder."""
    root = tmp_path_factory.mktemp("tiny")
    schema = Schema(categorical=("user", "item"), numerical=(), group="sid", click="clk",
                    conversion="buy")
    rng = np.random.default_rng(0)
    n = 400
    clk = (rng.random(n) < 0.3).astype(np.int8)
    cols = {"sid": np.arange(n) // 4, "user": rng.integers(100, 110, n),
            "item": rng.integers(7, 30, n), "clk": clk,
            "buy": (clk & (rng.random(n) < 0.5)).astype(np.int8)}
    with CacheBuilder(root / "tiny", schema) as builder:
        builder.add("train", cols, source="tiny train")
        builder.add("test", {k: v[:80] for k, v in cols.items()}, source="tiny test")
        builder.finish(dataset="tiny")
    return root


def _toy(n: int) -> TensorData:
    """In-memory data whose group is the row number, so coverage is easy to check."""
    return TensorData(categorical=torch.arange(2 * n).reshape(n, 2),
                      numerical=torch.arange(3 * n, dtype=torch.float32).reshape(n, 3),
                      click=torch.zeros(n), conversion=torch.zeros(n),
                      group=torch.arange(n))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_tensors_equal_the_parquet_values(synth, split):
    data = load_split(synth, "synthetic", split)
    table = pq.read_table(synth / "synthetic" / f"{split}.parquet").to_pandas()
    cats = [f"categorical_{i}" for i in range(1, 17)]
    nums = [f"numerical_{i}" for i in range(1, 64)]
    assert len(data) == len(table) > 0
    # int32, the cache's type: half the memory of int64, and the embedding lookup takes it
    assert data.categorical.dtype == torch.int32 and data.categorical.shape == (len(table), 16)
    assert data.numerical.dtype == torch.float32 and data.numerical.shape == (len(table), 63)
    assert data.click.dtype == data.conversion.dtype == torch.float32
    assert data.group.dtype == torch.int64
    np.testing.assert_array_equal(data.categorical.numpy(), table[cats].to_numpy())
    np.testing.assert_array_equal(data.numerical.numpy(), table[nums].to_numpy())
    np.testing.assert_array_equal(data.click.numpy(), table["click"].to_numpy())
    np.testing.assert_array_equal(data.conversion.numpy(), table["conversion"].to_numpy())
    np.testing.assert_array_equal(data.group.numpy(), table["search_id"].to_numpy())


def test_roles_come_from_the_manifest_and_no_numericals_work(tiny):
    manifest = open_cache(tiny, "tiny")
    data = load_split(tiny, "tiny", "train", manifest=manifest)
    table = pq.read_table(tiny / "tiny" / "train.parquet").to_pandas()
    assert data.numerical.shape == (len(table), 0) and data.numerical.dtype == torch.float32
    np.testing.assert_array_equal(data.categorical.numpy(), table[["user", "item"]].to_numpy())
    np.testing.assert_array_equal(data.click.numpy(), table["clk"].to_numpy())
    np.testing.assert_array_equal(data.group.numpy(), table["sid"].to_numpy())
    sizes = [len(b) for b in batches(data, 64, shuffle=True, generator=torch.Generator())]
    assert sum(sizes) == len(data)
    assert all(b.numerical.shape == (len(b), 0) for b in batches(data, 64, shuffle=False))
    assert load_side(tiny, "tiny", "train") is None


def test_shuffled_batches_cover_every_row_exactly_once(synth):
    data = load_split(synth, "synthetic", "train")
    seen = []
    for batch in batches(data, 256, shuffle=True, generator=torch.Generator().manual_seed(1)):
        assert batch.categorical.shape[1] == 16 and batch.numerical.shape[1] == 63
        seen.append(batch)
    got = torch.cat([b.numerical for b in seen])
    order = torch.cat([b.group for b in seen])
    assert len(got) == len(data)
    # Every row appears once: the multiset of rows equals the data's (rows sorted to compare).
    key = lambda x: np.lexsort(x.numpy().T[::-1])  # noqa: E731
    every = data.numerical
    np.testing.assert_array_equal(got.numpy()[key(got)], every.numpy()[key(every)])
    assert not torch.equal(order, data.group)      # actually shuffled


def test_coverage_order_and_last_partial_batch():
    data = _toy(1000)
    shuffled = list(batches(data, 300, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b) for b in shuffled] == [300, 300, 300, 100]
    ids = torch.cat([b.group for b in shuffled])
    assert torch.equal(ids.sort().values, torch.arange(1000))
    for b in shuffled:   # the columns of a batch stay row-aligned
        assert torch.equal(b.categorical[:, 0], 2 * b.group)
        assert torch.equal(b.numerical[:, 2], (3 * b.group + 2).float())
    plain = list(batches(data, 300, shuffle=False))
    assert [len(b) for b in plain] == [300, 300, 300, 100]
    assert torch.equal(torch.cat([b.group for b in plain]), torch.arange(1000))
    assert [len(b) for b in batches(data, 1000, shuffle=True)] == [1000]
    assert list(batches(_toy(0), 10, shuffle=True)) == []


def test_seeded_generator_makes_epochs_reproducible():
    data = _toy(500)
    order = lambda seed: torch.cat([b.group for b in batches(  # noqa: E731
        data, 64, shuffle=True, generator=torch.Generator().manual_seed(seed))])
    assert torch.equal(order(7), order(7))
    assert not torch.equal(order(7), order(8))
    gen = torch.Generator().manual_seed(7)   # one generator: each epoch a new order
    first = torch.cat([b.group for b in batches(data, 64, shuffle=True, generator=gen)])
    second = torch.cat([b.group for b in batches(data, 64, shuffle=True, generator=gen)])
    assert not torch.equal(first, second)


def test_slice_and_to():
    data = _toy(10)
    part = data.slice(torch.tensor([9, 0, 3]))
    assert part.group.tolist() == [9, 0, 3] and part.categorical[0].tolist() == [18, 19]
    moved = part.to("cpu")
    assert torch.equal(moved.numerical, part.numerical)


def test_side_file_rows_align_with_the_split(synth):
    for split in ("train", "val", "test"):
        side = load_side(synth, "synthetic", split)
        data = load_split(synth, "synthetic", split)
        assert set(side) == {"p_click", "p_click_genuine", "p_ctcvr", "genuine"}
        assert all(len(v) == len(data) for v in side.values())
        genuine = torch.from_numpy(side["genuine"].astype(np.float32))
        assert torch.all(genuine <= data.click)   # the same rows: a genuine click is a click


def test_errors_name_the_problem(synth, tmp_path):
    with pytest.raises(ConfigError, match="split"):
        load_split(synth, "synthetic", "dev")
    with pytest.raises(CacheError, match="preprocess"):
        load_split(tmp_path, "synthetic", "train")
    read = open_cache(synth, "synthetic")
    manifest = Manifest({**read, "columns": {**read["columns"], "click": "clicked"}}, read.dir)
    with pytest.raises(CacheError, match=r"lacks the columns \['clicked'\]"):
        load_split(synth, "synthetic", "test", manifest=manifest)
    with pytest.raises(ConfigError, match="batch-size"):
        next(batches(_toy(5), 0, shuffle=False))


@pytest.mark.parametrize("convert, values, shown", [
    ("int_values", np.array([1.0, 2.5]), "line 2, column c: 2.5 is not an integer id; fix"),
    ("int_values", np.array(["1", "x"], object), "line 2, column c: 'x' is not a number; expec"),
    ("int_values", np.array(["1", "99999999999999999999999"], object),
     "line 2, column c: 99999999999999999999999 is beyond the 64-bit integer range"),
    ("int_values", np.array(["1", "9.9e30"], object),
     "line 2, column c: 9.9e30 is beyond the 64-bit integer range"),
    ("int_values", np.array([1, 2 ** 63], np.uint64),
     "line 2, column c: 9223372036854775808 is beyond the 64-bit integer range"),
    ("float_values", np.array([0.5, np.inf]), "line 2, column c: inf is not a finite number"),
])
def test_bad_values_are_shown_as_written_not_as_numpy_reprs(convert, values, shown):
    from prlbench.data import csvio

    with pytest.raises(DataError) as err:
        getattr(csvio, convert)(values, lambda i: f"f.csv, line {i + 1}, column c")
    assert shown in str(err.value) and "np." not in str(err.value)


def test_all_training_rows_in_validation_is_named_as_such(tmp_path):
    """One search that the fixed hash puts into validation leaves train empty: the error says
    why instead of claiming no rows were read."""
    from prlbench.data.cache import validation_mask

    groups = np.arange(1000)
    sid = int(groups[validation_mask(groups)][0])
    schema = Schema(categorical=("user",), numerical=())
    cols = {"search_id": np.full(8, sid), "user": np.arange(8), "click": np.zeros(8, np.int8),
            "conversion": np.zeros(8, np.int8)}
    with pytest.raises(DataError, match="every training row fell into the validation split"):
        with CacheBuilder(tmp_path / "one", schema) as builder:
            builder.add("train", cols, source="one train")
            builder.add("test", cols, source="one test")
            builder.finish(dataset="one")
    assert list(tmp_path.iterdir()) == []


def _same(a: TensorData, b: TensorData) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f))
               for f in ("categorical", "numerical", "click", "conversion", "group"))


def test_the_column_cache_is_mapped_checked_and_rebuilt(tmp_path):
    """The first load writes columns/<split>.*.npy; the next maps them (a memmap: shared pages
    between processes) with the same values; a damaged file, or a Parquet file the manifest
    no longer describes, is never trusted: the columns are built again."""
    import shutil

    from prlbench.data import loader

    preprocess_synthetic(tmp_path, rows=3000, seed=5, progress=False)
    mapped_first = load_split(tmp_path, "synthetic", "train")
    # a copy: the mapping sees its file (a rebuild renames new files in, never writes in place)
    first = TensorData(**{f: getattr(mapped_first, f).clone() for f in
                          ("categorical", "numerical", "click", "conversion", "group")})
    cols = tmp_path / "synthetic" / loader.COLUMNS_DIR
    assert (cols / "train.json").is_file() and (cols / "train.categorical.npy").is_file()
    assert not list(cols.glob(".*.tmp"))  # no temporary file left
    manifest = open_cache(tmp_path, "synthetic")
    entry = manifest["splits"]["train"]
    mapped = loader._column_cache(manifest.path(entry), entry, manifest["columns"], "synthetic")
    assert all(isinstance(a, np.memmap) for a in mapped.values())
    again = load_split(tmp_path, "synthetic", "train")
    assert _same(first, again) and again.categorical.dtype == torch.int32
    # a flipped byte in a column file: detected (sha256), rebuilt, the values right
    target = cols / "train.numerical.npy"
    raw = bytearray(target.read_bytes())
    raw[-5] ^= 0xFF
    target.write_bytes(bytes(raw))
    assert _same(first, load_split(tmp_path, "synthetic", "train"))
    assert target.read_bytes() != bytes(raw)  # written again
    # an index that speaks of another Parquet file (another sha256): rebuilt, not trusted
    index = (cols / "train.json").read_text().replace(entry["sha256"], "0" * 64)
    (cols / "train.json").write_text(index)
    assert _same(first, load_split(tmp_path, "synthetic", "train"))
    assert entry["sha256"] in (cols / "train.json").read_text()
    # a planted link in place of the columns folder: refused, nothing written through it
    shutil.rmtree(cols)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cols.symlink_to(elsewhere)
    with pytest.raises(CacheError, match="symbolic link"):
        load_split(tmp_path, "synthetic", "train")
    assert list(elsewhere.iterdir()) == []
    cols.unlink()
    # a cache folder that cannot be written: read into memory, the same values
    (tmp_path / "synthetic").chmod(0o555)
    try:
        if not (cols.parent / "x").exists():  # root ignores permissions: nothing to test then
            try:
                (cols.parent / "x").touch()
                writable = True
                (cols.parent / "x").unlink()
            except OSError:
                writable = False
            if not writable:
                assert _same(first, load_split(tmp_path, "synthetic", "train"))
                assert not cols.exists()
    finally:
        (tmp_path / "synthetic").chmod(0o755)
