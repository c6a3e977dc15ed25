"""KuaiRand-Pure: download (loopback HTTP, md5), preprocessing, leak guard, bad input, training.

The raw files come from `_kuairand_fixture.write_kuairand` (the real archive's layout, with the
real sample rows mixed in where the samples folder is present). Expected outputs are computed
here with pandas from the written files, following the documented rules: dedup per file (first
occurrence kept), the date split, the labels of each --conversion choice, raw ids of text
categories = blake2b-64 of the text, unknown = -1, codes = rank among the train split's ids + 1.
"""

from __future__ import annotations

import builtins
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest

from prlbench.data import download as dl
from prlbench.data import kuairand as kr
from prlbench.data.cache import open_cache
from prlbench.data.datasets import DATASETS
from prlbench.data.preprocess import preprocess
from prlbench.errors import ConfigError, DataError, DownloadError
from prlbench.fileio import read_json

from _kuairand_fixture import FULL, LOGS, file_hashes, read_log, write_kuairand
from conftest import SAMPLES
from test_download import serve

NAME = "kuairand_pure"
DEEP = {"like": "is_like", "long_view": "long_view", "follow": "is_follow",
        "comment": "is_comment", "forward": "is_forward"}
# Rates high enough that every split holds conversions of every kind at these sizes.
RATES = {"is_like": 0.15, "is_follow": 0.1, "is_comment": 0.1, "is_forward": 0.1}
SPLIT_FILES = {"train": LOGS[0], "val": LOGS[0], "test": LOGS[1], "test_random": LOGS[2]}
ALL_SPLITS = ("train", "val", "test", "test_random")
CHUNK = 37  # small chunks: duplicates and splits cross chunk boundaries


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """Nothing in this file may reach beyond 127.0.0.1 (the spec's Zenodo URL included)."""
    real = urllib.request.urlopen

    def guarded(req, *a, **kw):
        url = req.full_url if isinstance(req, urllib.request.Request) else req
        assert urlparse(url).hostname == "127.0.0.1", f"a test tried to reach {url}"
        return real(req, *a, **kw)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


def _samples():
    return SAMPLES if (SAMPLES / "kuairand_pure_rows.csv").is_file() else None


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """The stand-in archive and its extracted folder (read-only for the tests)."""
    return write_kuairand(tmp_path_factory.mktemp("kr"), rates=RATES, samples=_samples())


@pytest.fixture(scope="module")
def built(fx, tmp_path_factory):
    """A cache built with the defaults (conversion like), shared by the read-only tests."""
    d = tmp_path_factory.mktemp("data")
    manifest = kr.preprocess_kuairand(d, source=fx.folder, progress=False, chunk_rows=CHUNK)
    return d, manifest


def _copy(fx, tmp_path) -> Path:
    """A private copy of the extracted folder, to damage."""
    dst = tmp_path / "src" / "KuaiRand-Pure"
    shutil.copytree(fx.folder, dst)
    return dst


def _frames(data_dir: Path) -> dict[str, pd.DataFrame]:
    return {s: pd.read_parquet(Path(data_dir) / NAME / f"{s}.parquet") for s in ALL_SPLITS}


def _snapshot(data_dir: Path) -> dict[str, bytes]:
    cache = Path(data_dir) / NAME
    return {p.name: p.read_bytes() for p in sorted(cache.iterdir()) if p.is_file()}


def _spec(monkeypatch, **changes):
    spec = dataclasses.replace(DATASETS.get(NAME), **changes)
    monkeypatch.setitem(DATASETS._items, NAME, spec)
    return spec


# ------------------------------------------------------------------------ expectations
def _blake(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little",
                          signed=True)


def expected_rows(fx, conversion="like", drop=False) -> dict[str, pd.DataFrame]:
    """The rows of each split, in file order, with their click and conversion labels."""
    deep = DEEP[conversion]
    out = {}
    for name, splits in ((LOGS[0], ("train", "val")), (LOGS[1], ("test",)),
                         (LOGS[2], ("test_random",))):
        df = read_log(fx.data(name)).drop_duplicates(keep="first")
        if drop:
            df = df[~((df[deep] == 1) & (df.is_click == 0))]
        df = df.assign(click=df.is_click, conversion=df.is_click & df[deep])
        if splits == ("train", "val"):
            out["train"] = df[df.date <= 20220415]
            out["val"] = df[df.date >= 20220416]
        else:
            out[splits[0]] = df
    return {k: v.reset_index(drop=True) for k, v in out.items()}


def _ints_or(cells: pd.Series, unknown=-1) -> np.ndarray:
    return np.array([unknown if not c.strip() else int(float(c)) for c in cells], np.int64)


