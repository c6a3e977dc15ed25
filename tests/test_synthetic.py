"""The synthetic data set: schema, determinism, calibrated rates, label logic, truth side file."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from conftest import SAMPLES
from prlbench.data.cache import SPLITS, aliexpress_schema, open_cache
from prlbench.data.preprocess import preprocess
from prlbench.data.synthetic import preprocess_synthetic
from prlbench.errors import ConfigError

SAMPLE = SAMPLES / "aliexpress_mtreclib_format" / "train.csv"
ROWS = 5000


def _make(root: Path, **kw) -> dict:
    return preprocess_synthetic(root, progress=False, **{"rows": ROWS, **kw})


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A 5,000-row synthetic cache (seed 0); returns its folder."""
    root = tmp_path_factory.mktemp("syn0")
    _make(root, seed=0)
    return root / "synthetic"


def _read(cache: Path, split: str, side: bool = False) -> pa.Table:
    return pq.read_table(cache / f"{split}{'.side' if side else ''}.parquet")


def _all(cache: Path, side: bool = False) -> pa.Table:
    return pa.concat_tables([_read(cache, s, side) for s in SPLITS])


def _contents(cache: Path) -> dict[str, pa.Table]:
    return {p.name: pq.read_table(p) for p in sorted(cache.glob("*.parquet"))}


def test_same_seed_same_data_other_seed_other_data(synth, tmp_path):
    again = _make(tmp_path / "again", seed=0)
    other = _make(tmp_path / "other", seed=1)
    first, second = _contents(synth), _contents(tmp_path / "again" / "synthetic")
    assert first.keys() == second.keys() and len(first) == 6
    assert all(first[k].equals(second[k]) for k in first)
    assert open_cache(synth.parent, "synthetic")["splits"] == again["splits"]   # same sha256
    third = _contents(tmp_path / "other" / "synthetic")
    assert not first["train.parquet"].equals(third["train.parquet"])
    assert other["splits"]["train"]["sha256"] != again["splits"]["train"]["sha256"]


def test_schema_is_processed_aliexpress(synth):
    schema = aliexpress_schema()
    for split in SPLITS:
        fields = _read(synth, split).schema
        assert fields.names == schema.columns()
        assert fields.field("search_id").type == pa.int64()
        assert {fields.field(c).type for c in schema.categorical} == {pa.int32()}
        assert {fields.field(c).type for c in schema.numerical} == {pa.float32()}
        assert fields.field("click").type == fields.field("conversion").type == pa.int8()
    if SAMPLE.exists():   # the real processed files' header, read from the shared sample
        with open(SAMPLE, newline="") as f:
            assert next(csv.reader(f)) == schema.columns()


def test_numericals_in_unit_interval_and_user_side_constant_per_search(synth):
    table = _read(synth, "train").to_pandas()
    nums = table[[f"numerical_{i}" for i in range(1, 64)]].to_numpy()
    assert nums.min() >= 0 and nums.max() <= 1 and (nums == 0).mean() > 0.05
    user = [f"categorical_{i}" for i in range(1, 10)] + [f"numerical_{i}" for i in range(1, 24)]
    assert (table.groupby("search_id")[user].nunique() == 1).all().all()
    item = table.groupby("search_id")["categorical_10"].nunique()
    assert item.mean() > 3   # item fields vary inside a search
    sizes = table.groupby("search_id").size()
    assert sizes.max() <= 20


def test_splits_have_disjoint_searches_and_the_documented_sizes(synth):
    manifest = open_cache(synth.parent, "synthetic")
    ids = {s: set(_read(synth, s).column("search_id").to_numpy().tolist()) for s in SPLITS}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    splits = manifest["splits"]
    assert splits["train"]["rows"] + splits["val"]["rows"] == ROWS
    assert splits["test"]["rows"] == ROWS // 4
    assert manifest["params"]["seed"] == 0 and manifest["params"]["noise_rate"] == 0.3


