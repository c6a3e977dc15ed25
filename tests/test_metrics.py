"""The metric registry matches what the engine writes and what the report shows; every
registered model, loss and data set carries the names and properties the report and the
command line read from it."""

import subprocess
import sys

import numpy as np
import pytest

from prlbench import metrics
from prlbench.data.datasets import DATASETS, DEFAULT_DATASET
from prlbench.engine import evaluate  # not `import test_metrics`: pytest would collect it
from prlbench.losses import LOSSES, loss_info
from prlbench.metrics import METRICS, REPORTED, TABLES, lower_is_better, table_metrics
from prlbench.models import MODEL_PRESETS, MODELS


def _metrics_json(groups: bool, genuine: bool) -> dict:
    rng = np.random.default_rng(0)
    n = 200
    click = (rng.random(n) < 0.4).astype(np.int8)
    conversion = (click & (rng.random(n) < 0.5)).astype(np.int8)
    p_ctr = rng.random(n).astype(np.float32)
    p_ctcvr = (p_ctr * rng.random(n)).astype(np.float32)
    preds = {"p_ctr": p_ctr, "p_ctcvr": p_ctcvr, "p_cvr": np.clip(p_ctcvr / p_ctr, 0, 1)}
    m = evaluate.test_metrics(preds, click, conversion,
                              rng.integers(0, 20, n) if groups else None,
                              (click & (rng.random(n) < 0.8)).astype(np.int8) if genuine
                              else None)
    m["seconds"] = 0.1  # evaluate_on_test adds the time it took
    return m


@pytest.mark.parametrize("groups, genuine", [(True, True), (False, False)])
def test_every_key_of_metrics_json_is_registered_as_a_test_metric(groups, genuine):
    m = _metrics_json(groups, genuine)
    assert ("ctr_gauc" in m) == groups and ("ctr_auc_noise_free" in m) == genuine
    for key in m:
        assert key in METRICS, key
        assert METRICS.get(key).split == "test", key


def test_every_key_of_history_json_is_registered():
    from dataclasses import fields

    from prlbench.store import Epoch  # one history.json entry

    keys = [f.name for f in fields(Epoch) if f.name != "epoch"]  # epoch: the index, no metric
    assert "val_score" in keys
    for key in keys:
        assert key in METRICS, key
        assert METRICS.get(key).split in ("train", "val"), key


def test_directions():
    for m in (METRICS.get(n) for n in METRICS):
        if m.kind == "auc":
            assert m.higher_is_better is True and not lower_is_better(m.name), m.name
        if m.kind == "logloss":
            assert m.higher_is_better is False and lower_is_better(m.name), m.name
    assert METRICS.get("val_score").higher_is_better is True
    assert METRICS.get("train_loss").higher_is_better is False
    for name in ("rows", "clicks", "conversions", "seconds", "cvr_clipped_share"):
        assert METRICS.get(name).higher_is_better is None and not lower_is_better(name)


def test_tables_and_their_columns():
    from prlbench.report.table import Table

    assert table_metrics("auc") == ("ctr_auc", "ctcvr_auc", "cvr_auc")
    assert table_metrics("logloss") == ("ctr_logloss", "ctcvr_logloss", "cvr_logloss")
    assert REPORTED == table_metrics("auc") + table_metrics("logloss")
    for t in TABLES:
        assert {metrics.family(n) for n in table_metrics(t)} == {t}
        table = Table(kind=t, metrics=table_metrics(t), rows=(), caption="", label="",
                      baseline="bce", wtl=(), notes=())
        assert table.columns == tuple(METRICS.get(n).display_name for n in table_metrics(t))
    assert Table(kind="auc", metrics=("ctr_auc", "ctr_gauc"), rows=(), caption="", label="",
                 baseline="bce", wtl=(), notes=()).columns == ("CTR AUC", "CTR GAUC")
    # Out of the tables: no family of their own (GAUC is an AUC; counts are in no family).
    assert METRICS.get("ctr_gauc").table is None and metrics.family("ctr_gauc") == "auc"
    with pytest.raises(ValueError, match="unknown table"):
        table_metrics("gauc")


def test_delong_reads_the_columns_each_auc_is_computed_on():
    from prlbench.report import _delong

    assert _delong.SPECS == {
        "ctr_auc": ("click", "p_ctr", None),
        "ctcvr_auc": ("conversion", "p_ctcvr", None),
        "cvr_auc": ("conversion", "p_cvr", "click"),
        "ctr_auc_noise_free": ("genuine_click", "p_ctr", None),
    }


def test_a_summary_of_an_unregistered_metric_is_refused():
    import pandas as pd

    from prlbench.errors import DataError
    from prlbench.report import analysis

    with pytest.raises(DataError, match="unknown metric.*valid metrics: ctr_auc"):
        analysis.summarise(pd.DataFrame({"ctr_auc": [0.7]}), metrics=("ctr_auc", "ctr_aucc"))


def test_a_metric_with_an_unknown_kind_split_or_table_is_refused():
    with pytest.raises(ValueError, match="kind"):
        metrics.Metric("x", "X", "ratio", "test", "")
    with pytest.raises(ValueError, match="split"):
        metrics.Metric("x", "X", "auc", "holdout", "")
    with pytest.raises(ValueError, match="table"):
        metrics.Metric("x", "X", "auc", "test", "", table="gauc")


def test_every_model_loss_and_data_set_has_a_display_name():
    from prlbench.report import table as tm

    for name in MODELS:
        assert MODELS.get(name).display_name, name
        assert tm.model_name(name) == MODELS.get(name).display_name
    for name in LOSSES:
        assert loss_info(name).display_name, name
        assert tm.loss_name(name) == loss_info(name).display_name
    for name in DATASETS:
        assert DATASETS.get(name).display_name, name
        assert tm.dataset_name(name) == DATASETS.get(name).display_name
    names = [tm.model_name(n) for n in MODELS] + [tm.loss_name(n) for n in LOSSES] + [
        tm.dataset_name(n) for n in DATASETS]
    assert len(set(names)) == len(names)  # no two things shown alike
    assert tm.model_name("unregistered") == "unregistered"


def test_data_set_properties():
    assert DATASETS.get(DEFAULT_DATASET).generated  # the default runs with no download
    for name in DATASETS:
        spec = DATASETS.get(name)
        assert spec.default_preset in MODEL_PRESETS, name
        # generated <=> nothing to fetch (download refuses a generated data set)
        assert spec.generated == (not spec.raw_files and spec.url is None), name
    assert DATASETS.get("synthetic").default_preset == "small"
    assert DATASETS.get("aliccp").default_preset == "paper"


def test_metric_registry_imports_nothing_heavy():
    code = ("import sys; import prlbench.metrics, prlbench.config; "
            "print(sorted(m for m in ('torch', 'pandas', 'pyarrow', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