def expected_raw(fx, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Raw categorical ids and numericals of `rows` by the documented rules."""
    users = pd.read_csv(fx.data("user_features_pure.csv"), dtype=str, keep_default_na=False)
    videos = pd.read_csv(fx.data("video_features_basic_pure.csv"), dtype=str,
                         keep_default_na=False)
    u = users.assign(k=users.user_id.astype(np.int64)).set_index("k").reindex(rows.user_id)
    v = videos.assign(k=videos.video_id.astype(np.int64)).set_index("k").reindex(rows.video_id)
    u, v = u.fillna(""), v.fillna("")
    raw = {"user": rows.user_id.to_numpy(), "video": rows.video_id.to_numpy(),
           "tab": rows.tab.to_numpy(), "hour": (rows.hourmin // 100).to_numpy()}
    for c in kr.USER_TEXT:
        raw[c] = np.array([_blake(s) if s else -1 for s in u[c]], np.int64)
    for c in (*kr.USER_FLAGS, *kr.ONEHOT):
        raw[c] = _ints_or(u[c])
    raw["is_live_streamer"][raw["is_live_streamer"] == -124] = -1
    for c in kr.USER_NUM:
        raw[c] = np.log1p(np.maximum(_ints_or(u[c], 0), 0)).astype(np.float32)
    raw["author"], raw["music"] = _ints_or(v.author_id), _ints_or(v.music_id)
    raw["video_type"] = np.array([_blake(s) if s else -1 for s in v.video_type], np.int64)
    raw["upload_type"] = np.array([_blake(s) if s else -1 for s in v.upload_type], np.int64)
    raw["first_tag"] = _ints_or(v.tag.str.split(",").str[0])
    missing = (v.video_duration.str.strip() == "").to_numpy()
    ms = np.array([float(x) if x.strip() else 0.0 for x in v.video_duration])
    raw["video_duration"] = np.log1p(ms / 1000).astype(np.float32)
    raw["video_duration_missing"] = missing.astype(np.float32)
    return raw


def check_cache(fx, data_dir, manifest, conversion="like", drop=False):
    rows = expected_rows(fx, conversion, drop)
    frames = _frames(data_dir)
    raw = {s: expected_raw(fx, rows[s]) for s in ALL_SPLITS}
    entries = {**manifest["splits"], **manifest["extra_splits"]}
    for split in ALL_SPLITS:
        df, exp = frames[split], rows[split]
        assert len(df) == len(exp) == entries[split]["rows"], split
        np.testing.assert_array_equal(df.user_id, exp.user_id)
        np.testing.assert_array_equal(df.click, exp.click)
        np.testing.assert_array_equal(df.conversion, exp.conversion)
        assert entries[split]["conversions"] == int(exp.conversion.sum())
        assert entries[split]["click_rate"] == pytest.approx(exp.click.mean())
        for c in kr.CATEGORICAL:  # codes: rank among the train ids + 1, unseen -> 0
            vocab = np.unique(raw["train"][c])
            pos = np.minimum(np.searchsorted(vocab, raw[split][c]), len(vocab) - 1)
            codes = np.where(vocab[pos] == raw[split][c], pos + 1, 0)
            np.testing.assert_array_equal(df[c], codes, err_msg=f"{split} {c}")
            assert manifest["vocab_sizes"][c] == len(vocab) + 1
        for c in kr.NUMERICAL:
            np.testing.assert_allclose(df[c], raw[split][c], rtol=1e-6, err_msg=c)
    return frames, rows


# ----------------------------------------------------------------------------- download
@pytest.fixture
def server(monkeypatch):
    """test_download's loopback HTTP server: (base URL, the state a test sets up)."""
    with serve(monkeypatch) as s:
        yield s


def test_download_from_the_default_url_checks_md5_and_extracts(server, fx, tmp_path,
                                                               monkeypatch):
    base, st = server
    st.files["/records/10439422/files/KuaiRand-Pure.tar.gz"] = fx.archive.read_bytes()
    _spec(monkeypatch, url=f"{base}/records/10439422/files/KuaiRand-Pure.tar.gz", md5=fx.md5)
    raw = dl.download(NAME, tmp_path, progress=False, backoff=0.01)
    records = json.loads((raw / dl.CHECKSUMS).read_text())
    rec = records["KuaiRand-Pure.tar.gz"]
    assert rec["md5"] == fx.md5 and rec["sha256"] == fx.sha256
    assert rec["bytes"] == fx.archive.stat().st_size
    for f in ("LICENSE", "load_data_pure.py", *(f"data/{n}.csv" for n in LOGS),
              "data/video_features_statistic_pure.csv"):
        assert (raw / "KuaiRand-Pure" / f).is_file(), f
        assert records[f"KuaiRand-Pure/{f}"]["source"].startswith(
            "extracted from KuaiRand-Pure.tar.gz")
    manifest = preprocess(NAME, tmp_path, progress=False)
    assert manifest["params"]["checksums_verified"] is True
    assert manifest["splits"]["train"]["rows"] > 0
    # again: the recorded download is verified, not fetched a second time
    n = len(st.requests)
    dl.download(NAME, tmp_path, progress=False)
    assert len(st.requests) == n


def _raw_files(raw: Path) -> list[str]:
    return sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()
                  and p.name != dl.CHECKSUMS) if raw.exists() else []