def test_realised_rates_match_the_flags(tmp_path):
    _make(tmp_path, rows=20_000, seed=3, click_rate=0.2, conversion_rate=0.3, noise_rate=0.4)
    cache = tmp_path / "synthetic"
    table, side = _all(cache), _all(cache, side=True)
    click = table.column("click").to_numpy().astype(bool)
    conv = table.column("conversion").to_numpy().astype(bool)
    genuine = side.column("genuine").to_numpy().astype(bool)
    assert click.mean() == pytest.approx(0.2, rel=0.06)
    assert conv.sum() / click.sum() == pytest.approx(0.3, rel=0.1)
    assert (click & ~genuine).sum() / click.sum() == pytest.approx(0.4, rel=0.1)
    # The expected rates (means of the true probabilities) are calibrated much more tightly.
    p_click = side.column("p_click").to_numpy()
    assert p_click.mean() == pytest.approx(0.2, rel=0.02)


def test_label_logic_conversions_only_on_genuine_clicks(synth):
    table, side = _all(synth), _all(synth, side=True)
    click = table.column("click").to_numpy().astype(bool)
    conv = table.column("conversion").to_numpy().astype(bool)
    genuine = side.column("genuine").to_numpy().astype(bool)
    assert not (conv & ~click).any()
    assert not (conv & ~genuine).any()           # noise clicks never convert
    assert not (genuine & ~click).any()          # a genuine click is a click
    assert (click & ~genuine).any() and conv.any()


def test_no_noise_rate_means_every_click_is_genuine(tmp_path):
    _make(tmp_path, seed=2, noise_rate=0.0, click_rate=0.2)
    cache = tmp_path / "synthetic"
    click = _all(cache).column("click").to_numpy()
    assert np.array_equal(click, _all(cache, side=True).column("genuine").to_numpy())


def test_side_file_is_aligned_and_explains_the_clicks(synth):
    manifest = open_cache(synth.parent, "synthetic")
    for split in SPLITS:
        side = _read(synth, split, side=True)
        assert side.num_rows == manifest["splits"][split]["rows"] == _read(synth, split).num_rows
        assert manifest["side_files"][split]["columns"] == side.column_names
    side = _all(synth, side=True)
    p_click, p_gen, p_ctcvr = (side.column(c).to_numpy() for c in
                               ("p_click", "p_click_genuine", "p_ctcvr"))
    assert np.all(p_ctcvr <= p_gen + 1e-7) and np.all(p_gen <= p_click + 1e-7)
    genuine = side.column("genuine").to_numpy()
    assert roc_auc_score(genuine, p_gen) > 0.6
    click = _all(synth).column("click").to_numpy()
    assert roc_auc_score(click, p_click) > 0.6


def test_truth_is_not_in_the_feature_columns(synth):
    table, side = _read(synth, "train"), _read(synth, "train", side=True)
    assert not set(side.column_names) & set(table.column_names)
    p_click = side.column("p_click").to_numpy().astype(np.float64)
    for name in aliexpress_schema().numerical + aliexpress_schema().categorical:
        col = table.column(name).to_numpy().astype(np.float64)
        if col.std() > 0:
            assert abs(np.corrcoef(col, p_click)[0, 1]) < 0.5, name


@pytest.mark.parametrize("flags, named", [
    ({"rows": 999}, "--rows"),
    ({"rows": 5000.0}, "--rows"),
    ({"seed": -1}, "--seed"),
    ({"click_rate": 0.0}, "--click-rate"),
    ({"click_rate": 1.0}, "--click-rate"),
    ({"conversion_rate": float("nan")}, "--conversion-rate"),
    ({"conversion_rate": 1.2}, "--conversion-rate"),
    ({"noise_rate": 1.5}, "--noise-rate"),
    ({"noise_rate": -0.1}, "--noise-rate"),
    ({"noise_rate": 0.5, "conversion_rate": 0.6}, "--conversion-rate"),
])
def test_bad_flags_raise_config_error_naming_the_flag(tmp_path, flags, named):
    with pytest.raises(ConfigError, match=named):
        preprocess_synthetic(tmp_path, progress=False, **flags)
    assert not (tmp_path / "synthetic").exists()


