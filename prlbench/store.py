"""The result store: the only module that reads and writes a run folder and an experiment's record.

    <out>/runs/<run-id>/            a finished run (RunFolder)
    <out>/runs/<run-id>.partial/    a run in progress, interrupted or failed
    <out>/runs/.locks/<run-id>.lock  held while a process trains or stores that run
    <out>/compare.json              the experiment's record (CompareRecord)

Every file of a run folder has one typed record here with one reader and one writer; `run.json`
carries the folder's schema version (`SCHEMA`). `docs/results-format.md` documents each record
(a test keeps it in sync with the dataclasses below). Writes are atomic (temporary file, then
rename); a run folder is renamed from `.partial` to its final name only once it is complete, so a
folder without the suffix is always finished.

Reads are checked: a record field of the wrong type, a metric outside the range of its kind
(prlbench.metrics), counts that disagree, a checkpoint or predictions file that torch / pyarrow
cannot read are each a StoreError naming the file and the fix, never a traceback or a wrong table.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import sys
import time
import typing
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from prlbench.config import RunConfig
from prlbench.errors import ConfigError, StoreError
from prlbench.fileio import atomic_write_bytes, read_json, write_json

SCHEMA = 1  # the version of every record below; one without (prlbench 0.1) is read as version 0
PARTIAL = ".partial"


class _Text(str, Enum):
    def __str__(self) -> str:
        return self.value


class RunStatus(_Text):
    """run.json's status."""

    RUNNING = "running"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    DONE = "done"


class Outcome(_Text):
    """What a compare did with one run of its grid (compare.json's runs[].status)."""

    TRAINED = "done"  # trained (or resumed) by this compare
    REUSED = "reused"  # finished before; reused as it was
    FAILED = "failed"
    MISSING = "missing"  # --tables-only: not trained yet


class Role(_Text):
    """Where a run of the grid appears (compare.json's runs[].role)."""

    TABLE = "table"  # a run the tables report
    # a candidate setting trained on a tuning seed to choose it on validation; never reported
    CANDIDATE = "candidate"


# ---------------------------------------------------------------------------- records
def _doc(text: str, **kw):
    """A record field with its documentation (docs/results-format.md is generated from it)."""
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class RunRecord:
    """run.json: a run's status and provenance; the test metrics once it is done. Fields that
    are not known yet (None) are left out of the file."""

    status: RunStatus = _doc("running, interrupted, failed or done")
    run_id: str = _doc("`<dataset>-<model>-<loss>-s<seed>-` and 10 hex digits of the sha256 of "
                       "the resolved config (device, threads, folders excluded) and of "
                       "data_sha256")
    updated: str = _doc("when the record was last written (UTC, ISO 8601)", default="")
    data_sha256: str | None = _doc("the cache's content: split files' sha256, columns, "
                                   "vocabulary (not when or from which path it was built)",
                                   default=None)
    data_dir: str | None = _doc("the cache it was trained on (absolute); evaluate's default",
                                default=None)
    threads: int | None = _doc("torch threads it trained with (CPU numbers depend on it)",
                               default=None)
    pid: int | None = _doc("the process that trained it", default=None)
    argv: list = _doc("that process's command line", default_factory=list)
    versions: dict = _doc("what made its numbers: prlbench, git_commit (installed from a clone; "
                          "-dirty with uncommitted changes), torch, cuda, numpy, python, "
                          "platform, device, device_name (the GPU's or CPU's model), gpu_driver "
                          "or cpu_native_bf16", default_factory=dict)
    best_epoch: int | None = _doc("the epoch chosen on validation (from 1)", default=None)
    best_val_score: float | None = _doc("its validation score (mean of CTR and CTCVR AUC)",
                                        default=None)
    epochs_run: int | None = _doc("epochs trained (early stopping may end before the "
                                  "maximum)", default=None)
    train_seconds: float | None = _doc("wall-clock seconds of training (a packed run: of its "
                                       "own steps, not its pack-mates')", default=None)
    samples_per_s: float | None = _doc("training samples per second", default=None)
    packed_with: list | None = _doc("the run ids trained in one pack with it (itself "
                                    "included; prlbench.engine.pack); absent for a solo run",
                                    default=None)
    pack_mode: str | None = _doc("how its pack trained: \"turns\" (each member its solo "
                                 "arithmetic, so its bytes are the solo run's); absent for a solo "
                                 "run and for the stacked packs of prlbench 0.3, which agreed with "
                                 "solo runs only to float tolerance", default=None)
    test_seconds: float | None = _doc("wall-clock seconds of the test evaluation",
                                      default=None)
    test: dict | None = _doc("the test metrics, as in metrics.json", default=None)
    error: str | None = _doc("why it failed or stopped (failed, interrupted)", default=None)
    manifest_sha256: str | None = _doc("legacy: what early prlbench 0.1 recorded instead "
                                       "of data_sha256; such a run is refused with a message "
                                       "to retrain", default=None)
    schema: int = _doc("the version of this run folder's layout", default=SCHEMA)


