"""The result store: typed, versioned records with one reader and one writer each; records of
prlbench 0.1 (no schema) are read, later schemas and damaged files are refused with the fix."""

import json
import os

import pytest

from prlbench.config import RunConfig
from prlbench.errors import ConfigError, StoreError
from prlbench.store import (SCHEMA, CompareRecord, Epoch, Outcome, Role, RunEntry,
                                       RunFolder, RunRecord, RunStatus, Store)

# run.json as prlbench 0.1 wrote it for a finished run (no schema key)
V01_RUN = {"status": "done", "updated": "2026-11-29T10:00:00Z",
           "run_id": "synthetic-mmoe-bce-s1-0123456789", "data_sha256": "ab" * 32,
           "versions": {"prlbench": "0.1.0"}, "data_dir": "/data", "pid": 7,
           "argv": ["prlbench", "compare"], "threads": 1, "best_epoch": 2,
           "best_val_score": 0.7, "epochs_run": 4, "train_seconds": 3.5,
           "samples_per_s": 1000.0, "test_seconds": 0.2, "test": {"ctr_auc": 0.7}}


def test_run_record_round_trips_and_carries_its_schema(tmp_path):
    folder = RunFolder(tmp_path / "runs" / "x")
    folder.path.mkdir(parents=True)
    record = RunRecord(status=RunStatus.DONE, run_id="x", best_epoch=3, test={"ctr_auc": 0.6})
    folder.write_record(record)
    data = json.loads((folder.path / "run.json").read_text())
    assert data["schema"] == SCHEMA and data["status"] == "done"
    assert "error" not in data and "best_val_score" not in data  # unknown yet: left out
    assert folder.read_record() == record and folder.is_finished()


def test_update_record_drops_an_earlier_error_when_the_run_starts_again(tmp_path):
    folder = Store(tmp_path).partial("r1")
    folder.path.mkdir(parents=True)
    first = folder.update_record(RunStatus.RUNNING, run_id="r1", threads=2)
    assert (first.run_id, first.threads, first.error) == ("r1", 2, None)
    assert folder.update_record(RunStatus.INTERRUPTED, error="stopped").error == "stopped"
    again = folder.update_record(RunStatus.RUNNING)
    assert again.error is None and again.threads == 2 and again.status == RunStatus.RUNNING
    assert not folder.is_finished()  # a .partial folder never is


def test_a_run_json_of_prlbench_0_1_is_read_as_schema_0(tmp_path):
    folder = RunFolder(tmp_path / "r")
    folder.path.mkdir()
    (folder.path / "run.json").write_text(json.dumps({**V01_RUN, "old_key": 1}))
    record = folder.read_record()
    assert record.schema == 0 and record.status == RunStatus.DONE and record.best_epoch == 2
    assert folder.is_finished()
    # Rewritten by this version: the current schema, the same facts.
    folder.update_record(RunStatus.DONE)
    assert folder.read_record().schema == SCHEMA
    assert folder.read_record().best_val_score == 0.7


@pytest.mark.parametrize("content, fragment", [
    (json.dumps({**V01_RUN, "schema": SCHEMA + 1}), "newer than this prlbench reads"),
    (json.dumps({**V01_RUN, "status": "finished"}), "not a valid RunRecord"),
    (json.dumps([1, 2]), "expected a JSON object"),
    ('{"status": "do', "not valid JSON"),
    (json.dumps({"status": "done"}), "not a valid RunRecord"),
])
def test_a_damaged_or_newer_run_json_is_refused_with_the_file_and_the_fix(tmp_path, content,
                                                                         fragment):
    folder = RunFolder(tmp_path / "r")
    folder.path.mkdir()
    (folder.path / "run.json").write_text(content)
    with pytest.raises(StoreError, match=fragment) as e:
        folder.read_record()
    assert str(folder.path / "run.json") in str(e.value)