def test_chunked_generation_keeps_searches_whole_and_ids_unique(tmp_path, monkeypatch):
    monkeypatch.setattr("prlbench.data.synthetic.CHUNK_ROWS", 1500)
    manifest = _make(tmp_path, rows=4000, seed=4)
    cache = tmp_path / "synthetic"
    assert manifest["splits"]["train"]["rows"] + manifest["splits"]["val"]["rows"] == 4000
    assert manifest["splits"]["test"]["rows"] == 1000
    table = _all(cache).to_pandas()
    user = [f"categorical_{i}" for i in range(1, 10)] + [f"numerical_{i}" for i in range(1, 24)]
    assert (table.groupby("search_id")[user].nunique() == 1).all().all()
    realised = manifest["params"]["realised_train"]
    assert realised["click_rate"] == pytest.approx(
        (manifest["splits"]["train"]["clicks"] + manifest["splits"]["val"]["clicks"]) / 4000)


def test_staging_left_by_a_killed_preprocess_is_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".synthetic.staging-{dead.pid}-x1"
    live = tmp_path / f".synthetic.staging-{os.getpid()}-x2"  # a run still going: left alone
    other = tmp_path / f".aliccp.staging-{dead.pid}-x3"        # another data set's: left alone
    for p in (stale, live, other):
        (p / "final").mkdir(parents=True)
    preprocess("synthetic", tmp_path, progress=False, rows=2000)
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "synthetic" / "manifest.json").exists()