@dataclass(frozen=True)
class Epoch:
    """One entry of history.json (a list, one entry per epoch): the validation metrics after
    that epoch."""

    epoch: int = _doc("the epoch, from 1")
    train_loss: float = _doc("the training objective, mean over the epoch's batches")
    val_ctr_auc: float = _doc("CTR AUC on the validation split")
    val_ctcvr_auc: float = _doc("CTCVR AUC on the validation split")
    val_score: float = _doc("what early stopping watches: the mean of the two AUCs")
    train_seconds: float | None = _doc("wall-clock seconds of training so far", default=None)


@dataclass(frozen=True)
class Failure:
    """failure.json, in a `.partial` folder: why a compare's run failed."""

    run_id: str = _doc("the run")
    error: str = _doc("the exception, one line")
    trace: str = _doc("its traceback")


@dataclass(frozen=True)
class RunEntry:
    """One entry of compare.json's runs: a run of the grid and what the compare did with it."""

    run_id: str | None = _doc("the run (null: it failed before its id was known, e.g. a "
                              "data set not preprocessed)")
    status: Outcome = _doc("done (trained by this compare), reused, failed, or missing "
                           "(--tables-only: not trained yet)")
    role: Role = _doc("table (reported) or candidate (a candidate setting trained on a tuning "
                      "seed to choose the settings on validation; never reported)")
    dataset: str = _doc("its data set")
    model: str = _doc("its model")
    loss: str = _doc("its loss")
    seed: int = _doc("its seed")
    error: str = _doc("the error of a failed run", default="")
    best_val_score: float | None = _doc("its validation score (what candidates are chosen by)",
                                        default=None)
    seconds: float = _doc("wall-clock seconds this compare spent on it", default=0.0)
    run_dir: str | None = _doc("its finished folder", default=None)


@dataclass(frozen=True)
class CompareRecord:
    """compare.json: the grid, the settings every run shares and every run's outcome. Written
    when the grid ends (Ctrl-C leaves the previous one); --tables-only updates only `test`."""

    datasets: tuple = _doc("the grid's data sets")
    models: tuple = _doc("its models")
    losses: tuple = _doc("its losses as given, the baseline first (a loss with settings of its "
                         "own as pwiser[norm=paper])")
    seeds: tuple = _doc("its reported seeds")
    loss_grid: dict = _doc("loss parameter -> candidate values (one value: fixed)")
    base: dict = _doc("the configuration every run starts from (as config.json)")
    seconds: float = _doc("wall-clock seconds of the grid")
    runs: tuple = _doc("one entry per run (below): the table's runs, then the candidates")
    train_grid: dict = _doc("training setting (lr, weight_decay) -> candidate values, for every "
                            "arm (empty: the base configuration's)", default_factory=dict)
    tune_seeds: tuple = _doc("the seeds candidate settings are chosen on (mean validation "
                             "score), disjoint from seeds; used only where an arm has candidates",
                             default=())
    test: dict = _doc("how the tables' markers were decided: name (the test: twolevel, wilcoxon, "
                      "ttest or bootstrap), correction (holm or bh), alpha, equivalence (the "
                      "margins per metric kind, or null); --tables-only updates it",
                      default_factory=dict)
    schema: int = _doc("the version of this record", default=SCHEMA)


def _to_json(record) -> dict:
    return asdict(record)