def test_history_and_config_round_trip(tmp_path):
    folder = RunFolder(tmp_path / "r")
    history = [Epoch(1, 0.5, 0.6, 0.7, 0.65, 1.0), Epoch(2, 0.4, 0.61, 0.72, 0.665, 2.0)]
    folder.write_history(history)
    assert folder.read_history() == history
    with pytest.raises(ConfigError, match="not a run folder"):
        folder.read_config()
    folder.write_config(RunConfig())
    assert folder.read_config() == RunConfig()


def test_compare_record_round_trips_with_typed_outcomes(tmp_path):
    store = Store(tmp_path)
    entry = RunEntry(run_id=None, status=Outcome.FAILED, role=Role.TABLE, dataset="synthetic",
                     model="mmoe", loss="bce", seed=1, error="CacheError: x")
    record = CompareRecord(datasets=("synthetic",), models=("mmoe",), losses=("bce",),
                           seeds=(1,), loss_grid={}, base=RunConfig().to_dict(), seconds=1.5,
                           runs=(entry,))
    store.write_compare(record)
    back = store.read_compare()
    assert back.runs == (entry,) and back.runs[0].status is Outcome.FAILED
    assert json.loads((tmp_path / "compare.json").read_text())["runs"][0]["status"] == "failed"


def test_publish_renames_a_partial_folder_into_place(tmp_path):
    store = Store(tmp_path)
    part = store.partial("r1")
    part.path.mkdir(parents=True)
    part.update_record(RunStatus.DONE, run_id="r1")
    final = store.publish(part)
    assert final.path == tmp_path / "runs" / "r1" and final.is_finished()
    assert not part.path.exists()


# ------------------------------------------- every value that can reach a table is checked
def _run_with_metrics(tmp_path, metrics: dict, rows: int | None = 3) -> RunFolder:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = RunFolder(tmp_path / "runs" / "r")
    folder.path.mkdir(parents=True)
    (folder.path / "metrics.json").write_text(json.dumps(metrics))
    if rows is not None:
        pq.write_table(pa.table({"row": list(range(rows))}), folder.path / "predictions.parquet")
    return folder


GOOD = {"ctr_auc": 0.7, "ctcvr_auc": 0.8, "cvr_auc": float("nan"), "ctr_logloss": 0.4,
        "cvr_clipped_share": 0.0, "rows": 3, "clicks": 2, "conversions": 1, "seconds": 0.5,
        "not_registered": "kept as it is"}


def test_read_metrics_accepts_what_evaluation_writes(tmp_path):
    folder = _run_with_metrics(tmp_path, GOOD)
    back = folder.read_metrics()
    assert back["ctr_auc"] == 0.7 and back["rows"] == 3 and back["cvr_auc"] != back["cvr_auc"]


@pytest.mark.parametrize("change, fragment", [
    ({"ctr_auc": 1.7}, "ctr_auc is 1.7, outside [0, 1]"),
    ({"ctcvr_auc": -0.1}, "ctcvr_auc is -0.1, outside [0, 1]"),
    ({"ctr_auc": float("inf")}, "ctr_auc is inf"),
    ({"ctr_logloss": -0.2}, "ctr_logloss is -0.2, below 0"),
    ({"ctr_logloss": float("-inf")}, "ctr_logloss is -inf"),
    ({"ctr_auc": "0.7"}, "ctr_auc is '0.7', not a number"),
    ({"ctr_auc": True}, "ctr_auc is True, not a number"),
    ({"cvr_clipped_share": 2.0}, "cvr_clipped_share is 2.0, outside [0, 1]"),
    ({"rows": 2.5}, "rows is 2.5, not a whole number"),
    ({"clicks": -1}, "clicks is -1, below 0"),
    ({"clicks": 4}, "clicks (4) exceed rows (3)"),
    ({"conversions": 4}, "conversions (4) exceed rows (3)"),
    ({"rows": 5, "clicks": 2}, "rows is 5 but predictions.parquet has 3 rows"),
])
def test_read_metrics_refuses_a_value_no_evaluation_writes(tmp_path, change, fragment):
    folder = _run_with_metrics(tmp_path, {**GOOD, **change})
    with pytest.raises(StoreError) as e:
        folder.read_metrics()
    message = str(e.value)
    assert fragment in message and str(folder.path / "metrics.json") in message
    assert f"prlbench evaluate {folder.path}" in message and "\n" not in message


