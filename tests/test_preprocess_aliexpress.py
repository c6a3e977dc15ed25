"""AliExpress preprocessing: raw nested zips and MTReclib's CSVs -> the Parquet cache.

Expected outputs are computed here in plain Python straight from DATASETS.md (join on
user_1 == item_1, the column lists, the label mapping, a train-only sorted vocabulary).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prlbench.data import aliexpress
from prlbench.data.cache import open_cache
from prlbench.errors import CacheError, ConfigError, DataError, DownloadError

U_CAT = [2, 3, 4, 5, 6, 7, 8, 32, 33]
I_CAT = [19, 34, 35, 36, 40, 41, 42]
I_NUM = [c for c in range(2, 49) if c not in I_CAT]
CAT = [f"categorical_{i}" for i in range(1, 17)]
NUM = [f"numerical_{i}" for i in range(1, 64)]


def preprocess_aliexpress(*args, max_unmatched=0.5, **kw):
    """The fixture's orphan search (id 9999) is ~3 of ~22 item rows, far over the default
    limit; the test of that limit passes its own."""
    return aliexpress.preprocess_aliexpress(*args, max_unmatched=max_unmatched, **kw)


def joined(raw, split):
    """(search_id, raw categorical ids [16], numericals [63], click, conversion) per output row."""
    users: dict[int, list] = {}
    for u in raw.users[split]:
        users.setdefault(int(u[0]), []).append(u)
    rows = []
    for it in raw.items[split]:
        for u in users.get(int(it[0]), []):
            cat = [int(u[c - 1]) for c in U_CAT] + [int(it[c - 1]) for c in I_CAT]
            num = [float(u[c - 1]) for c in range(9, 32)] + [float(it[c - 1]) for c in I_NUM]
            label = int(it[48])
            rows.append((int(it[0]), cat, num, int(label >= 1), int(label == 2)))
    return rows


def read(cache):
    return {s: pd.read_parquet(cache / f"{s}.parquet") for s in ("train", "val", "test")}


def check_cache(cache, raw, manifest):
    """Every output row against the independent join, codes against the train vocabulary."""
    frames = read(cache)
    val_ids = set(frames["val"].search_id)
    assert val_ids and not val_ids & set(frames["train"].search_id)
    all_train = joined(raw, "train")
    expected = {"train": [r for r in all_train if r[0] not in val_ids],
                "val": [r for r in all_train if r[0] in val_ids], "test": joined(raw, "test")}
    vocab = [sorted({r[1][j] for r in expected["train"]}) for j in range(16)]
    for split, rows in expected.items():
        df = frames[split]
        assert len(df) == len(rows) == manifest["splits"][split]["rows"]
        assert df.search_id.dtype == np.int64 and (df[CAT].dtypes == np.int32).all()
        assert (df[NUM].dtypes == np.float32).all() and df.click.dtype == np.int8
        assert df.conversion.dtype == np.int8
        codes = [[vocab[j].index(r[1][j]) + 1 if r[1][j] in vocab[j] else 0 for j in range(16)]
                 for r in rows]
        np.testing.assert_array_equal(df.search_id, [r[0] for r in rows])
        np.testing.assert_array_equal(df[CAT].to_numpy(), np.array(codes).reshape(-1, 16))
        np.testing.assert_array_equal(df[NUM].to_numpy(),
                                      np.array([r[2] for r in rows], np.float32).reshape(-1, 63))
        np.testing.assert_array_equal(df.click, [r[3] for r in rows])
        np.testing.assert_array_equal(df.conversion, [r[4] for r in rows])
        clicks = sum(r[3] for r in rows)
        assert manifest["splits"][split]["click_rate"] == pytest.approx(clicks / len(rows))
        assert manifest["splits"][split]["conversions"] == sum(r[4] for r in rows)
    assert manifest["vocab_sizes"] == {c: len(v) + 1 for c, v in zip(CAT, vocab)}
    return frames


@pytest.mark.parametrize("layout", ["outer", "outer_dir", "inner", "csv", "download"])
def test_raw_layouts_join_labels_and_codes(tmp_path, aliexpress_raw, raw_builders, layout):
    src = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "src", layout)
    manifest = preprocess_aliexpress(tmp_path / "d", country="nl", source=src, progress=False,
                                     chunk_rows=5)  # small chunks: a search spans several
    frames = check_cache(tmp_path / "d" / "aliexpress_nl", aliexpress_raw, manifest)
    assert manifest["columns"] == {"group": "search_id", "categorical": CAT, "numerical": NUM,
                                   "click": "click", "conversion": "conversion"}
    assert (frames["test"][CAT] == 0).to_numpy().any()  # ids unseen in train exist and map to 0
    orphans = sum(int(r[0]) == 9999 for r in aliexpress_raw.items["train"])
    assert manifest["params"]["join"]["train"]["items_without_user"] == orphans > 0
    assert manifest["params"]["source_format"] == "raw"
    for entry in manifest["inputs"]:
        data = open(entry["path"], "rb").read()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
    assert open_cache(tmp_path / "d", "aliexpress_nl")["dataset"] == "aliexpress_nl"


def test_default_source_and_odd_inner_names(tmp_path, aliexpress_raw, raw_builders):
    raw_dir = tmp_path / "d" / "aliexpress_nl" / "raw"
    raw_builders.write_aliexpress(aliexpress_raw, raw_dir, "inner", inner_name="{role}_part1")
    manifest = preprocess_aliexpress(tmp_path / "d", country="nl", progress=False)
    check_cache(tmp_path / "d" / "aliexpress_nl", aliexpress_raw, manifest)
    assert raw_dir.is_dir()  # the raw downloads survive preprocessing


def test_crlf_blank_lines_and_header_are_tolerated(tmp_path, aliexpress_raw, raw_builders):
    src = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "src", "csv")
    path = src / "nl_item_train.csv"
    head = ",".join(f"item_{i}" for i in range(1, 50))
    path.write_bytes(("\ufeff" + head + "\r\n" + path.read_text().replace("\n", "\r\n")
                      + "\r\n\n  \t \r\n \n").encode())  # blank, and whitespace-only, lines
    manifest = preprocess_aliexpress(tmp_path / "d", country="nl", source=src, progress=False)
    check_cache(tmp_path / "d" / "aliexpress_nl", aliexpress_raw, manifest)


def test_duplicate_user_rows_repeat_items_like_a_merge(tmp_path, aliexpress_raw, raw_builders):
    users = aliexpress_raw.users["train"]
    users.append(list(users[0][:1]) + ["3"] * 7 + users[0][8:])
    src = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "src", "csv")
    manifest = preprocess_aliexpress(tmp_path / "d", country="nl", source=src, progress=False,
                                     chunk_rows=4)
    check_cache(tmp_path / "d" / "aliexpress_nl", aliexpress_raw, manifest)
    assert manifest["params"]["join"]["train"]["duplicate_user_ids"] == 1


def write_processed(raw, folder):
    folder.mkdir()
    header = ["search_id", *CAT, *NUM, "click", "conversion"]
    for split in ("train", "test"):
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for sid, cat, num, click, conv in joined(raw, split):
                w.writerow([sid, *cat, *num, click, conv])


def test_mtreclib_processed_folder_matches_raw(tmp_path, aliexpress_raw, raw_builders):
    src = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "src", "outer")
    preprocess_aliexpress(tmp_path / "a", country="nl", source=src, progress=False)
    write_processed(aliexpress_raw, tmp_path / "mtreclib")
    manifest = preprocess_aliexpress(tmp_path / "b", country="nl", source=tmp_path / "mtreclib",
                                     progress=False)
    assert manifest["params"]["source_format"] == "processed"
    a, b = read(tmp_path / "a" / "aliexpress_nl"), read(tmp_path / "b" / "aliexpress_nl")
    for split in a:
        pd.testing.assert_frame_equal(a[split], b[split])


def test_processed_columns_in_any_order_give_the_same_cache(tmp_path, aliexpress_raw):
    write_processed(aliexpress_raw, tmp_path / "mtreclib")
    preprocess_aliexpress(tmp_path / "a", country="nl", source=tmp_path / "mtreclib",
                          progress=False)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        df = pd.read_csv(tmp_path / "mtreclib" / f"{split}.csv")
        df[list(rng.permutation(df.columns))].to_csv(shuffled / f"{split}.csv", index=False)
    manifest = preprocess_aliexpress(tmp_path / "b", country="nl", source=shuffled,
                                     progress=False)
    assert manifest["columns"]["categorical"] == CAT and manifest["columns"]["numerical"] == NUM
    a, b = read(tmp_path / "a" / "aliexpress_nl"), read(tmp_path / "b" / "aliexpress_nl")
    for split in a:
        pd.testing.assert_frame_equal(a[split], b[split])
    assert all(Path(e["path"]).is_absolute() for e in manifest["inputs"])


def test_shared_mtreclib_sample(tmp_path, raw_builders):
    sample = raw_builders.samples / "aliexpress_mtreclib_format"
    if not sample.is_dir():
        pytest.skip("shared samples absent")
    manifest = preprocess_aliexpress(tmp_path, country="us", source=sample, progress=False)
    for split, files in (("train", ("train", "val")), ("test", ("test",))):
        rows = list(csv.DictReader(open(sample / f"{split}.csv")))
        got = [manifest["splits"][f] for f in files]
        assert sum(g["rows"] for g in got) == len(rows)
        assert sum(g["clicks"] for g in got) == sum(int(float(r["click"])) for r in rows)
        assert sum(g["conversions"] for g in got) == sum(int(float(r["conversion"]))
                                                         for r in rows)
    frames = read(tmp_path / "aliexpress_us")
    train_ids = set(frames["train"].search_id)
    test_rows = list(csv.DictReader(open(sample / "test.csv")))
    seen = {int(r["categorical_6"]) for r in csv.DictReader(open(sample / "train.csv"))
            if int(r["search_id"]) in train_ids}
    unseen = [int(r["categorical_6"]) not in seen for r in test_rows]
    np.testing.assert_array_equal(frames["test"].categorical_6.to_numpy() == 0, unseen)


# ------------------------------------------------------------------------------ bad input
def _damage_item_columns(raw):
    raw.items["train"][3] = raw.items["train"][3][:-1]
    return "nl_item_train.csv, line 4", "48 columns"


def _damage_user_value(raw):
    raw.users["train"][2][10] = "abc"
    return "nl_user_train.csv, line 3", "'abc'"


def _damage_label(raw):
    raw.items["test"][1][48] = "3"
    return "nl_item_test.csv, line 2", "label 3"


def _damage_label_fraction(raw):
    raw.items["train"][2][48] = "1.5"
    return "nl_item_train.csv, line 3", "(item_49): 1.5 is not a label (0, 1 or 2)"


@pytest.mark.parametrize("damage", [_damage_item_columns, _damage_user_value, _damage_label,
                                    _damage_label_fraction])
def test_bad_raw_rows_name_file_and_line(tmp_path, aliexpress_raw, raw_builders, damage):
    where, what = damage(aliexpress_raw)
    src = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "src", "outer")
    with pytest.raises(DataError) as err:
        preprocess_aliexpress(tmp_path / "d", country="nl", source=src, progress=False)
    assert where in str(err.value) and what in str(err.value)
    assert list((tmp_path / "d").iterdir()) == []  # no cache, no staging left behind


def test_damaged_archive_is_a_data_error(tmp_path, aliexpress_raw, raw_builders):
    src = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "src", "inner")
    path = src / "nl_item_train.zip"
    data = bytearray(path.read_bytes())
    data[200:260] = bytes(60)  # inside the deflated CSV
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"nl_item_train\.zip/nl_item_train\.csv: the archive"):
        preprocess_aliexpress(tmp_path / "d", country="nl", source=src, progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_failure_leaves_previous_cache_unchanged(tmp_path, aliexpress_raw, raw_builders):
    good = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "good", "csv")
    preprocess_aliexpress(tmp_path / "d", country="nl", source=good, progress=False)
    cache = tmp_path / "d" / "aliexpress_nl"
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    _damage_label(aliexpress_raw)
    bad = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "bad", "csv")
    with pytest.raises(DataError, match="line 2"):
        preprocess_aliexpress(tmp_path / "d", country="nl", source=bad, progress=False)
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["aliexpress_nl"]


def test_missing_file_and_wrong_country(tmp_path, aliexpress_raw, raw_builders):
    src = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "src", "csv")
    (src / "nl_item_test.csv").unlink()
    with pytest.raises(DataError, match="nl_item_test"):
        preprocess_aliexpress(tmp_path / "d", country="nl", source=src, progress=False)
    with pytest.raises(DataError, match="another country.*nl_"):
        preprocess_aliexpress(tmp_path / "d", country="es", source=src, progress=False)
    with pytest.raises(DataError, match="does not exist"):
        preprocess_aliexpress(tmp_path / "d", country="nl", progress=False)
    assert not (tmp_path / "d").exists() or list((tmp_path / "d").iterdir()) == []


@pytest.mark.parametrize("labels, message", [
    (["0", "1"], r"train\.csv, line 6: conversion 1 with click 0"),
    (["1.5", "0"], r"train\.csv, line 6, column click: 1\.5 is not a label \(0 or 1\)"),
])
def test_processed_bad_labels(tmp_path, aliexpress_raw, labels, message):
    write_processed(aliexpress_raw, tmp_path / "m")
    lines = (tmp_path / "m" / "train.csv").read_text().splitlines()
    fields = lines[5].split(",")
    fields[-2:] = labels
    lines[5] = ",".join(fields)
    (tmp_path / "m" / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        preprocess_aliexpress(tmp_path / "d", country="nl", source=tmp_path / "m",
                              progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_tampered_cache_is_detected(tmp_path, aliexpress_raw, raw_builders):
    src = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "src", "csv")
    preprocess_aliexpress(tmp_path / "d", country="nl", source=src, progress=False)
    path = tmp_path / "d" / "aliexpress_nl" / "train.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="train.parquet"):
        open_cache(tmp_path / "d", "aliexpress_nl")


def test_checksums_are_verified_when_recorded(tmp_path, aliexpress_raw, raw_builders):
    pytest.importorskip("prlbench.data.download")
    raw_dir = tmp_path / "d" / "aliexpress_nl" / "raw"
    raw_builders.write_aliexpress(aliexpress_raw, raw_dir, "outer_dir")
    name = "aliexpress_NL_datasets.zip"
    data = (raw_dir / name).read_bytes()
    records = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                      "source": "test"}}
    (raw_dir / "checksums.json").write_text(json.dumps(records))
    manifest = preprocess_aliexpress(tmp_path / "d", country="nl", progress=False)
    assert manifest["params"]["checksums_verified"] is True
    (raw_dir / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(DownloadError):
        preprocess_aliexpress(tmp_path / "d", country="nl", progress=False)


def test_items_without_user_over_the_limit(tmp_path, aliexpress_raw, raw_builders):
    src = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "src", "csv")
    orphans = sum(int(r[0]) == 9999 for r in aliexpress_raw.items["train"])
    first = 1 + next(i for i, r in enumerate(aliexpress_raw.items["train"]) if int(r[0]) == 9999)
    n = len(aliexpress_raw.items["train"])
    with pytest.raises(DataError, match=rf"nl_item_train.csv, line {first}: the search id is not "
                       rf"in the train user file \({orphans} of {n} rows.*--max-unmatched 0\.\d+"):
        aliexpress.preprocess_aliexpress(tmp_path / "d", country="nl", source=src,
                                         progress=False)
    assert list((tmp_path / "d").iterdir()) == []  # no cache, no staging left behind
    share = max(sum(int(r[0]) == 9999 for r in aliexpress_raw.items[s])
                / len(aliexpress_raw.items[s]) for s in ("train", "test"))
    with pytest.raises(DataError, match="unmatched"):  # the limit is a limit, not a floor
        preprocess_aliexpress(tmp_path / "d", country="nl", source=src, progress=False,
                              max_unmatched=share * 0.99)
    manifest = preprocess_aliexpress(tmp_path / "d", country="nl", source=src, progress=False,
                                     max_unmatched=share)
    assert manifest["params"]["max_unmatched"] == share
    assert manifest["params"]["join"]["train"]["items_without_user"] == orphans


def test_empty_test_split_is_an_error(tmp_path, aliexpress_raw, raw_builders):
    aliexpress_raw.items["test"] = [r for r in aliexpress_raw.items["test"]
                                    if int(r[0]) == -12345]
    src = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "src", "csv")
    with pytest.raises(DataError, match=r"the test split is empty \(its input held no rows: "
                       r".*nl_item_test\.csv"):
        preprocess_aliexpress(tmp_path / "d", country="nl", source=src, progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_source_inside_the_cache_folder_is_refused(tmp_path, aliexpress_raw, raw_builders):
    """The cache folder is replaced as a whole; a source inside it (raw/ aside) would be lost."""
    from prlbench.data.preprocess import preprocess
    src = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "d" / "aliexpress_nl" / "mine",
                                        "csv")
    before = sorted(p.name for p in src.iterdir())
    with pytest.raises(ConfigError, match=r"inside the cache folder .*move the files out"):
        preprocess("aliexpress_nl", tmp_path / "d", source=src, progress=False)
    assert sorted(p.name for p in src.iterdir()) == before


def test_failed_swap_puts_the_old_cache_and_raw_back(tmp_path, aliexpress_raw, raw_builders,
                                                     monkeypatch):
    from prlbench.data import cache as cache_mod
    raw_dir = tmp_path / "d" / "aliexpress_nl" / "raw"
    raw_builders.write_aliexpress(aliexpress_raw, raw_dir, "inner")
    preprocess_aliexpress(tmp_path / "d", country="nl", progress=False)
    cache = tmp_path / "d" / "aliexpress_nl"
    before = {p.relative_to(cache).as_posix(): p.read_bytes() for p in cache.rglob("*")
              if p.is_file()}
    real, calls = cache_mod.os.replace, []

    def failing(src, dst):
        if Path(dst) == cache and not calls:  # the rename of the new cache into place
            calls.append(src)
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", failing)
    with pytest.raises(OSError, match="No space"):
        preprocess_aliexpress(tmp_path / "d", country="nl", progress=False)
    monkeypatch.undo()
    after = {p.relative_to(cache).as_posix(): p.read_bytes() for p in cache.rglob("*")
             if p.is_file()}
    assert after == before
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["aliexpress_nl"]


@pytest.mark.parametrize("drop, message", [
    (["numerical_5"], "line 1: missing column numerical_5; expected MTReclib's header"),
    ([f"numerical_{i}" for i in range(1, 8)], "missing columns numerical_1, numerical_2, "
                                              "numerical_3, numerical_4, numerical_5 and 2 more"),
    (["categorical_16"], "missing column categorical_16"),
])
def test_processed_csv_missing_a_feature_column_is_refused(tmp_path, aliexpress_raw, drop,
                                                          message):
    write_processed(aliexpress_raw, tmp_path / "m")
    for split in ("train", "test"):
        path = tmp_path / "m" / f"{split}.csv"
        pd.read_csv(path).drop(columns=drop).to_csv(path, index=False)
    with pytest.raises(DataError, match=re.escape(message)):
        preprocess_aliexpress(tmp_path / "d", country="nl", source=tmp_path / "m",
                              progress=False)
    assert not (tmp_path / "d").exists() or list((tmp_path / "d").iterdir()) == []


def test_a_processed_folder_without_test_csv_names_test_csv(tmp_path, aliexpress_raw):
    write_processed(aliexpress_raw, tmp_path / "m")
    (tmp_path / "m" / "test.csv").unlink()
    with pytest.raises(DataError, match=r"missing test\.csv \(expected") as err:
        preprocess_aliexpress(tmp_path / "d", country="nl", source=tmp_path / "m",
                              progress=False)
    assert "nl_user_train" not in str(err.value).split("(expected")[0]


def test_a_killed_swap_is_undone_before_the_raw_files_are_looked_for(tmp_path, aliexpress_raw,
                                                                     raw_builders):
    import subprocess
    import sys

    from prlbench.data.preprocess import preprocess

    raw_dir = tmp_path / "d" / "aliexpress_nl" / "raw"
    raw_builders.write_aliexpress(aliexpress_raw, raw_dir, "inner")
    preprocess("aliexpress_nl", tmp_path / "d", progress=False, max_unmatched=0.5)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # killed right after moving the old cache aside:
    (tmp_path / "d" / "aliexpress_nl").rename(tmp_path / "d" / f".aliexpress_nl.old-{dead.pid}-x")
    manifest = preprocess("aliexpress_nl", tmp_path / "d", progress=False, max_unmatched=0.5)
    check_cache(tmp_path / "d" / "aliexpress_nl", aliexpress_raw, manifest)
    assert raw_dir.is_dir() and sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "aliexpress_nl"]


@pytest.mark.parametrize("layout", ["outer", "download"])
def test_an_archive_renamed_to_another_country_is_refused(tmp_path, raw_builders, layout):
    """A Spanish archive saved under the Dutch name (inner names es_*) must not build the NL
    cache: the country comes from the inner names, not from the name the user gave the file."""
    es = raw_builders.aliexpress_rows(seed=1)
    es.country = "es"
    src = raw_builders.write_aliexpress(es, tmp_path / "src", layout)
    outer = tmp_path / "src" / "aliexpress_ES_datasets.zip"
    renamed = outer.with_name("aliexpress_NL_datasets.zip")
    outer.rename(renamed)
    if layout == "outer":
        src = renamed
    else:  # the folder holds only the renamed archive
        import shutil
        shutil.rmtree(tmp_path / "src" / "aliexpress_ES_datasets")
    with pytest.raises(DataError) as err:
        preprocess_aliexpress(tmp_path / "d", country="nl", source=src, progress=False)
    msg = str(err.value)
    assert "aliexpress_NL_datasets.zip" in msg and "holds ES data" in msg, msg
    assert "prlbench preprocess aliexpress_es" in msg, msg
    assert not (tmp_path / "d" / "aliexpress_nl").exists()


def test_an_inner_zip_with_a_duplicate_entry_is_refused(tmp_path, aliexpress_raw,
                                                        raw_builders):
    import warnings
    import zipfile

    src = raw_builders.write_aliexpress(aliexpress_raw, tmp_path / "src", "inner")
    path = src / "nl_item_test.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as zf:
        warnings.simplefilter("ignore")  # zipfile warns "Duplicate name"
        zf.writestr("nl_item_test.csv", b"not,the,rows\n")
    with pytest.raises(DataError, match=r"nl_item_test\.zip: two entries named "
                       r"'nl_item_test\.csv'"):
        preprocess_aliexpress(tmp_path / "d", country="nl", source=src, progress=False)
    assert not (tmp_path / "d").exists()
