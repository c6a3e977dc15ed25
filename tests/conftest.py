"""Shared fixtures: raw-format data (AliExpress nested zips, Ali-CCP skeleton / common
features), a small synthetic cache for the grid tests, and a stand-in for Ctrl-C.

Each raw builder keeps the structured rows it wrote, so that a test can compute the expected
output independently of the preprocessing code.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

# One OpenMP / BLAS thread per test process (and the processes it starts), set before numpy and
# torch load: the tests' tensors are tiny, and where other jobs share the cores, two OpenMP
# threads wait on each other (the model tests ran 8x slower). Runs still set their own count
# (`train.threads`); a value already in the environment is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from prlbench.data.cache import validation_mask  # noqa: E402

# Small real rows in the processed formats, in the folder the environment variable
# PRLBENCH_SAMPLES names (.ci/run sets it where a samples folder lies beside the clone); the
# tests that read them are skipped without it. Unset: a name that exists nowhere.
SAMPLES = Path(os.environ.get("PRLBENCH_SAMPLES") or "PRLBENCH_SAMPLES-is-not-set")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A small synthetic cache (6,000 training rows), shared read-only by the grid tests."""
    from prlbench.data.synthetic import preprocess_synthetic

    d = tmp_path_factory.mktemp("data")
    preprocess_synthetic(d, rows=6000, seed=0, progress=False)
    return d


