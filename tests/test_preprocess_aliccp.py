"""Ali-CCP preprocessing: raw skeleton + common features (AITM) and processed CSV folders.

Expected outputs are computed here in plain Python from the structured rows the fixture wrote:
the join by common feature index, first occurrence of each kept field (skeleton, then common
features, else -1), AITM's drop of purchase-without-click rows, a train-only vocabulary with
min_count 10, and search_id = blake2b-64 of the index.
"""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pandas as pd
import pytest

from prlbench.data.aliccp import preprocess_aliccp
from prlbench.data.cache import open_cache
from prlbench.errors import CacheError, ConfigError, DataError


def blake(index: str) -> int:
    return int.from_bytes(hashlib.blake2b(index.encode(), digest_size=8).digest(), "little",
                          signed=True)


def expected_rows(raw, kept, split):
    """(search_id, [18 raw ids], click, purchase) of every row AITM keeps, in file order."""
    common = {}
    for index, feats in raw.common[split]:
        common.setdefault(index, feats)
    rows = []
    for _, click, purchase, index, feats in raw.skeleton[split]:
        if click == 0 and purchase == 1:
            continue
        ids = []
        for f in kept:
            own = [i for g, i, _ in feats if g == f]
            com = [i for g, i, _ in common[index] if g == f]
            ids.append(own[0] if own else com[0] if com else -1)
        rows.append((blake(index), ids, click, purchase))
    return rows


def check_cache(cache, raw, kept, manifest):
    frames = {s: pd.read_parquet(cache / f"{s}.parquet") for s in ("train", "val", "test")}
    cat = [f"f{f}" for f in kept]
    val_ids = set(frames["val"].search_id)
    assert val_ids and not val_ids & set(frames["train"].search_id)
    all_train = expected_rows(raw, kept, "train")
    expected = {"train": [r for r in all_train if r[0] not in val_ids],
                "val": [r for r in all_train if r[0] in val_ids],
                "test": expected_rows(raw, kept, "test")}
    vocab = []
    for j in range(len(kept)):
        ids, counts = np.unique([r[1][j] for r in expected["train"]], return_counts=True)
        vocab.append(list(ids[counts > 10]))
    for split, rows in expected.items():
        df = frames[split]
        assert list(df.columns) == ["search_id", *cat, "click", "conversion"]
        assert len(df) == len(rows) == manifest["splits"][split]["rows"]
        assert (df[cat].dtypes == np.int32).all() and df.click.dtype == np.int8
        codes = [[vocab[j].index(r[1][j]) + 1 if r[1][j] in vocab[j] else 0
                  for j in range(len(kept))] for r in rows]
        np.testing.assert_array_equal(df.search_id, [r[0] for r in rows])
        np.testing.assert_array_equal(df[cat].to_numpy(), np.array(codes))
        np.testing.assert_array_equal(df.click, [r[2] for r in rows])
        np.testing.assert_array_equal(df.conversion, [r[3] for r in rows])
        assert manifest["splits"][split]["ctcvr_rate"] == pytest.approx(
            sum(r[3] for r in rows) / len(rows))
    assert manifest["vocab_sizes"] == {c: len(v) + 1 for c, v in zip(cat, vocab)}
    return frames


def test_raw_join_drop_and_rare_ids(tmp_path, aliccp_raw, raw_builders):
    src = raw_builders.write_aliccp(aliccp_raw, tmp_path / "src")
    manifest = preprocess_aliccp(tmp_path / "d", source=src, progress=False, chunk_rows=37)
    frames = check_cache(tmp_path / "d" / "aliccp", aliccp_raw, raw_builders.kept, manifest)
    assert manifest["columns"]["numerical"] == [] and manifest["has_groups"] is True
    assert manifest["vocabulary"]["min_count"] == 10
    dropped = sum(c == 0 and p == 1 for _, c, p, _, _ in aliccp_raw.skeleton["train"])
    assert manifest["params"]["read"]["train"]["purchase_without_click"] == dropped > 0
    codes = frames["train"][[f"f{f}" for f in raw_builders.kept]].to_numpy()
    assert (codes == 0).any() and (codes > 0).any()  # both rare and kept ids occur


def test_raw_cache_loads_with_no_numerical_columns(tmp_path, aliccp_raw, raw_builders):
    loader = pytest.importorskip("prlbench.data.loader")
    src = raw_builders.write_aliccp(aliccp_raw, tmp_path / "src")
    manifest = preprocess_aliccp(tmp_path / "d", source=src, progress=False)
    data = loader.load_split(tmp_path / "d", "aliccp", "train")
    assert tuple(data.numerical.shape) == (manifest["splits"]["train"]["rows"], 0)
    assert data.categorical.shape[1] == 18


