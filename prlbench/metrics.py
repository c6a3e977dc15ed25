"""The registry of metrics: every number a run writes to metrics.json (test) and history.json
(per epoch), with what it measures, which way is better, its split, its display name and the
report table it belongs to.

One record per metric, so the report's columns, correction families and "better" direction, the
columns DeLong's test reads and the plots' labels all come from one place, and a metric's
direction is stated rather than guessed from its name. The numbers themselves are computed by
the engine (prlbench.engine.evaluate); tests/test_metrics.py checks that every key it writes is
registered here.

Imports nothing heavy (no numpy, pandas or torch): light commands must stay instant.
"""

from __future__ import annotations

from dataclasses import dataclass

from prlbench.registry import Registry

METRICS: Registry["Metric"] = Registry("metric")

TABLES = ("auc", "logloss")  # the report's tables; each is also one multiple-testing family
SPLITS = ("train", "val", "test")
# What a metric's number is -> whether higher is better (None: a count, share or time, which
# describes a run but is no measure of quality).
KINDS: dict[str, bool | None] = {"auc": True, "score": True, "logloss": False, "loss": False,
                                 "share": None, "count": None, "seconds": None}


@dataclass(frozen=True)
class Metric:
    name: str  # its key in metrics.json / history.json
    display_name: str  # in tables and plots
    kind: str  # one of KINDS: decides the direction and whether RelaImpr applies (AUCs)
    split: str  # one of SPLITS: the rows it is measured on
    description: str  # one line, for docs and listings
    table: str | None = None  # the report table that shows it (one of TABLES); None: none
    # The probability it scores: p_<task> of predictions.parquet ("ctr", "ctcvr", "cvr").
    task: str | None = None
    # A pooled metric's label column, and the column that must be 1 for a row to count (None:
    # every row). label None: not one (label, score) comparison over rows (GAUC averages
    # per-group AUCs; counts and times compare nothing).
    label: str | None = None
    rows: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name!r}: kind {self.kind!r} is not one of "
                             f"{', '.join(KINDS)}")
        if self.split not in SPLITS:
            raise ValueError(f"metric {self.name!r}: split {self.split!r} is not one of "
                             f"{', '.join(SPLITS)}")
        if self.table is not None and self.table not in TABLES:
            raise ValueError(f"metric {self.name!r}: table {self.table!r} is not one of "
                             f"{', '.join(TABLES)}")

    @property
    def higher_is_better(self) -> bool | None:
        return KINDS[self.kind]

    @property
    def is_auc(self) -> bool:
        return self.kind == "auc"

    @property
    def score(self) -> str | None:
        """The predictions.parquet column it scores ("p_ctr"), if any."""
        return f"p_{self.task}" if self.task else None

    @property
    def family(self) -> str:
        """Its multiple-testing family: its table's, else its kind (an AUC shown in no table is
        still corrected with the AUCs when a summary includes it)."""
        return self.table or self.kind


def _add(metric: Metric) -> None:
    METRICS.register(metric.name)(metric)


# ---- test split (metrics.json); the tables' columns in registry order
_add(Metric("ctr_auc", "CTR AUC", "auc", "test", "CTR AUC over all impressions",
            table="auc", task="ctr", label="click"))
_add(Metric("ctcvr_auc", "CTCVR AUC", "auc", "test", "CTCVR AUC over all impressions",
            table="auc", task="ctcvr", label="conversion"))
_add(Metric("cvr_auc", "CVR AUC", "auc", "test", "CVR AUC over clicked impressions only",
            table="auc", task="cvr", label="conversion", rows="click"))
_add(Metric("ctr_logloss", "CTR logloss", "logloss", "test", "CTR logloss over all impressions",
            table="logloss", task="ctr", label="click"))
_add(Metric("ctcvr_logloss", "CTCVR logloss", "logloss", "test",
            "CTCVR logloss over all impressions", table="logloss", task="ctcvr",
            label="conversion"))
_add(Metric("cvr_logloss", "CVR logloss", "logloss", "test",
            "CVR logloss over clicked impressions only; only for models whose p_cvr is a "
            "probability by construction (ESMM), not for a capped p_ctcvr / p_ctr",
            table="logloss", task="cvr",
            label="conversion", rows="click"))
_add(Metric("ctr_gauc", "CTR GAUC", "auc", "test",
            "group AUC of CTR: per-group AUCs weighted by the group's rows (data with groups)",
            task="ctr"))
_add(Metric("ctr_auc_noise_free", "CTR AUC (noise-free)", "auc", "test",
            "CTR AUC against the generator's genuine (not noise) clicks (synthetic data only)",
            task="ctr", label="genuine_click"))
_add(Metric("cvr_clipped_share", "CVR clipped share", "share", "test",
            "share of clicked rows where p_ctcvr > p_ctr, so p_cvr = p_ctcvr / p_ctr is capped "
            "at 1", task="cvr"))
_add(Metric("rows", "Rows", "count", "test", "test impressions"))
_add(Metric("clicks", "Clicks", "count", "test", "test clicks"))
_add(Metric("conversions", "Conversions", "count", "test", "test conversions"))
_add(Metric("seconds", "Test seconds", "seconds", "test",
            "wall-clock seconds of the test evaluation (prediction and metrics)"))

# ---- per epoch (history.json)
_add(Metric("train_loss", "Train loss", "loss", "train",
            "the arm's training objective, mean over the epoch's batches"))
_add(Metric("val_ctr_auc", "val. CTR AUC", "auc", "val", "CTR AUC on the validation split",
            task="ctr", label="click"))
_add(Metric("val_ctcvr_auc", "val. CTCVR AUC", "auc", "val",
            "CTCVR AUC on the validation split", task="ctcvr", label="conversion"))
_add(Metric("val_score", "val. score", "score", "val",
            "mean of validation CTR and CTCVR AUC: what early stopping watches"))
_add(Metric("train_seconds", "Train seconds", "seconds", "train",
            "wall-clock seconds of training so far, summed over the epochs"))


def select(*, split: str | None = None, kind: str | None = None,
           table: str | None = None) -> tuple[Metric, ...]:
    """The registered metrics with the given properties, in registry order."""
    ms = (METRICS.get(n) for n in METRICS)
    return tuple(m for m in ms if (split is None or m.split == split)
                 and (kind is None or m.kind == kind) and (table is None or m.table == table))


def table_metrics(table: str) -> tuple[str, ...]:
    """The columns of one report table: table_metrics("auc") -> ctr_auc, ctcvr_auc, cvr_auc."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; valid tables: {', '.join(TABLES)}")
    return tuple(m.name for m in select(table=table))


# Every metric that goes in a table: what a report summarises unless told otherwise.
REPORTED = tuple(n for t in TABLES for n in table_metrics(t))


def lower_is_better(name: str) -> bool:
    return METRICS.get(name).higher_is_better is False


def family(name: str) -> str:
    return METRICS.get(name).family


def is_auc(name: str) -> bool:
    return METRICS.get(name).is_auc


def display_name(name: str) -> str:
    """How tables and plots show a metric (an unregistered name is shown as it is)."""
    return METRICS.get(name).display_name if name in METRICS else name