def test_a_wrong_md5_names_both_hashes_and_keeps_nothing(server, fx, tmp_path, monkeypatch):
    base, st = server
    st.files["/KuaiRand-Pure.tar.gz"] = fx.archive.read_bytes()
    wrong = "0820331067a3784d9691136f772b35a7"  # the real archive's md5, not the stand-in's
    _spec(monkeypatch, url=f"{base}/KuaiRand-Pure.tar.gz", md5=wrong)
    raw = tmp_path / NAME / "raw"
    for kw in ({}, {"url": f"{base}/KuaiRand-Pure.tar.gz"}, {"from_path": fx.archive}):
        with pytest.raises(DownloadError) as e:
            dl.download(NAME, tmp_path, progress=False, backoff=0.01, **kw)
        assert fx.md5 in str(e.value) and wrong in str(e.value) and "not kept" in str(e.value)
        assert _raw_files(raw) == [], kw
        assert not (raw / dl.CHECKSUMS).exists() or json.loads(
            (raw / dl.CHECKSUMS).read_text()) == {}


def test_a_mirror_and_a_local_file_are_checked_too(server, fx, tmp_path, monkeypatch):
    base, st = server
    st.files["/mirror/kr.tar.gz"] = fx.archive.read_bytes()
    _spec(monkeypatch, md5=fx.md5, url="https://zenodo.invalid/never-used.tar.gz")
    raw = dl.download(NAME, tmp_path / "a", url=f"{base}/mirror/kr.tar.gz", progress=False)
    assert (raw / "KuaiRand-Pure" / "data" / f"{LOGS[0]}.csv").is_file()
    assert json.loads((raw / dl.CHECKSUMS).read_text())["kr.tar.gz"]["md5"] == fx.md5
    raw = dl.download(NAME, tmp_path / "b", from_path=fx.archive, progress=False)
    assert (raw / "KuaiRand-Pure" / "data" / f"{LOGS[2]}.csv").is_file()
    # a folder holding the archive: the archive's md5 is checked
    folder = tmp_path / "dl"
    folder.mkdir()
    shutil.copy(fx.archive, folder)
    _spec(monkeypatch, md5="f" * 32)
    with pytest.raises(DownloadError, match=f"md5 {fx.md5} does not match the published md5 "
                       f"{'f' * 32}"):
        dl.download(NAME, tmp_path / "c", from_path=folder, progress=False)
    assert _raw_files(tmp_path / "c" / NAME / "raw") == []
    # an extracted folder (no archive in it: nothing to check the md5 of) imports as it is
    raw = dl.download(NAME, tmp_path / "e", from_path=fx.folder, progress=False)
    assert (raw / "data" / f"{LOGS[1]}.csv").is_file()
    manifest = preprocess(NAME, tmp_path / "e", progress=False)
    assert manifest["params"]["checksums_verified"] is True