def test_header_crlf_and_zip_are_tolerated(tmp_path, aliccp_raw, raw_builders):
    import zipfile
    src = raw_builders.write_aliccp(aliccp_raw, tmp_path / "src")
    skel = src / "sample_skeleton_train.csv"
    skel.write_bytes(b"sample_id,click,purchase,index,count,features\r\n"
                     + skel.read_bytes().replace(b"\n", b"\r\n") + b"\r\n")
    with zipfile.ZipFile(tmp_path / "aliccp.zip", "w") as zf:
        for p in src.iterdir():
            zf.write(p, f"sample_train/{p.name}")
    manifest = preprocess_aliccp(tmp_path / "d", source=tmp_path / "aliccp.zip", progress=False)
    check_cache(tmp_path / "d" / "aliccp", aliccp_raw, raw_builders.kept, manifest)


def test_few_missing_common_features_are_dropped(tmp_path, raw_builders):
    raw = raw_builders.aliccp_rows(n_train=1200, n_test=20)
    sid, click, purchase, _, feats = raw.skeleton["train"][7]
    raw.skeleton["train"][7] = (sid, click, 0, "ffffffffffffffff", feats)
    src = raw_builders.write_aliccp(raw, tmp_path / "src")
    manifest = preprocess_aliccp(tmp_path / "d", source=src, progress=False)
    del raw.skeleton["train"][7]
    check_cache(tmp_path / "d" / "aliccp", raw, raw_builders.kept, manifest)
    assert manifest["params"]["read"]["train"]["missing_common_features"] == 1


# ------------------------------------------------------------------------------ bad input
def _skeleton_line(raw, k, **change):
    sid, click, purchase, index, feats = raw.skeleton["train"][k]
    fields = dict(sid=sid, click=click, purchase=purchase, index=index, feats=feats)
    fields.update(change)
    raw.skeleton["train"][k] = tuple(fields.values())


@pytest.mark.parametrize("damage, message", [
    (dict(click="x"), "line 6, column 2 (click): 'x' is not a number; expected a label (0 or 1)"),
    (dict(purchase=2, click=1), "line 6, column 3 (purchase): purchase = 2"),
    (dict(index="ffffffffffffffff"), "line 6: common feature index 'ffffffffffffffff' is not"),
    (dict(feats=[("205", 7, "1.0"), ("206", 8, "x")]), None),  # a bad value is not an id: ok
])
def test_bad_skeleton_values(tmp_path, aliccp_raw, raw_builders, damage, message):
    _skeleton_line(aliccp_raw, 5, **damage)
    src = raw_builders.write_aliccp(aliccp_raw, tmp_path / "src")
    if message is None:
        preprocess_aliccp(tmp_path / "d", source=src, progress=False)
        return
    with pytest.raises(DataError) as err:
        preprocess_aliccp(tmp_path / "d", source=src, progress=False)
    assert "sample_skeleton_train.csv, " + message in str(err.value)
    assert list((tmp_path / "d").iterdir()) == []