@pytest.mark.slow
def test_sigterm_during_preprocess_leaves_nothing(tmp_path):
    """SIGTERM unwinds like Ctrl-C: exit 130 and no staging folder, no half-written cache."""
    proc = subprocess.Popen([sys.executable, "-m", "prlbench", "preprocess", "synthetic",
                             "--rows", "3000000", "--data-dir", str(tmp_path), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".synthetic.staging-*/*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".synthetic.staging-*/*")), "staging never started"
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "interrupted: nothing was written; rerun the same command" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_second_preprocess_of_the_same_data_set_waits_for_the_first(tmp_path):
    """One download or preprocess of a data set at a time: the second says it waits, then
    runs; no lock file is left behind."""
    from prlbench.data.cache import dataset_lock

    with dataset_lock(tmp_path, "synthetic"):
        proc = subprocess.Popen([sys.executable, "-m", "prlbench", "preprocess", "synthetic",
                                 "--rows", "2000", "--data-dir", str(tmp_path), "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stderr.readline()  # blocks until the second process reaches the lock
        assert "waiting for another prlbench download or preprocess" in line
        time.sleep(0.3)
        assert not (tmp_path / "synthetic").exists() and proc.poll() is None
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert (tmp_path / "synthetic" / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_raw_downloads_in_a_killed_swaps_old_folder_are_put_back(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stranded = tmp_path / f".synthetic.old-{dead.pid}-x1"
    (stranded / "raw").mkdir(parents=True)
    (stranded / "raw" / "archive.zip").write_bytes(b"keep me")
    preprocess("synthetic", tmp_path, progress=False, rows=2000)
    assert (tmp_path / "synthetic" / "raw" / "archive.zip").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_a_symlinked_cache_folder_is_rebuilt_where_it_points(tmp_path):
    elsewhere = tmp_path / "big" / "synthetic"
    elsewhere.mkdir(parents=True)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "synthetic").symlink_to(elsewhere)
    for seed in (0, 1):
        preprocess("synthetic", tmp_path / "d", progress=False, rows=2000, seed=seed)
    assert (tmp_path / "d" / "synthetic").is_symlink()
    assert open_cache(tmp_path / "d", "synthetic")["params"]["seed"] == 1
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["synthetic"]


def test_a_swap_killed_between_its_renames_keeps_the_raw_downloads(tmp_path):
    """Killed after the old cache moved aside and raw/ moved into the new one: the next
    preprocess puts the old cache back and raw/ with it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = tmp_path / f".synthetic.old-{dead.pid}-x1"
    (old / "old-cache-file").parent.mkdir(parents=True)
    (old / "old-cache-file").write_text("old")
    staged_raw = tmp_path / f".synthetic.staging-{dead.pid}-x2" / "final" / "raw"
    staged_raw.mkdir(parents=True)
    (staged_raw / "archive.zip").write_bytes(b"keep me")
    preprocess("synthetic", tmp_path, progress=False, rows=2000)
    assert (tmp_path / "synthetic" / "raw" / "archive.zip").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_preprocess_waits_for_a_download_before_reading_its_inputs(tmp_path):
    """The lock is taken before the raw files are looked for, also through a symlinked
    cache folder (download and preprocess lock the same file)."""
    import threading

    from prlbench.data.cache import dataset_lock

    (tmp_path / "big" / "store").mkdir(parents=True)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "synthetic").symlink_to(tmp_path / "big" / "store")
    result = []
    with dataset_lock(tmp_path / "d", "synthetic"):
        t = threading.Thread(target=lambda: result.append(
            preprocess("synthetic", tmp_path / "d", progress=False, rows=2000)))
        t.start()
        time.sleep(0.5)
        assert t.is_alive() and not result  # waiting, not failing
    t.join(timeout=60)
    assert result and (tmp_path / "big" / "store" / "manifest.json").exists()


def test_two_links_to_one_store_share_its_lock(tmp_path):
    import threading

    from prlbench.data.cache import dataset_lock

    store = tmp_path / "big" / "store"
    store.mkdir(parents=True)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "synthetic").symlink_to(store)
    entered = []
    with dataset_lock(tmp_path / "a", "synthetic"):
        t = threading.Thread(target=lambda: entered.append(
            dataset_lock(tmp_path / "b", "synthetic").__enter__()))
        t.start()
        time.sleep(0.3)
        assert t.is_alive() and not entered
    t.join(timeout=10)
    assert entered


def test_a_killed_swap_beside_a_symlinked_cache_is_undone_too(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "big").mkdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "synthetic").symlink_to(tmp_path / "big" / "store")  # dangling for now
    staged_raw = tmp_path / "big" / f".store.staging-{dead.pid}-x" / "final" / "raw"
    staged_raw.mkdir(parents=True)
    (staged_raw / "archive.zip").write_bytes(b"keep me")
    preprocess("synthetic", tmp_path / "d", progress=False, rows=2000)
    assert (tmp_path / "big" / "store" / "raw" / "archive.zip").read_bytes() == b"keep me"
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["store"]


@pytest.mark.parametrize("damage", ["killed_swap", "killed_swap_no_manifest", "no_manifest"])
def test_first_use_never_generates_over_the_users_cache(tmp_path, damage):
    """train / compare build the default data set only when there is no cache at all: a cache
    moved aside by a swap killed between its renames is put back, and a cache without its
    manifest is an error, never replaced by the default data."""
    from prlbench.data.preprocess import ensure_generated
    from prlbench.errors import CacheError

    preprocess("synthetic", tmp_path, progress=False, rows=4000, seed=3)
    cache = tmp_path / "synthetic"
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    if damage != "killed_swap":
        (cache / "manifest.json").unlink()
    if damage != "no_manifest":  # as _swap_into_place leaves it: .synthetic.old-<pid>-<random>
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        cache.rename(tmp_path / f".synthetic.old-{dead.pid}-k2j4x_9a")
    if damage == "killed_swap":
        ensure_generated(tmp_path, "synthetic", progress=False)
        params = open_cache(tmp_path, "synthetic")["params"]
        assert (params["rows"], params["seed"]) == (4000, 3)
    else:
        with pytest.raises(CacheError, match=r"synthetic has no manifest\.json.*prlbench "
                           r"preprocess synthetic"):
            ensure_generated(tmp_path, "synthetic", progress=False)
        before.pop("manifest.json")
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_first_use_generates_the_default_data_set_when_there_is_none(tmp_path):
    from prlbench.data.preprocess import ensure_generated

    ensure_generated(tmp_path / "d", "synthetic", progress=False)
    assert open_cache(tmp_path / "d", "synthetic")["dataset"] == "synthetic"