def test_a_truncated_archive_is_refused_and_the_cache_kept(fx, built, tmp_path, monkeypatch):
    data_dir = tmp_path / "d"
    shutil.copytree(built[0], data_dir)
    before = _snapshot(data_dir)
    cut = tmp_path / "KuaiRand-Pure.tar.gz"
    cut.write_bytes(fx.archive.read_bytes()[: fx.archive.stat().st_size * 2 // 3])
    _spec(monkeypatch, md5=fx.md5)
    with pytest.raises(DownloadError, match=rf"KuaiRand-Pure\.tar\.gz: md5 {file_hashes(cut)[0]}"
                       rf" does not match the published md5 {fx.md5}"):
        dl.download(NAME, data_dir, from_path=cut, progress=False)
    _spec(monkeypatch, md5=None)  # a mirror's copy checked by --sha256 only: still refused
    with pytest.raises(dl.ArchiveRefused, match=r"KuaiRand-Pure\.tar\.gz.*damaged"):
        dl.download(NAME, data_dir, from_path=cut, progress=False)
    assert _raw_files(data_dir / NAME / "raw") == []
    # given to preprocess as it is: named are the member and the line where its data stops
    body = gzip.decompress(fx.archive.read_bytes())
    whole = tarfile.open(fileobj=io.BytesIO(body))
    for share in (0.3, 0.55):
        cut.write_bytes(fx.archive.read_bytes()[: int(fx.archive.stat().st_size * share)])
        with pytest.raises(DataError) as e:
            kr.preprocess_kuairand(data_dir, source=cut, progress=False)
        m = re.search(r"KuaiRand-Pure\.tar\.gz/(\S+\.csv), line (\d+): the archive ends inside "
                      r"this line \(([\d,]+) of", str(e.value))
        assert m, str(e.value)
        info = whole.getmember(m[1])
        there = body[info.offset_data:info.offset_data + int(m[3].replace(",", ""))]
        assert int(m[2]) == there.count(b"\n") + 1  # the exact line
    assert _snapshot(data_dir) == before


def test_ls_datasets_states_licence_size_and_no_login():
    from prlbench.catalog import listing

    text = dict(listing("datasets"))[NAME]
    assert "CC BY-SA 4.0" in text and "47.4 MB" in text and "no login" in text
    assert "Licence" not in dict(listing("datasets"))["aliccp"]  # the others as they were


# ------------------------------------------------------------------------ preprocessing
def test_splits_labels_codes_and_counts(fx, built):
    data_dir, manifest = built
    frames, rows = check_cache(fx, data_dir, manifest)
    assert manifest["columns"]["group"] == "user_id" and manifest["has_groups"] is True
    assert len(manifest["columns"]["categorical"]) == 35
    assert len(manifest["columns"]["numerical"]) == 6
    assert manifest["validation"] == {"by": "date", "source": f"{LOGS[0]}.csv",
                                      "train_dates": "20220409-20220415",
                                      "val_dates": "20220416-20220421"}
    assert set(frames["train"].columns) >= {"user_id", "user", "video", "click", "conversion"}
    assert rows["train"].date.max() <= 20220415 < 20220416 <= rows["val"].date.min()
    files = manifest["params"]["files"]
    for name in LOGS:
        df = read_log(fx.data(name))
        dedup = df.drop_duplicates()
        stats = files[f"{name}.csv"]
        assert stats["rows"] == len(df) and stats["duplicates_removed"] == len(df) - len(dedup)
        assert stats["duplicates_removed"] >= 1
        assert stats["is_like_without_click"] == int(((dedup.is_like == 1) &
                                                       (dedup.is_click == 0)).sum()) > 0
        assert stats["unclicked_deep_dropped"] == 0
        assert stats["label_counts_after_dedup"]["is_click"] == int(dedup.is_click.sum())
    assert files[f"{LOGS[1]}.csv"]["rows_without_video_features"] > 0
    assert manifest["params"]["unclicked_deep"].endswith("kept as non-clicks (click 0, "
                                                          "conversion 0)")
    assert "user_id" in manifest["params"]["group"]
    # unseen ids -> 0: the videos of the second period only
    late = ~rows["test"].video_id.isin(rows["train"].video_id)
    assert late.any() and (frames["test"].video[late.to_numpy()] == 0).all()
    assert (frames["test"].video[~late.to_numpy()] > 0).all()


@pytest.mark.parametrize("conversion, drop", [("long_view", False), ("follow", False),
                                              ("comment", False), ("forward", False),
                                              ("like", True), ("long_view", True)])
def test_each_conversion_label_and_the_drop_rule(fx, tmp_path, conversion, drop):
    manifest = preprocess(NAME, tmp_path, source=fx.folder, progress=False,
                          conversion=conversion, drop_unclicked_deep=drop or None)
    check_cache(fx, tmp_path, manifest, conversion, drop)
    deep = DEEP[conversion]
    assert manifest["params"]["conversion_column"] == deep
    assert manifest["params"]["labels"] == f"click = is_click; conversion = is_click AND {deep}"
    assert manifest["params"]["drop_unclicked_deep"] is drop
    for name in LOGS:
        dedup = read_log(fx.data(name)).drop_duplicates()
        unclicked = int(((dedup[deep] == 1) & (dedup.is_click == 0)).sum())
        stats = manifest["params"]["files"][f"{name}.csv"]
        assert stats[f"{deep}_without_click"] == unclicked
        assert stats["unclicked_deep_dropped"] == (unclicked if drop else 0)
        assert stats["rows_kept"] == len(dedup) - (unclicked if drop else 0)
    if drop:
        assert "dropped" in manifest["params"]["unclicked_deep"]


def test_quoted_ranges_the_sentinel_and_empty_cells(fx, built):
    data_dir, _ = built
    frames = _frames(data_dir)
    users = pd.read_csv(fx.data("user_features_pure.csv"), dtype=str, keep_default_na=False)
    assert users.follow_user_num_range.str.contains(",").any()  # quoted in the file
    assert '"(' in fx.data("user_features_pure.csv").read_text()
    table = kr._read_users(kr.csvio.Entry(fx.data("user_features_pure.csv")),
                           kr.csvio.ByteProgress(False, 0, ""))
    assert table.cat.shape == (len(users), len(kr.USER_CAT))
    col = {c: table.cat[:, j] for j, c in enumerate(kr.USER_CAT)}
    order = np.argsort(users.user_id.astype(np.int64).to_numpy())
    # a range with a comma is one category: its text's id, and the columns after it intact
    np.testing.assert_array_equal(col["follow_user_num_range"],
                                  [_blake(s) for s in users.follow_user_num_range.iloc[order]])
    np.testing.assert_allclose(table.num[:, 1], np.log1p(
        users.fans_user_num.iloc[order].astype(float)).astype(np.float32), rtol=1e-6)
    live = users.is_live_streamer.iloc[order].to_numpy()
    assert (live == "-124").any()
    assert (col["is_live_streamer"][live == "-124"] == kr.UNKNOWN).all()
    assert set(col["is_live_streamer"][live != "-124"]) <= {0, 1}
    gaps = users.onehot_feat4.iloc[order].to_numpy()
    assert (gaps == "").any() and any(g.endswith(".0") for g in gaps)
    assert (col["onehot_feat4"][gaps == ""] == kr.UNKNOWN).all()
    np.testing.assert_array_equal(col["onehot_feat4"][gaps != ""],
                                  [int(float(g)) for g in gaps[gaps != ""]])
    assert table.facts["is_live_streamer_unknown_-124"] == int((live == "-124").sum())
    # in the cache: one code per text, and unknown is a code of its own (-1 ranks first)
    df = frames["train"]
    u = users.set_index(users.user_id.astype(np.int64)).loc[df.user_id]
    pairs = set(zip(u.follow_user_num_range, df.follow_user_num_range))
    assert len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})
    codes = dict(zip(u.is_live_streamer, df.is_live_streamer))
    assert codes["-124"] == 1 and len(set(codes.values())) == len(codes)