def _present(record) -> dict:
    """A record's fields without those not known yet (None): run.json grows as a run goes."""
    return {k: v for k, v in asdict(record).items() if v is not None}


_ENUMS = {RunRecord: {"status": RunStatus}, RunEntry: {"status": Outcome, "role": Role}}


def _from_json(cls, data: Any, path: Path, fix: str):
    """A record of `cls` from parsed JSON. A record without `schema` (written by prlbench 0.1) is
    read as version 0, whose keys are the same; keys this version does not know are dropped; a
    record of a later schema is refused."""
    if not isinstance(data, dict):
        raise StoreError(f"{path}: expected a JSON object, got {type(data).__name__}; {fix}")
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in data.items() if k in known}
    if "schema" in known:
        version = values.setdefault("schema", 0)
        if not isinstance(version, int) or version > SCHEMA:
            raise StoreError(f"{path} has schema {version!r}, newer than this prlbench reads "
                             f"({SCHEMA}); upgrade prlbench (pip install -U prlbench)")
    try:
        for key, enum in _ENUMS.get(cls, {}).items():
            values[key] = enum(values[key])
        _check_types(cls, values)
        return cls(**values)
    except (TypeError, ValueError, KeyError) as e:
        raise StoreError(f"{path}: not a valid {cls.__name__} record ({e}); {fix}") from None


# JSON has no tuples: a list stands for one. A float field takes an int (JSON writes 1.0 as 1.0,
# but a hand-made record may say 1).
_JSON_TYPES = {tuple: (tuple, list), float: (int, float)}


