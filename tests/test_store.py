"""The result store: typed, versioned records with one reader and one writer each; records of
prlbench 0.1 (no schema) are read, later schemas and damaged files are refused with the fix."""

import json

import pytest

from prlbench.config import RunConfig
from prlbench.errors import ConfigError, StoreError
from prlbench.experiment.store import (SCHEMA, CompareRecord, Epoch, Outcome, Role, RunEntry,
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