def test_the_real_sample_rows(fx, built):
    if _samples() is None:
        pytest.skip("the samples folder is absent")
    from _kuairand_fixture import read_samples

    real = read_samples(SAMPLES)
    assert fx.samples_used == len(real)
    data_dir, manifest = built
    frames = _frames(data_dir)
    for _, r in real.iterrows():
        split = ("train" if r.date <= 20220415 else "val" if r.date <= 20220421 else "test")
        df = frames[split]
        rows = expected_rows(fx)[split]
        hit = (rows.user_id == r.user_id) & (rows.video_id == r.video_id) & (
            rows.time_ms == r.time_ms)
        assert hit.sum() == 1, r.to_dict()  # the duplicate pair is one row now
        i = int(np.flatnonzero(hit.to_numpy())[0])
        assert df.click[i] == r.is_click and df.conversion[i] == (r.is_click & r.is_like)
        assert df.user_id[i] == r.user_id
    assert real.duplicated().sum() == 1  # the pair in the samples: counted in the second log
    assert manifest["params"]["files"][f"{LOGS[1]}.csv"]["duplicates_removed"] >= 1
    zero = real[real.duration_ms == 0]
    assert len(zero)  # rows with duration_ms 0 are kept like any other
    assert (frames["test"].user_id == zero.user_id.iloc[0]).any()


def test_no_feature_comes_from_a_post_impression_column_or_the_statistic_file(
        fx, tmp_path, monkeypatch):
    other = write_kuairand(tmp_path / "perturbed", rates=RATES, samples=_samples(),
                           perturb=True, pack=False)
    for name in LOGS:  # the post-impression columns really differ
        a, b = read_log(fx.data(name)), read_log(other.data(name))
        assert (a[["user_id", "video_id", "date", "hourmin", "tab"]] ==
                b[["user_id", "video_id", "date", "hourmin", "tab"]]).all().all()
        for c in kr.NOT_FEATURES:
            assert (a[c] != b[c]).all(), c
    assert (fx.data(kr.STATISTIC).read_bytes() != other.data(kr.STATISTIC).read_bytes())
    opened = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *a, **kw):
        opened.append(str(file))
        return real_open(file, *a, **kw)

    def spy_os_open(path, *a, **kw):
        opened.append(str(path))
        return real_os_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    m1 = kr.preprocess_kuairand(tmp_path / "a", source=fx.folder, progress=False)
    m2 = kr.preprocess_kuairand(tmp_path / "b", source=other.folder, progress=False)
    monkeypatch.undo()
    assert any(LOGS[0] in p for p in opened)  # the spy saw the reads
    assert not [p for p in opened if kr.STATISTIC in p]
    features = [m1["columns"]["group"], *m1["columns"]["categorical"],
                *m1["columns"]["numerical"]]
    assert m1["vocab_sizes"] == m2["vocab_sizes"] and m1["columns"] == m2["columns"]
    f1, f2 = _frames(tmp_path / "a"), _frames(tmp_path / "b")
    for split in ALL_SPLITS:
        for c in features:  # byte for byte
            assert f1[split][c].to_numpy().tobytes() == f2[split][c].to_numpy().tobytes(), c
        assert not f1[split].click.equals(f2[split].click)  # while the labels changed
    # and without the statistic file at all, the same cache
    gone = _copy(fx, tmp_path)
    (gone / "data" / f"{kr.STATISTIC}.csv").unlink()
    m3 = kr.preprocess_kuairand(tmp_path / "c", source=gone, progress=False)
    assert {s: e["sha256"] for s, e in m3["splits"].items()} == {
        s: e["sha256"] for s, e in m1["splits"].items()}