def _check_types(cls, values: dict) -> None:
    """Every value of the type its field declares, and every registered metric in its range:
    a record is trusted by every reader after this (a wrong type would surface later as a
    traceback in the report, a value out of range as a wrong table)."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        allowed = tuple(t for a in typing.get_args(hints[key]) or (hints[key],)
                        for t in _JSON_TYPES.get(a, (a,)))
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            names = " or ".join(sorted({getattr(a, "__name__", str(a)) for a in allowed}
                                       - {"NoneType"}))
            raise ValueError(f"{key} is {value!r}, not {names}")
        if cls is Epoch and value is not None:
            _check_metric(key, value)
        elif key == "best_val_score" and value is not None:  # it chooses epochs and settings
            if isinstance(value, float) and math.isnan(value):
                raise ValueError(f"{key} is NaN")
            _check_metric("val_score", value, key)


def _check_metric(name: str, value: Any, label: str | None = None) -> None:
    """ValueError unless `value` lies in the range its kind (prlbench.metrics) allows; NaN is
    allowed where evaluation writes it for a metric that is undefined (e.g. no conversions).
    Names the registry does not know are not checked (they reach no table). `label`: the
    field named in the message (default `name`)."""
    from prlbench.metrics import METRICS

    if name not in METRICS:
        return
    kind = METRICS.get(name).kind
    shown = label or name
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{shown} is {value!r}, not a number")
    if kind == "count":
        if not isinstance(value, int):
            raise ValueError(f"{shown} is {value!r}, not a whole number (a count)")
    elif math.isnan(value):
        if kind in _UNDEFINED_OK:
            return
        raise ValueError(f"{shown} is NaN")
    lo, hi = _RANGES[kind]
    if math.isinf(value):
        raise ValueError(f"{shown} is {value!r}, not a finite number")
    if hi is not None and not lo <= value <= hi:
        raise ValueError(f"{shown} is {value!r}, outside [{lo}, {hi}] (the range of a {kind} "
                         "metric)")
    if lo is not None and value < lo:
        raise ValueError(f"{shown} is {value!r}, below {lo} (the least a {kind} metric can be)")


# prlbench.metrics' kinds -> (lowest, highest) value; None: unbounded. AUCs, scores (a mean of
# AUCs) and shares are fractions; loglosses, counts and seconds are >= 0; a training objective
# only needs to be finite.
_RANGES = {"auc": (0, 1), "score": (0, 1), "share": (0, 1), "logloss": (0, None),
           "count": (0, None), "seconds": (0, None), "loss": (None, None)}
_UNDEFINED_OK = {"auc", "score", "share", "logloss"}


def _read(path: Path, fix: str) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        raise StoreError(f"{path} is missing; {fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{path} is not valid JSON ({e}); {fix}") from None


# ------------------------------------------------------------------------- run folder
class RunFolder:
    """One run's folder; every file in it is read and written here."""

    CONFIG, RECORD, HISTORY = "config.json", "run.json", "history.json"
    METRICS, PREDICTIONS = "metrics.json", "predictions.parquet"
    BEST, STATE, FAILURE, RAY = "best.pt", "state.pt", "failure.json", "ray.json"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def is_partial(self) -> bool:
        return self.path.name.endswith(PARTIAL)

    @property
    def run_id(self) -> str:
        return self.path.name.removesuffix(PARTIAL)

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    @classmethod
    def metrics_name(cls, split: str = "test") -> str:
        """metrics.json for the test split; metrics.<split>.json for an extra evaluation split
        of the data set (KuaiRand-Pure's test_random)."""
        return cls.METRICS if split == "test" else f"metrics.{split}.json"

    @classmethod
    def predictions_name(cls, split: str = "test") -> str:
        return cls.PREDICTIONS if split == "test" else f"predictions.{split}.parquet"

    def _fix(self) -> str:
        return ("retrain it (delete the folder and rerun the command), or leave it out"
                if not self.is_partial else "rerun the command, or delete the folder")

    # -- config.json
    def write_config(self, cfg: RunConfig) -> None:
        write_json(self.path / self.CONFIG, cfg.to_dict())

    def read_config(self) -> RunConfig:
        if not self.has(self.CONFIG):
            raise ConfigError(f"{self.path} is not a run folder (no {self.CONFIG}); runs live "
                              "in <out>/runs/<run-id>/")
        try:
            return RunConfig.from_dict(_read(self.path / self.CONFIG, self._fix()))
        except ConfigError as e:
            raise StoreError(f"{self.path / self.CONFIG}: {e}; {self._fix()}") from None

    # -- run.json
    def read_record(self) -> RunRecord:
        return _from_json(RunRecord, _read(self.path / self.RECORD, self._fix()),
                          self.path / self.RECORD, self._fix())

    def write_record(self, record: RunRecord) -> None:
        write_json(self.path / self.RECORD, _present(record))

    def update_record(self, status: RunStatus, **changes) -> RunRecord:
        """run.json with `status` and `changes`; an earlier attempt's error is dropped when the
        run starts again or finishes. Creates the record (with `run_id` in `changes`)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.has(self.RECORD):
            record = replace(self.read_record(), schema=SCHEMA)
            if status in (RunStatus.RUNNING, RunStatus.DONE):
                record = replace(record, error=None)
            record = replace(record, status=status, updated=now, **changes)
        else:
            record = RunRecord(**{"run_id": self.run_id, **changes, "status": status,
                                  "updated": now})
        self.write_record(record)
        return record

    def is_finished(self) -> bool:
        return (not self.is_partial and self.has(self.RECORD)
                and self.read_record().status == RunStatus.DONE)

    # -- history.json
    def write_history(self, history: list[Epoch]) -> None:
        write_json(self.path / self.HISTORY, [_to_json(e) for e in history])

    def read_history(self) -> list[Epoch]:
        data = _read(self.path / self.HISTORY, self._fix())
        if not isinstance(data, list):
            raise StoreError(f"{self.path / self.HISTORY}: expected a list of epochs; "
                             f"{self._fix()}")
        return [_from_json(Epoch, e, self.path / self.HISTORY, self._fix()) for e in data]

    # -- metrics.json and predictions.parquet (written by evaluation)
    def write_metrics(self, metrics: Mapping[str, float | int], split: str = "test") -> None:
        write_json(self.path / self.metrics_name(split), dict(metrics))

    def read_metrics(self, split: str = "test") -> dict[str, float | int]:
        """metrics.json, checked: every registered metric in its range (prlbench.metrics'
        kinds), the counts consistent among themselves and with predictions.parquet's rows.
        Every table reads its numbers through here, so none shows a value no evaluation writes
        (an AUC of 1.7, an infinite logloss)."""
        path = self.path / self.metrics_name(split)
        data = _read(path, self._evaluate_fix(split))
        if not isinstance(data, dict):
            raise StoreError(f"{path}: expected a JSON object; {self._evaluate_fix(split)}")
        try:
            for name, value in data.items():
                _check_metric(name, value)
            self._check_counts(data, split)
        except ValueError as e:
            raise StoreError(f"{path}: {e}, which no evaluation writes (the file was changed or "
                             f"damaged); {self._evaluate_fix(split)}") from None
        return data

    def _check_counts(self, data: dict, split: str = "test") -> None:
        rows = data.get("rows")
        if rows is None:
            return
        for name in ("clicks", "conversions"):
            if data.get(name, 0) > rows:
                raise ValueError(f"{name} ({data[name]}) exceed rows ({rows})")
        predictions = self.predictions_name(split)
        if self.has(predictions):  # its footer holds the row count: cheap to read
            written = self._parquet(lambda pq, p: pq.read_metadata(p).num_rows, split)
            if written != rows:
                raise ValueError(f"rows is {rows} but {predictions} has {written} rows")

    def _parquet(self, read, split: str = "test"):
        """`read(pyarrow.parquet, path)` of the split's predictions; a damaged file is a
        StoreError naming it (pyarrow's own error says neither the file nor the fix)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.path / self.predictions_name(split)
        try:
            return read(pq, path)
        except FileNotFoundError:
            raise StoreError(f"{path} is missing; {self._evaluate_fix(split)}") from None
        except (pa.ArrowException, OSError, ValueError) as e:
            raise StoreError(f"{path} is damaged or truncated ({_one_line(e)}); "
                             f"{self._evaluate_fix(split)}") from None

    def _evaluate_fix(self, split: str = "test") -> str:
        import shlex

        extra = "" if split == "test" else f" --split {split}"
        return f"recompute it with: prlbench evaluate {shlex.quote(str(self.path))}{extra}"

    def write_predictions(self, table, split: str = "test") -> None:
        """A pyarrow Table: one row per test row (see docs/results-format.md); written whole
        or not at all, like every file here."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="zstd")
        atomic_write_bytes(self.path / self.predictions_name(split), buf.getvalue().to_pybytes())

    def prediction_columns(self, split: str = "test") -> set[str] | None:
        """The columns of the split's predictions, None when the file is missing."""
        if not self.has(self.predictions_name(split)):
            return None
        return set(self._parquet(lambda pq, p: pq.read_schema(p).names, split))

    def read_predictions(self, columns: list[str], split: str = "test") -> dict:
        """column -> numpy array."""
        table = self._parquet(lambda pq, p: pq.read_table(p, columns=sorted(columns)), split)
        return {c: table.column(c).to_numpy() for c in columns}

    # -- best.pt and state.pt (torch; never pickle: weights_only)
    def save_best(self, state_dict: dict) -> None:
        _torch_save(state_dict, self.path / self.BEST)

    def load_best(self, device: str) -> dict:
        if not self.has(self.BEST):
            raise ConfigError(f"{self.path} has no {self.BEST}: the run never finished an epoch")
        return _torch_load(self.path / self.BEST, device, self._fix())

    def save_state(self, state: dict) -> None:
        _torch_save(state, self.path / self.STATE)

    def load_state(self, device: str) -> dict:
        return _torch_load(self.path / self.STATE, device, STATE_FIX)

    def drop_state(self) -> None:
        (self.path / self.STATE).unlink(missing_ok=True)

    # -- failure.json, ray.json
    def write_failure(self, failure: Failure) -> None:
        write_json(self.path / self.FAILURE, _to_json(failure))

    def drop_failure(self) -> None:
        (self.path / self.FAILURE).unlink(missing_ok=True)

    def files(self) -> dict[str, bytes]:
        """Every file of the folder, for carrying a run between machines (Ray)."""
        return {p.name: p.read_bytes() for p in self.path.iterdir() if p.is_file()}

    def write_files(self, files: Mapping[str, bytes]) -> None:
        for name, data in files.items():
            atomic_write_bytes(self.path / name, data)
        write_json(self.path / self.RAY, {"stored": time.time()})


def _torch_save(obj: Any, path: Path) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


STATE_FIX = ("start the run over: the same train command with --restart instead of --resume "
             "(prlbench compare sets a damaged state.pt aside and starts over by itself)")


class DamagedCheckpoint(StoreError):
    """best.pt or state.pt that torch cannot read (truncated by a full disk, a killed copy)."""

    def __init__(self, path: Path, reason: str, fix: str) -> None:
        super().__init__(f"{path} is damaged or truncated ({reason}); {fix}")
        self.path, self.reason = Path(path), reason


def _torch_load(path: Path, device: str, fix: str) -> Any:
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, weights_only=True, map_location=device)
    except (RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError,
            zipfile.BadZipFile) as e:
        raise DamagedCheckpoint(path, _one_line(e), fix) from None