class StopAfter:
    """Stands in for the training loop's stop flag: asks for a stop after `n` training steps,
    as Ctrl-C mid-epoch would."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    @property
    def requested(self) -> bool:
        self.n -= 1
        return self.n < 0


@pytest.fixture
def stop_after():
    return StopAfter


# ---------------------------------------------------------------------------- AliExpress
@dataclass
class AliExpressRaw:
    """Rows as written: users[split] = [[33 str]], items[split] = [[49 str]]."""

    users: dict[str, list[list[str]]]
    items: dict[str, list[list[str]]]
    country: str = "nl"
    written: dict[str, str] = field(default_factory=dict)  # role -> CSV text


def _ae_user(rng, sid: int, cat_hi: int) -> list[str]:
    row = [str(sid)] + [str(int(rng.integers(0, cat_hi))) for _ in range(7)]
    row += [f"{rng.random():.6f}" for _ in range(23)]
    row += [str(int(rng.integers(0, cat_hi))), str(10**12 + int(rng.integers(0, cat_hi)))]
    return row


def _ae_item(rng, sid: int, cat_hi: int, label: int) -> list[str]:
    row = [str(sid)]
    for c in range(2, 49):
        cat = c in (19, 34, 35, 36, 40, 41, 42)
        row.append(str(int(rng.integers(0, cat_hi))) if cat else f"{rng.random():.6f}")
    return row + [str(label)]


def _split_ids(n_train: int, n_val: int) -> list[int]:
    """Search ids with exactly n_val in the fixed validation groups (so val is never empty)."""
    cand = np.arange(1000, 5000, dtype=np.int64)
    in_val = validation_mask(cand)
    return list(cand[in_val][:n_val]) + list(cand[~in_val][:n_train])


def aliexpress_rows(seed: int = 0) -> AliExpressRaw:
    rng = np.random.default_rng(seed)
    users, items = {}, {}
    for split, ids, cat_hi in (("train", _split_ids(6, 2), 4), ("test", [7001, 7002, 7003], 7)):
        rng.shuffle(ids)
        users[split] = [_ae_user(rng, int(s), cat_hi) for s in ids]
        rows = []
        for s in ids + [9999]:  # 9999: items of a search without a user row (dropped)
            for _ in range(int(rng.integers(2, 5))):
                rows.append(_ae_item(rng, int(s), cat_hi, int(rng.choice(3, p=[.5, .3, .2]))))
        rows[0][-1], rows[1][-1] = "2", "1"  # every split has a click and a conversion
        order = rng.permutation(len(rows))   # items of one search need not be adjacent
        items[split] = [rows[i] for i in order]
    return AliExpressRaw(users, items)


def _csv(rows: list[list[str]]) -> bytes:
    return "".join(",".join(r) + "\n" for r in rows).encode()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def write_aliexpress(raw: AliExpressRaw, root: Path, layout: str = "outer",
                     inner_name: str | None = None) -> Path:
    """Write `raw` in one of the layouts a user may hold; returns the path to pass as source.

    layouts: "outer" (the archive file), "outer_dir" (a folder with it), "inner" (the 4 inner
    zips), "csv" (the 4 CSVs), "download" (inner zips under a subfolder + the outer archive).
    `inner_name` overrides the CSV name inside each inner zip ("{role}" is filled in).
    """
    c, up = raw.country, raw.country.upper()
    csvs = {f"{k}_{s}": _csv((raw.users if k == "user" else raw.items)[s])
            for k in ("user", "item") for s in ("train", "test")}
    raw.written = {k: v.decode() for k, v in csvs.items()}
    root.mkdir(parents=True, exist_ok=True)
    if layout == "csv":
        for role, data in csvs.items():
            (root / f"{c}_{role}.csv").write_bytes(data)
        return root
    inner = {f"{c}_{role}.zip": _zip_bytes({(inner_name or f"{c}_{{role}}.csv").format(
        role=role): data}) for role, data in csvs.items()}
    outer = _zip_bytes({f"aliexpress_{up}_datasets/{n}": d for n, d in inner.items()})
    if layout in ("outer", "outer_dir", "download"):
        (root / f"aliexpress_{up}_datasets.zip").write_bytes(outer)
    if layout in ("inner", "download"):
        sub = root / f"aliexpress_{up}_datasets" if layout == "download" else root
        sub.mkdir(exist_ok=True)
        for name, data in inner.items():
            (sub / name).write_bytes(data)
    return root / f"aliexpress_{up}_datasets.zip" if layout == "outer" else root


@pytest.fixture
def aliexpress_raw() -> AliExpressRaw:
    return aliexpress_rows()


# ------------------------------------------------------------------------------ Ali-CCP
KEPT = ("101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207",
        "216", "508", "509", "702", "853", "301")
USER_FIELDS = KEPT[:9]
AD_FIELDS = KEPT[9:]


@dataclass
class AliCCPRaw:
    """common[split] = [(index, [(field, id, value)])]; skeleton[split] = [(sample id, click,
    purchase, index, [(field, id, value)])]."""

    common: dict[str, list[tuple[str, list]]]
    skeleton: dict[str, list[tuple[str, int, int, str, list]]]


def _features(rng, fields, n_frequent: int) -> list[tuple[str, int, str]]:
    out = []
    for f in fields:
        if rng.random() < 0.1:
            continue  # the field is absent from this row
        rare = rng.random() < 0.2
        fid = int(rng.integers(10**6, 10**9)) if rare else int(rng.integers(1, n_frequent))
        out.append((f, fid, f"{rng.random():.4f}"))
        if rng.random() < 0.05:
            out.append((f, 999, "1.0"))  # a repeated field: the first occurrence counts
    out.append(("150_14", int(rng.integers(1, 50)), "0.5"))  # a field that is not kept
    rng.shuffle(out)
    return out


def aliccp_rows(seed: int = 0, n_train: int = 400, n_test: int = 120) -> AliCCPRaw:
    rng = np.random.default_rng(seed)
    common, skeleton = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        idx = [hashlib.md5(f"{split}{i}".encode()).hexdigest()[:16] for i in range(25)]
        common[split] = [(i, _features(rng, USER_FIELDS, 4)) for i in idx]
        rows = []
        for k in range(n):
            click = int(rng.random() < 0.3)
            purchase = int(rng.random() < (0.3 if click else 0.03))  # some purchases w/o click
            feats = _features(rng, AD_FIELDS, 5)
            if rng.random() < 0.1:  # a user field in the skeleton row wins over the common one
                feats.insert(int(rng.integers(0, len(feats) + 1)), ("121", 3, "1.0"))
            rows.append((str(k + 1), click, purchase, idx[int(rng.integers(0, 25))], feats))
        skeleton[split] = rows
    return AliCCPRaw(common, skeleton)


def feature_list(feats) -> str:
    return "\x01".join(f"{f}\x02{i}\x03{v}" for f, i, v in feats)


def write_aliccp(raw: AliCCPRaw, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        lines = [f"{i},{len(fs)},{feature_list(fs)}" for i, fs in raw.common[split]]
        (root / f"common_features_{split}.csv").write_text("\n".join(lines) + "\n")
        lines = [f"{s},{c},{p},{i},{len(fs)},{feature_list(fs)}"
                 for s, c, p, i, fs in raw.skeleton[split]]
        (root / f"sample_skeleton_{split}.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def aliccp_raw() -> AliCCPRaw:
    return aliccp_rows()


@pytest.fixture
def raw_builders():
    """The builders above, for tests that need other seeds, layouts or hand-made damage."""
    from types import SimpleNamespace
    return SimpleNamespace(aliexpress_rows=aliexpress_rows, write_aliexpress=write_aliexpress,
                           aliccp_rows=aliccp_rows, write_aliccp=write_aliccp,
                           feature_list=feature_list, kept=KEPT, samples=SAMPLES)