def test_wrong_field_count_and_malformed_feature(tmp_path, aliccp_raw, raw_builders):
    src = raw_builders.write_aliccp(aliccp_raw, tmp_path / "src")
    path = src / "sample_skeleton_test.csv"
    lines = path.read_text().split("\n")
    good = list(lines)
    lines[2] = lines[2].split(",", 1)[1]  # the sample id is gone: 5 columns
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"sample_skeleton_test\.csv, line 3: 5 columns"):
        preprocess_aliccp(tmp_path / "d", source=src, progress=False)
    good[4] = good[4].replace("\x02", "", 1)
    path.write_text("\n".join(good))
    with pytest.raises(DataError, match=r"sample_skeleton_test\.csv, line 5, column 6 .*\\x02"):
        preprocess_aliccp(tmp_path / "d", source=src, progress=False)
    common = src / "common_features_train.csv"
    common.write_text(common.read_text().replace("\x02", "\x02z", 1))
    with pytest.raises(DataError, match=r"common_features_train\.csv, line 1, .*'z\d+'"):
        preprocess_aliccp(tmp_path / "d", source=src, progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_missing_file_keeps_previous_cache(tmp_path, aliccp_raw, raw_builders):
    src = raw_builders.write_aliccp(aliccp_raw, tmp_path / "src")
    preprocess_aliccp(tmp_path / "d", source=src, progress=False)
    cache = tmp_path / "d" / "aliccp"
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    (src / "common_features_test.csv").unlink()
    with pytest.raises(DataError, match="common_features_test.csv"):
        preprocess_aliccp(tmp_path / "d", source=src, progress=False)
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    with pytest.raises(ConfigError):
        preprocess_aliccp(tmp_path / "d", source=src, progress=False, variant="rich")
    (cache / "test.parquet").write_bytes(b"x" + (cache / "test.parquet").read_bytes()[1:])
    with pytest.raises(CacheError, match="test.parquet"):
        open_cache(tmp_path / "d", "aliccp")


# ------------------------------------------------------------------------- processed CSVs
def _shared_sample(raw_builders):
    sample = raw_builders.samples / "aliccp_rechub_format"
    if not sample.is_dir():
        pytest.skip("shared samples absent")
    return sample


def test_shared_processed_sample(tmp_path, raw_builders):
    sample = _shared_sample(raw_builders)
    manifest = preprocess_aliccp(tmp_path, source=sample, progress=False)
    header = next(csv.reader(open(sample / "train.csv")))
    dense = [c for c in header if c.startswith("D")]
    sparse = [c for c in header if c not in dense and c not in ("click", "purchase")]
    assert manifest["columns"]["categorical"] == [f"f{c}" for c in sparse]
    assert manifest["columns"]["numerical"] == dense and manifest["has_groups"] is False
    assert manifest["validation"] == {"given_by_source": True}
    train = list(csv.DictReader(open(sample / "train.csv")))
    for split in ("train", "val", "test"):
        rows = list(csv.DictReader(open(sample / f"{split}.csv")))
        got = manifest["splits"][split]
        assert got["rows"] == len(rows)
        assert got["clicks"] == sum(int(r["click"]) for r in rows)
        assert got["conversions"] == sum(int(r["purchase"]) for r in rows)
        df = pd.read_parquet(tmp_path / "aliccp" / f"{split}.parquet")
        vocab = sorted({int(r["205"]) for r in train})
        np.testing.assert_array_equal(
            df.f205, [vocab.index(int(r["205"])) + 1 if int(r["205"]) in vocab else 0
                      for r in rows])
        np.testing.assert_array_equal(df.D508, np.array([float(r["D508"]) for r in rows],
                                                        np.float32))


def test_processed_folder_without_val_drops_purchase_without_click(tmp_path, raw_builders):
    sample = _shared_sample(raw_builders)
    (tmp_path / "p").mkdir()
    lines = (sample / "train.csv").read_text().splitlines()
    lines[3] = "0,1" + lines[3][3:]
    (tmp_path / "p" / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "p" / "test.csv").write_text((sample / "test.csv").read_text())
    manifest = preprocess_aliccp(tmp_path / "d", source=tmp_path / "p", progress=False)
    assert manifest["params"]["read"]["train"]["purchase_without_click"] == 1
    assert manifest["splits"]["train"]["rows"] + manifest["splits"]["val"]["rows"] == 99
    assert manifest["validation"]["by"] == "row"
    lines[5] = "1,1,abc" + lines[5][5:]
    (tmp_path / "p" / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.csv, line 6, column 101: 'abc'"):
        preprocess_aliccp(tmp_path / "d", source=tmp_path / "p", progress=False)


def test_an_aliexpress_folder_is_named_as_such(tmp_path):
    """MTReclib's processed AliExpress CSVs given to aliccp: say what they are."""
    folder = tmp_path / "mtreclib"
    folder.mkdir()
    head = ["search_id", *(f"categorical_{i}" for i in range(1, 17)),
            *(f"numerical_{i}" for i in range(1, 64)), "click", "conversion"]
    for split in ("train", "test"):
        (folder / f"{split}.csv").write_text(",".join(head) + "\n" + ",".join(
            ["1"] * len(head)) + "\n")
    with pytest.raises(DataError, match=r"train\.csv, line 1: columns \['search_id'|"
                       r"train\.csv, line 1: columns \['categorical_1'") as err:
        preprocess_aliccp(tmp_path / "d", source=folder, progress=False)
    assert "preprocess aliexpress_XX" in str(err.value)
    assert not (tmp_path / "d" / "aliccp").exists()


def test_a_processed_csv_without_header_is_named(tmp_path, raw_builders):
    sample = _shared_sample(raw_builders)
    (tmp_path / "p").mkdir()
    for split in ("train", "test"):
        lines = (sample / f"{split}.csv").read_text().splitlines()[1:]
        (tmp_path / "p" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.csv, line 1: this line holds numbers, not "
                       "column names"):
        preprocess_aliccp(tmp_path / "d", source=tmp_path / "p", progress=False)