def test_the_archive_itself_is_a_source_read_in_place(fx, built, tmp_path, monkeypatch):
    """--source KuaiRand-Pure.tar.gz (or a folder holding only it): the same cache, nothing
    unpacked, the statistic member never read."""
    read = []
    real = tarfile.TarFile.extractfile

    def spy(self, member):
        read.append(member.name if isinstance(member, tarfile.TarInfo) else member)
        return real(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", spy)
    manifest = kr.preprocess_kuairand(tmp_path / "a", source=fx.archive, progress=False,
                                      chunk_rows=CHUNK)
    assert sorted(r.rsplit("/", 1)[-1] for r in read) == sorted(
        f"{kr.FILES[role]}.csv" for role in kr.FILES)
    assert manifest["params"]["source_format"] == "archive"
    assert manifest["inputs"][0]["sha256"] == fx.sha256
    same = {**built[1]["splits"], **built[1]["extra_splits"]}
    for s, e in {**manifest["splits"], **manifest["extra_splits"]}.items():
        assert e["sha256"] == same[s]["sha256"], s
    folder = tmp_path / "downloads"
    folder.mkdir()
    shutil.copy(fx.archive, folder)
    again = kr.preprocess_kuairand(tmp_path / "b", source=folder, progress=False,
                                   chunk_rows=CHUNK)
    assert again["splits"]["test"]["sha256"] == same["test"]["sha256"]
    assert [p.name for p in folder.iterdir()] == ["KuaiRand-Pure.tar.gz"]  # nothing unpacked


def test_options_belong_to_kuairand_only(fx, tmp_path):
    with pytest.raises(ConfigError, match="--conversion 'purchase': expected one of like, "
                       "long_view, follow, comment, forward"):
        preprocess(NAME, tmp_path, source=fx.folder, progress=False, conversion="purchase")
    with pytest.raises(ConfigError, match="--conversion applies only to the kuairand_pure"):
        preprocess("aliccp", tmp_path, progress=False, conversion="like")
    with pytest.raises(ConfigError, match="--drop-unclicked-deep applies only to the "
                       "kuairand_pure data set, not to synthetic"):
        preprocess("synthetic", tmp_path, progress=False, drop_unclicked_deep=True)
    with pytest.raises(ConfigError, match="--max-unmatched"):
        preprocess(NAME, tmp_path, source=fx.folder, progress=False, max_unmatched=0.1)
    with pytest.raises(ConfigError, match="--rows applies only to the synthetic"):
        preprocess(NAME, tmp_path, source=fx.folder, progress=False, rows=10)
    assert not (tmp_path / NAME).exists()


def test_the_cli_takes_the_options_and_prints_every_split(fx, tmp_path):
    from typer.testing import CliRunner

    from prlbench.cli import app

    r = CliRunner().invoke(app, ["preprocess", NAME, "--source", str(fx.folder), "--data-dir",
                                 str(tmp_path), "--quiet", "--conversion", "follow",
                                 "--drop-unclicked-deep"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "test_random" in r.output and "35 categorical, 6 numerical" in r.output
    params = open_cache(tmp_path, NAME)["params"]
    assert params["conversion"] == "follow" and params["drop_unclicked_deep"] is True


# ----------------------------------------------------------------------------- bad input
def _edit_line(path: Path, line: int, fn) -> str:
    lines = path.read_text().split("\n")
    lines[line - 1] = fn(lines[line - 1])
    path.write_text("\n".join(lines))
    return lines[line - 1]


def _set_field(path: Path, line: int, column: str, value: str) -> None:
    j = kr.LOG_COLUMNS.index(column)

    def put(text):
        f = text.split(",")
        f[j] = value
        return ",".join(f)
    _edit_line(path, line, put)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / f"{LOGS[1]}.csv").unlink(),
     rf"missing {LOGS[1]}\.csv"),
    (lambda d: _edit_line(d / f"{LOGS[0]}.csv", 1, lambda t: t.replace(",tab", ",tab_id")),
     rf"{LOGS[0]}\.csv, line 1, column 19: the header has 'tab_id' where 'tab' is expected"),
    (lambda d: _edit_line(d / f"{LOGS[2]}.csv", 1, lambda t: t.replace("is_rand,", "")),
     rf"{LOGS[2]}\.csv, line 1, column 18: the header has 'tab' where 'is_rand'"),
    (lambda d: _set_field(d / f"{LOGS[0]}.csv", 57, "time_ms", "1649.5"),
     rf"{LOGS[0]}\.csv, line 57, column 5 \(time_ms\): 1649\.5 is not an integer"),
    (lambda d: _set_field(d / f"{LOGS[1]}.csv", 40, "video_id", "abc"),
     rf"{LOGS[1]}\.csv, line 40, column 2 \(video_id\): 'abc' is not a number"),
    (lambda d: _set_field(d / f"{LOGS[0]}.csv", 123, "date", "20220422"),
     rf"{LOGS[0]}\.csv, line 123, column 3 \(date\): 20220422 is not a date from 20220409 to "
     r"20220421"),
    (lambda d: _set_field(d / f"{LOGS[2]}.csv", 9, "date", "20220431"),
     rf"{LOGS[2]}\.csv, line 9, column 3 \(date\): 20220431 is not a date"),
    (lambda d: _set_field(d / f"{LOGS[0]}.csv", 5, "date", "20220408"),
     rf"{LOGS[0]}\.csv, line 5, column 3 \(date\): 20220408"),
    (lambda d: _set_field(d / f"{LOGS[1]}.csv", 7, "is_click", "2"),
     rf"{LOGS[1]}\.csv, line 7, column 6 \(is_click\): is_click = 2, expected 0 or 1"),
    (lambda d: _set_field(d / f"{LOGS[0]}.csv", 8, "hourmin", "2400"),
     rf"{LOGS[0]}\.csv, line 8, column 4 \(hourmin\): 2400 is not an hour"),
    (lambda d: (d / f"{LOGS[1]}.csv").write_bytes((d / f"{LOGS[1]}.csv").read_bytes()[:-25]),
     rf"{LOGS[1]}\.csv, line \d+: \d+ columns, expected 19"),
    (lambda d: _edit_line(d / "user_features_pure.csv", 4,
                          lambda t: ",".join([*t.split(",")[:2], "yes", *t.split(",")[3:]])),
     r"user_features_pure\.csv, line 4, column is_lowactive_period: 'yes' is not a number"),
    (lambda d: _edit_line(d / "video_features_basic_pure.csv", 6,
                          lambda t: ",".join(["5x", *t.split(",")[1:]])),
     r"video_features_basic_pure\.csv, line 6, column video_id: '5x' is not a number"),
    (lambda d: _edit_line(d / "video_features_basic_pure.csv", 1,
                          lambda t: t.replace("music_id", "music")),
     r"video_features_basic_pure\.csv, line 1: missing column music_id"),
])
def test_bad_input_names_file_line_and_column_and_keeps_the_cache(fx, built, tmp_path, damage,
                                                                  message):
    src = _copy(fx, tmp_path)
    damage(src / "data")
    data_dir = tmp_path / "d"
    shutil.copytree(built[0], data_dir)
    before = _snapshot(data_dir)
    with pytest.raises(DataError, match=message):
        kr.preprocess_kuairand(data_dir, source=src, progress=False, chunk_rows=CHUNK)
    assert _snapshot(data_dir) == before
    open_cache(data_dir, NAME)  # still whole
    assert not [p for p in data_dir.iterdir() if p.name.startswith(f".{NAME}.")]


