"""A stand-in for KuaiRand-Pure.tar.gz, in the exact layout of the real archive, for any size.

`write_kuairand(root, logs=(n1, n2, n3), users=U, videos=V)` writes

    root/KuaiRand-Pure/LICENSE
    root/KuaiRand-Pure/load_data_pure.py
    root/KuaiRand-Pure/data/log_standard_4_08_to_4_21_pure.csv     (n1 rows, dates 0409-0421)
    root/KuaiRand-Pure/data/log_standard_4_22_to_5_08_pure.csv     (n2 rows, dates 0422-0508)
    root/KuaiRand-Pure/data/log_random_4_22_to_5_08_pure.csv       (n3 rows, is_rand 1)
    root/KuaiRand-Pure/data/user_features_pure.csv                 (31 columns)
    root/KuaiRand-Pure/data/video_features_basic_pure.csv          (12 columns)
    root/KuaiRand-Pure/data/video_features_statistic_pure.csv      (per-video label aggregates)

and packs the folder as root/KuaiRand-Pure.tar.gz (gzip mtime 0, so equal inputs give equal
bytes). The format is the documented one: the logs have the 19-column header, LF line ends, only
integers, unsorted rows, exact duplicate rows (a few per file), `duration_ms` 0 for some rows,
`time_ms` sometimes on another day than `date`, deeper labels (like, follow, ...) also on rows
without a click; the user file has quoted ranges with commas ("(250,500]"), -124 in
`is_live_streamer`, empty onehot cells (the columns with empty cells hold "3.0"-style values, as
pandas writes an integer column with gaps); the video file has quoted tag lists ("12,65"),
empty tags and empty `video_duration` cells.

Given the real sample rows (`samples`: the folder with kuairand_pure_rows.csv, read at run time,
never copied here), they are mixed into the first block of their log (dates up to 20220421: the
first standard log; later: the second), and their users and videos get feature rows.

Rows are generated and written in blocks of `block_rows`, so a full-size stand-in (`FULL`: about
2.6 M log rows, 27,285 users, 7,583 videos) is written in bounded memory. `perturb=True` changes
every post-impression column of the logs by a one-to-one map (0/1 flags flipped, counts and
times shifted) and rewrites the statistic file with other numbers, leaving the pre-impression
columns and the duplicate structure as they were: what the leak-guard test compares against.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import hashlib
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

LOG_HEADER = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,"
              "is_forward,is_hate,long_view,play_time_ms,duration_ms,profile_stay_time,"
              "comment_stay_time,is_profile_enter,is_rand,tab")
LOG_COLUMNS = tuple(LOG_HEADER.split(","))
USER_COLUMNS = ("user_id", "user_active_degree", "is_lowactive_period", "is_live_streamer",
                "is_video_author", "follow_user_num", "follow_user_num_range", "fans_user_num",
                "fans_user_num_range", "friend_user_num", "friend_user_num_range",
                "register_days", "register_days_range", *(f"onehot_feat{i}" for i in range(18)))
VIDEO_COLUMNS = ("video_id", "author_id", "video_type", "upload_dt", "upload_type",
                 "visible_status", "video_duration", "server_width", "server_height", "music_id",
                 "music_type", "tag")
STAT_COLUMNS = ("video_id", "counts", "show_cnt", "show_user_num", "play_cnt", "play_duration",
                "complete_play_cnt", "valid_play_cnt", "long_time_play_cnt", "like_cnt",
                "comment_cnt", "follow_cnt", "share_cnt", "collect_cnt")
LOGS = ("log_standard_4_08_to_4_21_pure", "log_standard_4_22_to_5_08_pure",
        "log_random_4_22_to_5_08_pure")
DATES = ((20220409, 20220421), (20220422, 20220508), (20220422, 20220508))
FULL = {"logs": (1_141_112, 295_497, 1_186_059), "users": 27_285, "videos": 7_583}
# Rates over all impressions (standard logs, after dedup), and the share of each deeper label's
# events that fall on rows without a click.
RATES = {"is_click": 0.464, "long_view": 0.336, "is_like": 0.0186, "is_comment": 0.0026,
         "is_follow": 0.0011, "is_forward": 0.0010}
UNCLICKED = {"long_view": 0.0035, "is_like": 0.16, "is_comment": 0.16, "is_follow": 0.16,
             "is_forward": 0.16}
SAMPLE_FILE = "kuairand_pure_rows.csv"
_RANGES = {
    "follow_user_num": ((0, "0"), (10, "(0,10]"), (50, "(10,50]"), (100, "(50,100]"),
                        (150, "(100,150]"), (250, "(150,250]"), (500, "(250,500]"),
                        (None, "500+")),
    "fans_user_num": ((0, "0"), (9, "[1,10)"), (99, "[10,100)"), (999, "[100,1k)"),
                      (4999, "[1k,5k)"), (9999, "[5k,1w)"), (None, "[1w,10w)")),
    "friend_user_num": ((0, "0"), (4, "[1,5)"), (29, "[5,30)"), (59, "[30,60)"),
                        (119, "[60,120)"), (249, "[120,250)"), (None, "250+")),
    "register_days": ((30, "15-30"), (60, "31-60"), (90, "61-90"), (180, "91-180"),
                      (365, "181-365"), (730, "366-730"), (None, "730+")),
}
ONEHOT_SIZES = (2, 8, 10, 12, 9, 2, 3, 46, 34, 2, 2, 2, 25, 4, 2, 3, 7, 2)
ONEHOT_WITH_GAPS = (4, 12)  # columns with empty cells (written as "3.0" and "")
UPLOAD_TYPES = ("ShortImport", "LongImport", "Web", "Kmovie", "LongPicture", "PictureSet",
                "ShareFromOtherApp", "LipsSync")
LICENSE = """KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly Exposed Videos
(test stand-in written by prlbench's tests, in the layout of the real archive)

This data set is licensed under the Creative Commons Attribution-ShareAlike 4.0
International License (CC BY-SA 4.0): https://creativecommons.org/licenses/by-sa/4.0/
"""
LOADER = '''import pandas as pd

# Loads the KuaiRand-Pure files (stand-in for the script shipped in the archive).
df_rand = pd.read_csv("data/log_random_4_22_to_5_08_pure.csv")
df1 = pd.read_csv("data/log_standard_4_08_to_4_21_pure.csv")
df2 = pd.read_csv("data/log_standard_4_22_to_5_08_pure.csv")
user_features = pd.read_csv("data/user_features_pure.csv")
video_features_basic = pd.read_csv("data/video_features_basic_pure.csv")
video_features_statistics = pd.read_csv("data/video_features_statistic_pure.csv")
'''


@dataclass
class KuaiRandFixture:
    root: Path
    folder: Path              # root / "KuaiRand-Pure"
    archive: Path | None      # root / "KuaiRand-Pure.tar.gz"
    rows: dict[str, int]      # file name -> data rows written
    samples_used: int         # real sample rows mixed in
    md5: str | None = None
    sha256: str | None = None

    def data(self, name: str) -> Path:
        return self.folder / "data" / (name if name.endswith(".csv") else f"{name}.csv")


def _days(first: int, last: int) -> list[int]:
    d0 = datetime.date(first // 10000, first // 100 % 100, first % 100)
    d1 = datetime.date(last // 10000, last // 100 % 100, last % 100)
    days = [d0 + datetime.timedelta(n) for n in range((d1 - d0).days + 1)]
    return [d.year * 10000 + d.month * 100 + d.day for d in days]


def _epoch_ms(dates: np.ndarray) -> np.ndarray:
    """Unix ms of 00:00 China time (UTC+8) of each YYYYMMDD date."""
    out = np.empty(len(dates), np.int64)
    for d in np.unique(dates):
        day = datetime.datetime(d // 10000, d // 100 % 100, d % 100,
                                tzinfo=datetime.timezone(datetime.timedelta(hours=8)))
        out[dates == d] = int(day.timestamp() * 1000)
    return out


def read_samples(samples: Path | None) -> pd.DataFrame | None:
    """The real rows (a DataFrame with the log header), or None where the folder is absent."""
    if samples is None or not (Path(samples) / SAMPLE_FILE).is_file():
        return None
    df = pd.read_csv(Path(samples) / SAMPLE_FILE)
    assert tuple(df.columns) == LOG_COLUMNS, "the sample rows changed their header"
    return df


# ------------------------------------------------------------------------------- the logs
def _labels(rng, n: int, rates: dict) -> dict[str, np.ndarray]:
    pc = rates["is_click"]
    click = (rng.random(n) < pc).astype(np.int64)
    out = {"is_click": click}
    for c, share in UNCLICKED.items():
        r = rates[c]
        p = np.where(click == 1, r * (1 - share) / pc, r * share / (1 - pc))
        out[c] = (rng.random(n) < np.minimum(p, 1.0)).astype(np.int64)
    out["is_hate"] = (rng.random(n) < 0.0005).astype(np.int64)
    return out


def _log_block(rng, n: int, which: int, user_ids: np.ndarray, video_pool: np.ndarray,
               durations: np.ndarray, rates: dict) -> pd.DataFrame:
    days = np.array(_days(*DATES[which]), np.int64)
    weight = np.ones(len(days))
    if which == 0:  # the published split sizes: 950,310 rows up to 20220415, 190,802 after
        weight = np.where(days <= 20220415, 950_310 / 7, 190_802 / 6)
    date = days[rng.choice(len(days), n, p=weight / weight.sum())]
    hour = rng.integers(0, 24, n)
    time_ms = _epoch_ms(date) + hour * 3_600_000 + rng.integers(0, 3_600_000, n)
    other_day = rng.random(n) < 0.01  # time_ms on the day before or after `date`
    time_ms[other_day] += rng.choice([-86_400_000, 86_400_000], int(other_day.sum()))
    video = video_pool[rng.integers(0, len(video_pool), n)]
    duration = durations[video].copy()  # the video's own duration (0: no feature row)
    duration[rng.random(n) < 0.03] = 0  # 0 where unknown
    lab = _labels(rng, n, rates)
    play = (rng.random(n) * np.maximum(duration, 10_000) * 1.5).astype(np.int64)
    cols = {
        "user_id": user_ids[rng.integers(0, len(user_ids), n)], "video_id": video,
        "date": date, "hourmin": hour * 100, "time_ms": time_ms,
        "is_click": lab["is_click"], "is_like": lab["is_like"], "is_follow": lab["is_follow"],
        "is_comment": lab["is_comment"], "is_forward": lab["is_forward"],
        "is_hate": lab["is_hate"], "long_view": lab["long_view"], "play_time_ms": play,
        "duration_ms": duration,
        "profile_stay_time": np.where(rng.random(n) < 0.05, rng.integers(1, 60_000, n), 0),
        "comment_stay_time": np.where(rng.random(n) < 0.05, rng.integers(1, 60_000, n), 0),
        "is_profile_enter": (rng.random(n) < 0.03).astype(np.int64),
        "is_rand": np.full(n, 1 if which == 2 else 0, np.int64),
        "tab": rng.choice(15, n, p=_TAB_P),
    }
    return pd.DataFrame(cols)


def _duplicate(rng, df: pd.DataFrame, keep: np.ndarray) -> None:
    """Overwrite a few rows (one in 500, at least one; not those in `keep`) with exact copies
    of earlier rows of the block."""
    n = len(df)
    free = np.setdiff1d(np.arange(1, n), keep)
    n_dup = min(max(1, n // 500), len(free)) if n >= 4 else 0
    if n_dup:
        dst = np.sort(rng.choice(free, n_dup, replace=False))
        src = np.array([rng.integers(0, d) for d in dst])
        df.iloc[dst] = df.iloc[src].to_numpy()


_TAB_P = np.array([30, 40, 5, 4, 4, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1], float)
_TAB_P /= _TAB_P.sum()


def _perturb_log(df: pd.DataFrame) -> pd.DataFrame:
    """Every post-impression column changed one-to-one (so duplicates stay duplicates)."""
    df = df.copy()
    for c in ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate",
              "long_view", "is_profile_enter", "is_rand"):
        df[c] = 1 - df[c]
    df["time_ms"] = df["time_ms"] + 7_777
    df["play_time_ms"] = df["play_time_ms"] * 3 + 1
    df["duration_ms"] = df["duration_ms"] * 2 + 5
    df["profile_stay_time"] = df["profile_stay_time"] + 11
    df["comment_stay_time"] = df["comment_stay_time"] * 5 + 2
    return df


# ------------------------------------------------------------------------- feature files
def _range(kind: str, value: int) -> str:
    for limit, label in _RANGES[kind]:
        if limit is None or value <= limit:
            return label
    raise AssertionError


def _user_rows(rng, ids: np.ndarray) -> list[list[str]]:
    rows = []
    for k, uid in enumerate(ids):
        counts = {"follow_user_num": int(rng.geometric(0.02)) - 1,
                  "fans_user_num": int(rng.geometric(0.01)) - 1,
                  "friend_user_num": int(rng.geometric(0.05)) - 1,
                  "register_days": int(rng.integers(15, 2000))}
        live = "-124" if k % 17 == 3 else str(int(rng.random() < 0.1))
        row = [str(uid), str(rng.choice(["full_active", "high_active", "middle_active",
                                         "UNKNOWN"], p=[.5, .3, .15, .05])),
               str(int(rng.random() < 0.2)), live, str(int(rng.random() < 0.4))]
        for c in ("follow_user_num", "fans_user_num", "friend_user_num", "register_days"):
            row += [str(counts[c]), _range(c, counts[c])]
        for j, size in enumerate(ONEHOT_SIZES):
            v = int(rng.integers(0, size))
            if j in ONEHOT_WITH_GAPS:
                row.append("" if k % 11 == 5 + j % 3 else f"{v}.0")
            else:
                row.append(str(v))
        rows.append(row)
    return rows


def _video_rows(rng, ids: np.ndarray) -> tuple[list[list[str]], dict[int, int]]:
    rows, durations = [], {}
    for k, vid in enumerate(ids):
        duration = int(rng.integers(5, 300)) * 1000 + int(rng.integers(0, 1000))
        empty = k % 29 == 7
        durations[int(vid)] = duration
        ntag = 0 if k % 13 == 4 else int(rng.integers(1, 4))
        tag = ",".join(str(int(t)) for t in rng.choice(70, ntag, replace=False))
        rows.append([str(vid), str(int(rng.integers(0, 5000))),
                     "AD" if k % 23 == 1 else "NORMAL",
                     f"2022-{int(rng.integers(1, 4)):02d}-{int(rng.integers(1, 29)):02d}",
                     str(rng.choice(UPLOAD_TYPES)), "public",
                     "" if empty else f"{duration}.0", str(int(rng.choice([720, 1080]))),
                     str(int(rng.choice([1280, 1920]))), str(int(rng.integers(0, 9000))),
                     str(int(rng.choice([4, 8, 9]))), tag])
    return rows, durations


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")  # quotes exactly the values holding commas
        w.writerow(header)
        w.writerows(rows)


# ----------------------------------------------------------------------------- the whole
def write_kuairand(root: Path, *, logs: tuple[int, int, int] = (600, 250, 250),
                   users: int = 40, videos: int = 60, seed: int = 0,
                   rates: dict | None = None, samples: Path | None = None,
                   perturb: bool = False, block_rows: int = 200_000,
                   pack: bool = True) -> KuaiRandFixture:
    """Write the stand-in (see the module doc); returns where it is and what it holds."""
    rng = np.random.default_rng(seed)
    rates = {**RATES, **(rates or {})}
    folder = Path(root) / "KuaiRand-Pure"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "LICENSE").write_text(LICENSE)
    (folder / "load_data_pure.py").write_text(LOADER)
    real = read_samples(samples)
    user_ids = np.arange(users, dtype=np.int64)
    video_ids = np.arange(videos, dtype=np.int64)
    if real is not None:
        user_ids = np.union1d(user_ids, real.user_id.to_numpy())
        video_ids = np.union1d(video_ids, real.video_id.to_numpy())
    user_rows = _user_rows(np.random.default_rng([seed, 1]), user_ids)
    video_rows, durations = _video_rows(np.random.default_rng([seed, 2]), video_ids)
    _write_csv(folder / "data" / "user_features_pure.csv", USER_COLUMNS, user_rows)
    _write_csv(folder / "data" / "video_features_basic_pure.csv", VIDEO_COLUMNS, video_rows)
    # Videos of the first period: all but the last tenth, which appear only later (unseen in
    # train); one video id of the second period has no feature row at all.
    early = video_ids[: max(1, int(len(video_ids) * 0.9))]
    late = np.append(video_ids, video_ids.max() + 1)
    dur = np.zeros(int(late.max()) + 1, np.int64)
    dur[list(durations)] = list(durations.values())
    written, used = {}, 0
    stats = np.zeros((int(late.max()) + 1, 4), np.int64)  # shows, clicks, likes, long views
    for which, (name, n) in enumerate(zip(LOGS, logs)):
        mine = None
        if real is not None and which < 2:
            mine = real[(real.date <= 20220421) == (which == 0)]
        path = folder / "data" / f"{name}.csv"
        with open(path, "w", newline="") as f:
            f.write(LOG_HEADER + "\n")
            done = 0
            while done < n:
                m = min(block_rows, n - done)
                df = _log_block(rng, m, which, user_ids, early if which == 0 else late, dur,
                                rates)
                at = np.empty(0, np.int64)
                if done == 0 and mine is not None and len(mine) and m > len(mine):
                    at = np.sort(rng.choice(m, len(mine), replace=False))
                    df.iloc[at] = mine.to_numpy()
                    used += len(mine)
                _duplicate(rng, df, at)
                shown = df[["is_click", "is_click", "is_like", "long_view"]].to_numpy().copy()
                shown[:, 0] = 1
                np.add.at(stats, df.video_id.to_numpy(), shown)
                if perturb:
                    df = _perturb_log(df)
                df.to_csv(f, header=False, index=False, lineterminator="\n")
                done += m
        written[path.name] = n
    stat_rng = np.random.default_rng([seed, 3 + int(perturb)])
    stat_rows = []
    for vid in video_ids:
        s = stats[vid] if not perturb else stat_rng.integers(0, 1000, 4)
        stat_rows.append([str(vid), str(s[0]), str(s[0]), str(max(1, s[0] // 2)), str(s[1]),
                          str(s[1] * 20_000), str(s[3]), str(s[1]), str(s[3]), str(s[2]),
                          "0", "0", "0", "0"])
    _write_csv(folder / "data" / "video_features_statistic_pure.csv", STAT_COLUMNS, stat_rows)
    written["user_features_pure.csv"] = len(user_rows)
    written["video_features_basic_pure.csv"] = len(video_rows)
    fx = KuaiRandFixture(Path(root), folder, None, written, used)
    if pack:
        fx.archive = pack_archive(folder, Path(root) / "KuaiRand-Pure.tar.gz")
        fx.md5, fx.sha256 = file_hashes(fx.archive)
    return fx


def pack_archive(folder: Path, out: Path) -> Path:
    """`tar czf out -C folder/.. KuaiRand-Pure`: folder entries included, gzip level 6 with
    mtime 0, entries owned by root with mtime 0, so the same files give the same bytes."""
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    with open(out, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.add(folder, arcname=folder.name, filter=clean)  # sorted walk: tarfile sorts
    return out


def file_hashes(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def read_log(path: Path) -> pd.DataFrame:
    """A log as written (every column int64), for expectations computed in the tests."""
    return pd.read_csv(path, dtype="int64")