def _one_line(e: BaseException) -> str:
    """An exception's message on one line, shortened (torch's can run to many lines)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# ---------------------------------------------------------------------- the experiment
def _refuse_links(*paths: Path) -> None:
    """A link in --out that prlbench did not make is refused, not followed (a checked path
    can still be replaced by another process later: --out should not be writable by others)."""
    for path in paths:
        if path.is_symlink():
            raise ConfigError(_link_message(path))


def _link_message(path: Path) -> str:
    return (f"{path} is a symbolic link; prlbench does not follow links it did not make in "
            "--out: remove it")


class Store:
    """An experiment folder (`--out`): its runs, their locks and compare.json."""

    COMPARE = "compare.json"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    def finished(self, run_id: str) -> RunFolder:
        return RunFolder(self.runs_dir / run_id)

    def partial(self, run_id: str) -> RunFolder:
        """The run's `.partial` folder, which is written into: refused where it, or runs/, is
        a link (--out may be shared; a link there would send a run's files elsewhere)."""
        path = self.runs_dir / f"{run_id}{PARTIAL}"
        _refuse_links(self.runs_dir, path)
        return RunFolder(path)

    @contextmanager
    def lock(self, run_id: str) -> Iterator[None]:
        """Hold `runs/.locks/<id>.lock` exclusively: one process at a time trains or stores a
        run; another waits for it. The file is never truncated and never a link followed."""
        with self._locked(self.runs_dir / ".locks" / f"{run_id}.lock"):
            yield

    @property
    def compare_lock(self) -> Path:
        """`runs/.locks/.compare`: held while compare.json and the report are written."""
        return self.runs_dir / ".locks" / ".compare"

    @contextmanager
    def experiment_lock(self, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold `runs/.locks/.compare` exclusively while compare.json and the report are
        written, so that they always come from one compare; a second compare on this folder
        waits, and `on_wait(holder)` is told first who holds it (pid and command line, as the
        holder wrote them into the lock file)."""
        with self._locked(self.compare_lock, on_wait=on_wait) as fd:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)}\n".encode(), 0)
            yield

    @contextmanager
    def _locked(self, path: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[int]:
        """An exclusive flock on `path` under runs/.locks/ (made if need be, never a link
        followed); `on_wait(what the file says)` first if another process holds it."""
        _refuse_links(self.runs_dir, path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        _refuse_links(self.runs_dir, path.parent)  # made by another process meanwhile
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as e:
            if path.is_symlink():  # ELOOP; FreeBSD and macOS say EMLINK
                raise ConfigError(_link_message(path)) from None
            raise e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                            or "another compare")
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def publish(self, part: RunFolder) -> RunFolder:
        """Rename a complete partial folder into place; if another process won the race, keep
        theirs."""
        final = self.finished(part.run_id)
        try:
            os.rename(part.path, final.path)
        except OSError:
            if final.is_finished():
                shutil.rmtree(part.path, ignore_errors=True)
            else:
                raise
        return final

    def record_failure(self, run_id: str, error: str, trace: str) -> None:
        """`runs/<id>.partial/failure.json`, next to any checkpoint (also for a run that failed
        on a Ray worker, which left no folder here)."""
        self.partial(run_id).write_failure(Failure(run_id, error, trace))

    def write_compare(self, record: CompareRecord) -> None:
        write_json(self.root / self.COMPARE, _to_json(record))

    def read_compare(self) -> CompareRecord:
        path = self.root / self.COMPARE
        fix = "rerun the compare that wrote it"
        record = _from_json(CompareRecord, _read(path, fix), path, fix)
        return replace(record, runs=tuple(_from_json(RunEntry, r, path, fix)
                                          for r in record.runs))