# ---------------------------------------------------------------------------- the engine
def test_train_and_evaluate_on_the_cache(built, tmp_path):
    from prlbench.config import resolve
    from prlbench.data.loader import load_split
    from prlbench.engine.run import evaluate_run, train_run
    from prlbench.fileio import read_json

    data_dir, manifest = built
    cfg = resolve(None, {"data": {"dataset": NAME}, "model": {"name": "mmoe", "preset": "small"},
                         "loss": {"name": "bce"},
                         "train": {"epochs": 1, "batch_size": 128, "threads": 1}})
    run = train_run(cfg, data_dir=data_dir, out=tmp_path, progress=False)
    metrics = read_json(run / "metrics.json")
    assert metrics["rows"] == manifest["splits"]["test"]["rows"]
    assert 0 <= metrics["ctr_auc"] <= 1 and "ctr_gauc" in metrics  # groups: the users
    again = evaluate_run(run, data_dir)
    assert again["ctr_auc"] == metrics["ctr_auc"]
    extra = load_split(data_dir, NAME, "test_random")
    assert len(extra) == manifest["extra_splits"]["test_random"]["rows"]
    assert extra.categorical.shape[1] == 35 and extra.numerical.shape[1] == 6
    with pytest.raises(ConfigError, match="test_random"):
        load_split(data_dir, NAME, "nope")


def test_other_data_sets_caches_are_as_before(data_dir):
    """No extra_splits key, the validation record and the content hash as they were."""
    from prlbench.data.cache import data_hash

    m = open_cache(data_dir, "synthetic")
    assert "extra_splits" not in m and m["validation"]["by"] == "search_id"
    ident = {k: m.get(k) for k in ("format", "dataset", "columns", "has_groups", "vocab_sizes",
                                   "vocabulary", "validation")}
    ident |= {k: {s: e["sha256"] for s, e in m[k].items()} for k in ("splits", "side_files")}
    assert data_hash(data_dir / "synthetic") == hashlib.sha256(
        json.dumps(ident, sort_keys=True).encode()).hexdigest()


@pytest.mark.slow
def test_full_size_stand_in_preprocesses_in_bounded_memory(tmp_path):
    """~2.6 M log rows (the real file sizes): written block by block, preprocessed in chunks."""
    big = write_kuairand(tmp_path / "big", samples=_samples(), pack=False, **FULL)
    assert big.rows[f"{LOGS[0]}.csv"] == FULL["logs"][0]
    manifest = kr.preprocess_kuairand(tmp_path / "d", source=big.folder, progress=False)
    files = manifest["params"]["files"]
    assert sum(f["rows"] for f in files.values()) == sum(FULL["logs"])
    assert manifest["splits"]["train"]["rows"] + manifest["splits"]["val"]["rows"] == \
        files[f"{LOGS[0]}.csv"]["rows_kept"]
    assert 0.40 < manifest["splits"]["train"]["click_rate"] < 0.52