def test_read_metrics_without_predictions_checks_the_counts_among_themselves(tmp_path):
    folder = _run_with_metrics(tmp_path, GOOD, rows=None)
    assert folder.read_metrics()["rows"] == 3


# --------------------------------------------- damaged files are StoreErrors naming the file
def test_a_truncated_checkpoint_is_a_store_error_naming_the_file(tmp_path):
    import torch

    folder = RunFolder(tmp_path / "r")
    folder.path.mkdir()
    folder.save_best({"w": torch.zeros(1000)})
    folder.save_state({"w": torch.zeros(1000)})
    for name, load, fix in (("best.pt", folder.load_best, "retrain it"),
                            ("state.pt", folder.load_state, "--restart")):
        data = (folder.path / name).read_bytes()
        (folder.path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(StoreError, match="is damaged or truncated") as e:
            load("cpu")
        assert str(folder.path / name) in str(e.value) and fix in str(e.value)


def test_a_truncated_predictions_file_is_a_store_error_naming_the_file(tmp_path):
    folder = _run_with_metrics(tmp_path, GOOD)
    path = folder.path / "predictions.parquet"
    path.write_bytes(path.read_bytes()[:20])
    for read in (folder.prediction_columns, lambda: folder.read_predictions(["row"]),
                 folder.read_metrics):
        with pytest.raises(StoreError, match="is damaged or truncated") as e:
            read()
        assert str(path) in str(e.value) and "prlbench evaluate" in str(e.value)


@pytest.mark.parametrize("name, content, fragment", [
    ("history.json", [{"epoch": "one", "train_loss": 0.5, "val_ctr_auc": 0.6,
                       "val_ctcvr_auc": 0.7, "val_score": 0.65}], "epoch is 'one', not int"),
    ("history.json", [{"epoch": 1, "train_loss": 0.5, "val_ctr_auc": 3.0,
                       "val_ctcvr_auc": 0.7, "val_score": 0.65}], "val_ctr_auc is 3.0, outside"),
    ("history.json", [[1, 0.5]], "expected a JSON object"),
    ("history.json", {"epoch": 1}, "expected a list of epochs"),
    ("run.json", {**V01_RUN, "threads": "two"}, "threads is 'two', not int"),
    ("run.json", {**V01_RUN, "best_epoch": 1.5}, "best_epoch is 1.5, not int"),
    ("run.json", {**V01_RUN, "test": [0.7]}, "test is [0.7], not dict"),
    # a candidate's validation score chooses its setting: 99.0 would win every comparison
    ("run.json", {**V01_RUN, "best_val_score": 99.0}, "best_val_score is 99.0, outside [0, 1]"),
    ("run.json", {**V01_RUN, "best_val_score": float("nan")}, "best_val_score is NaN"),
])
def test_a_record_with_a_value_of_the_wrong_type_is_refused(tmp_path, name, content, fragment):
    folder = RunFolder(tmp_path / "r")
    folder.path.mkdir()
    (folder.path / name).write_text(json.dumps(content))
    read = folder.read_history if name == "history.json" else folder.read_record
    with pytest.raises(StoreError, match="not a valid|expected") as e:
        read()
    assert fragment in str(e.value) and str(folder.path / name) in str(e.value)


# ------------------------------------------------------------------- the experiment lock
def test_a_second_compare_waits_for_the_first_and_is_told_whom(tmp_path):
    import threading

    store = Store(tmp_path / "out")
    told, order = [], []
    with store.experiment_lock():
        def second():
            with Store(tmp_path / "out").experiment_lock(on_wait=told.append):
                order.append("second")

        t = threading.Thread(target=second)
        t.start()
        t.join(0.5)
        assert t.is_alive() and order == []  # it waits while the first holds the lock
        order.append("first done")
    t.join(10)
    assert order == ["first done", "second"]
    assert len(told) == 1 and told[0].startswith(f"pid {os.getpid()}: ")