@pytest.mark.slow
def test_compare_captions_name_the_label_rule_and_the_test_split(built, tmp_path):
    from prlbench.config import resolve
    from prlbench.experiment.compare import compare
    from prlbench.experiment.executors import LocalExecutor
    from prlbench.experiment.grid import CompareConfig, Grid

    data_dir, manifest = built
    base = resolve(None, {"model": {"preset": "small"},
                          "train": {"epochs": 1, "batch_size": 256, "threads": 1}}, finish=False)
    grid = Grid(datasets=(NAME,), models=("shared_bottom",), losses=("bce", "pwiser"),
                seeds=(1, 2), base=base)
    out = tmp_path / "out"
    res = compare(CompareConfig(grid=grid, formats=("md",), test_split="both"),
                  data_dir=data_dir, out=out, progress=False, executor=LocalExecutor(1, 1))
    tables = out / "tables"
    for table in ("auc_detail.md", "logloss_detail.md", "auc_detail.test_random.md",
                  "logloss_detail.test_random.md", "setup.md"):
        caption = (tables / table).read_text()
        params = manifest["params"]
        assert f"KuaiRand-Pure: labels {params['labels']}" in caption
        assert "conversion = is_click AND is_like" in caption  # the default, --conversion like
        assert params["unclicked_deep"] in caption
        assert "test split log_standard_4_22_to_5_08_pure.csv" in caption
    # --test-split both: the random-exposure split's tables beside the standard ones, each
    # computed from its own split's metrics, and saying which split they report
    random_caption = (tables / "auc.test_random.md").read_text()
    assert "test_random-split AUC" in random_caption
    assert "cells.test_random.csv" in (tables / "auc_detail.test_random.md").read_text()
    assert "Test-split AUC" in (tables / "auc.md").read_text()
    assert (out / "plots" / "forest.test_random.png").is_file()
    runs = pd.read_csv(tables / "runs.test_random.csv")
    extra_rows = manifest["extra_splits"]["test_random"]["rows"]
    assert len(runs) == 4 and (runs["rows"] == extra_rows).all()
    standard = pd.read_csv(tables / "runs.csv")
    assert (standard["rows"] == manifest["splits"]["test"]["rows"]).all()
    for run_dir in runs["run_dir"]:
        metrics = read_json(Path(run_dir) / "metrics.test_random.json")
        row = runs[runs["run_dir"] == run_dir].iloc[0]
        assert metrics["ctr_auc"] == pytest.approx(row["ctr_auc"])
    assert not res.failed


def test_test_split_random_needs_the_split_and_evaluate_names_the_valid_ones(built, tmp_path,
                                                                             data_dir):
    from prlbench.config import resolve
    from prlbench.engine.run import evaluate_run, train_run
    from prlbench.experiment.compare import compare
    from prlbench.experiment.grid import CompareConfig, Grid

    grid = Grid(datasets=("synthetic",), models=("mmoe",), losses=("bce",), seeds=(1,),
                base=resolve(None, {"train": {"epochs": 1}}, finish=False))
    with pytest.raises(ConfigError, match="synthetic has no test_random split"):
        compare(CompareConfig(grid=grid, test_split="random"), data_dir=data_dir,
                out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "runs").exists()  # refused before any training
    with pytest.raises(ConfigError, match="--test-split must be standard, random or both"):
        CompareConfig(grid=grid, test_split="sideways").check()
    kr_dir, manifest = built
    cfg = resolve(None, {"data": {"dataset": NAME}, "model": {"name": "shared_bottom",
                                                             "preset": "small"},
                         "train": {"epochs": 1, "batch_size": 256, "threads": 1}})
    run = train_run(cfg, data_dir=kr_dir, out=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="its splits beside test: test_random"):
        evaluate_run(run, kr_dir, split="val")
    metrics = evaluate_run(run, kr_dir, split="test_random")
    assert metrics["rows"] == manifest["extra_splits"]["test_random"]["rows"]
    assert read_json(run / "metrics.test_random.json") == metrics
    assert read_json(run / "metrics.json")["rows"] == manifest["splits"]["test"]["rows"]


def test_an_archive_whose_members_are_too_big_is_refused_before_reading(fx, tmp_path,
                                                                        monkeypatch):
    """A small archive holding a huge member (a bomb) is refused from its tar headers, before a
    byte of it is decompressed: per input (the user file at most 64 MiB, ...) and in all (at
    most 100 times the archive). The bounds are lowered here to fit the stand-in."""
    read = []
    monkeypatch.setattr(tarfile.TarFile, "extractfile",
                        lambda self, member: read.append(member) or None)
    monkeypatch.setitem(kr.MAX_MEMBER_BYTES, "users", 1000)
    with pytest.raises(DataError, match=r"user_features_pure\.csv declares [\d,]+ bytes "
                       r"uncompressed, above the 1,000 a KuaiRand-Pure user_features_pure\.csv "
                       r"may hold"):
        kr.preprocess_kuairand(tmp_path / "a", source=fx.archive, progress=False)
    monkeypatch.setitem(kr.MAX_MEMBER_BYTES, "users", 64 * 2**20)
    monkeypatch.setattr(kr, "RATIO_FLOOR", 0)
    monkeypatch.setattr(kr, "MAX_RATIO", 1)
    with pytest.raises(DataError, match=r"times the archive .* refused as a possible archive "
                       "bomb, nothing read"):
        kr.preprocess_kuairand(tmp_path / "b", source=fx.archive, progress=False)
    assert read == [] and not (tmp_path / "a" / NAME / "manifest.json").exists()


def test_an_archive_that_expands_far_beyond_its_size_is_not_extracted(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.tar.gz"
    payload = b"0" * (2 * 2**20)  # 2 MiB of one byte: ~2 KB compressed
    with tarfile.open(bomb, "w:gz") as tf:
        info = tarfile.TarInfo("data/users.csv")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    monkeypatch.setattr(dl, "RATIO_FLOOR", 2**20)
    with pytest.raises(dl.ArchiveRefused, match=r"bomb\.tar\.gz declares 2,097,152 uncompressed "
                       r"bytes, \d[\d,]* times its own size .* the limit is 100\); refused"):
        dl.extract_archive(bomb, tmp_path / "raw")
    assert not any((tmp_path / "raw").iterdir())
