"""The engine end to end on a small synthetic data set: learning, determinism, resume, NaN."""

import json
import time
from pathlib import Path

import pytest
import torch

from prlbench.config import resolve
from prlbench.data.synthetic import preprocess_synthetic
from prlbench.engine import loop as loop_mod
from prlbench.engine import run as train_mod
from prlbench.engine.run import evaluate_run
from prlbench.errors import ConfigError, Interrupted, TrainingError
from prlbench.fileio import read_json, write_json


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    preprocess_synthetic(d, rows=40_000, seed=0, progress=False)
    return d


def _cfg(**train):
    t = {"epochs": 2, "batch_size": 1024, "threads": 1, **train}
    return resolve(None, {"model": {"name": "mmoe"}, "loss": {"name": "pwiser"}, "train": t})


def _metrics(run_dir: Path) -> dict:
    m = read_json(run_dir / "metrics.json")
    m.pop("seconds")
    return m


@pytest.mark.slow
def test_training_learns_and_writes_a_complete_run_folder(data_dir, tmp_path):
    run = train_mod.train_run(_cfg(epochs=3), data_dir=data_dir, out=tmp_path, progress=False)
    for name in ("config.json", "run.json", "history.json", "best.pt", "metrics.json",
                 "predictions.parquet"):
        assert (run / name).exists(), name
    assert not (run / "state.pt").exists()
    history = read_json(run / "history.json")
    assert max(h["val_ctr_auc"] for h in history) > 0.6
    assert _metrics(run)["ctr_auc"] > 0.6
    record = read_json(run / "run.json")
    assert record["status"] == "done" and record["data_sha256"]
    # which machine made it: versions, the commit of this clone, the device
    v = record["versions"]
    assert v["torch"] == torch.__version__ and v["device"] == "cpu" and v["device_name"]
    assert isinstance(v["cpu_native_bf16"], bool) and "cuda" in v
    from prlbench.machine import git_commit
    assert v["git_commit"] == git_commit()
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        assert len(v["git_commit"].removesuffix("-dirty")) == 40
    state = torch.load(run / "best.pt", weights_only=True)
    assert isinstance(state, dict) and state


@pytest.mark.slow
def test_same_command_twice_gives_identical_metrics(data_dir, tmp_path):
    a = train_mod.train_run(_cfg(), data_dir=data_dir, out=tmp_path / "a", progress=False)
    b = train_mod.train_run(_cfg(), data_dir=data_dir, out=tmp_path / "b", progress=False)
    assert _metrics(a) == _metrics(b)
    c = train_mod.train_run(_cfg(seed=2), data_dir=data_dir, out=tmp_path / "a", progress=False)
    assert _metrics(a) != _metrics(c)


@pytest.mark.slow
def test_a_finished_run_is_reused(data_dir, tmp_path):
    a = train_mod.train_run(_cfg(), data_dir=data_dir, out=tmp_path, progress=False)
    stamp = (a / "metrics.json").stat().st_mtime_ns
    again = train_mod.train_run(_cfg(), data_dir=data_dir, out=tmp_path, progress=False)
    assert again == a and (a / "metrics.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_interrupted_then_resumed_equals_uninterrupted(data_dir, tmp_path, monkeypatch,
                                                       stop_after):
    cfg = _cfg(epochs=3)
    whole = train_mod.train_run(cfg, data_dir=data_dir, out=tmp_path / "whole", progress=False)
    with monkeypatch.context() as m:
        m.setattr(loop_mod, "StopFlag", lambda: stop_after(50))  # mid-epoch 2 (~35 steps/epoch)
        with pytest.raises(Interrupted, match="--resume"):
            train_mod.train_run(cfg, data_dir=data_dir, out=tmp_path / "cut", progress=False)
    part = next((tmp_path / "cut" / "runs").glob("*.partial"))
    assert (part / "state.pt").exists()
    record = read_json(part / "run.json")
    assert record["status"] == "interrupted" and "--resume" in record["error"]
    with pytest.raises(ConfigError, match="give one of them"):
        train_mod.train_run(cfg, data_dir=data_dir, out=tmp_path / "cut", resume=True,
                            restart=True, progress=False)
    with pytest.raises(ConfigError, match="unfinished run.*--resume"):
        evaluate_run(part, data_dir)
    with pytest.raises(Exception, match="--resume"):
        train_mod.train_run(cfg, data_dir=data_dir, out=tmp_path / "cut", progress=False)
    resumed = train_mod.train_run(cfg, data_dir=data_dir, out=tmp_path / "cut", resume=True,
                                  progress=False)
    assert _metrics(resumed) == _metrics(whole)
    done = read_json(resumed / "run.json")
    assert done["status"] == "done" and "error" not in done  # the interruption is over
    h1 = read_json(whole / "history.json")
    h2 = read_json(resumed / "history.json")
    assert [h["val_score"] for h in h1] == [h["val_score"] for h in h2]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(data_dir, tmp_path,
                                                                    monkeypatch):
    from prlbench.losses import LOSSES

    real = LOSSES.get("pwiser")
    calls = {"n": 0}

    def poisoned(outputs, click, conversion, **params):
        calls["n"] += 1
        total, parts = real(outputs, click, conversion, **params)
        return (total * float("nan") if calls["n"] > 40 else total), parts

    monkeypatch.setitem(LOSSES._items, "pwiser", poisoned)
    with pytest.raises(TrainingError,
                       match=r"became nan.*checkpoint \(best\.pt.*lower learning rate"
                             r".*smaller pairwise weight \(--lambda\)"):
        train_mod.train_run(_cfg(epochs=3), data_dir=data_dir, out=tmp_path, progress=False)
    part = next((tmp_path / "runs").glob("*.partial"))
    assert (part / "best.pt").exists()  # epoch 1 finished before the NaN
    assert json.loads((part / "run.json").read_text())["status"] == "failed"
    calls["n"] = 100  # NaN from the first batch: no checkpoint to speak of
    with pytest.raises(TrainingError, match="no checkpoint had been saved yet"):
        train_mod.train_run(_cfg(epochs=3, seed=7), data_dir=data_dir, out=tmp_path,
                            progress=False)


@pytest.mark.slow
def test_evaluate_reproduces_the_test_metrics(data_dir, tmp_path):
    run = train_mod.train_run(_cfg(), data_dir=data_dir, out=tmp_path, progress=False)
    before = _metrics(run)
    evaluate_run(run, data_dir)
    assert _metrics(run) == before
    (run / "metrics.json").unlink()
    evaluate_run(run)  # no data dir given: the one run.json records, wherever we are
    assert _metrics(run) == before
    assert read_json(run / "run.json")["data_dir"] == str(data_dir.resolve())


def test_a_device_that_is_not_here_fails_before_any_folder(data_dir, tmp_path):
    """cuda:99 exists on no machine: the error comes before the run folder is made."""
    with pytest.raises(ConfigError, match="--device cuda:99"):
        train_mod.train_run(_cfg(device="cuda:99"), data_dir=data_dir, out=tmp_path,
                            progress=False)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_cvr_clipped_share_counts_clicked_rows_with_ctcvr_above_ctr(data_dir, tmp_path):
    import pyarrow.parquet as pq

    run = train_mod.train_run(_cfg(), data_dir=data_dir, out=tmp_path, progress=False)
    p = pq.read_table(run / "predictions.parquet").to_pandas()
    clicked = p[p["click"] == 1]
    expected = float((clicked["p_ctcvr"] > clicked["p_ctr"]).mean())
    assert _metrics(run)["cvr_clipped_share"] == expected
    capped = clicked[clicked["p_ctcvr"] > clicked["p_ctr"]]
    assert (capped["p_cvr"] == 1.0).all()


def test_a_validation_split_without_conversions_fails_before_training(tmp_path):
    """No conversion in validation: CTCVR AUC is undefined and no epoch could be chosen."""
    from prlbench.errors import DataError

    d = tmp_path / "tiny"
    preprocess_synthetic(d, rows=1000, conversion_rate=0.01, seed=0, progress=False)
    val = read_json(d / "synthetic" / "manifest.json")["splits"]["val"]
    assert val["conversions"] == 0  # the premise of the test
    with pytest.raises(DataError, match=r"validation split of synthetic has \d+ clicks and 0 "
                                        r"conversions .* CTCVR AUC is undefined"):
        train_mod.train_run(_cfg(), data_dir=d, out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_preprocessing_the_same_data_again_keeps_the_run_ids(tmp_path):
    """The run id hashes the data, not the manifest's date or source path."""
    from prlbench.data.cache import data_hash

    preprocess_synthetic(tmp_path / "a", rows=3000, seed=0, progress=False)
    first = data_hash(tmp_path / "a" / "synthetic")
    manifest = (tmp_path / "a" / "synthetic" / "manifest.json").read_text()
    time.sleep(1.1)  # a later "created" stamp
    preprocess_synthetic(tmp_path / "a", rows=3000, seed=0, progress=False)
    assert (tmp_path / "a" / "synthetic" / "manifest.json").read_text() != manifest
    assert data_hash(tmp_path / "a" / "synthetic") == first
    preprocess_synthetic(tmp_path / "b", rows=3000, seed=1, progress=False)
    assert data_hash(tmp_path / "b" / "synthetic") != first  # other data, other runs


@pytest.mark.parametrize("content, fragment", [
    (b"[1, 2]", "is not a JSON object"),
    (b"\xff\xfe{", "is not valid JSON"),
    (b"{}", "lacks its columns section"),
    (None, "has a malformed entry for train"),
    (b"side_files null", "has a malformed side_files section"),
])
def test_a_damaged_manifest_is_a_cache_error(data_dir, tmp_path, content, fragment):
    import shutil

    from prlbench.data.cache import open_cache
    from prlbench.errors import CacheError

    d = Path(shutil.copytree(data_dir, tmp_path / "d"))
    path = d / "synthetic" / "manifest.json"
    if content is None:
        m = json.loads(path.read_text())
        del m["splits"]["train"]["bytes"]
        content = json.dumps(m).encode()
    elif content == b"side_files null":
        m = json.loads(path.read_text())
        m["side_files"] = None
        content = json.dumps(m).encode()
    path.write_bytes(content)
    with pytest.raises(CacheError, match=f"{fragment}.*rerun: prlbench preprocess synthetic"):
        open_cache(d, "synthetic")


@pytest.mark.slow
def test_evaluating_a_run_of_an_earlier_prlbench_says_to_retrain(data_dir, tmp_path):
    import shutil

    run = train_mod.train_run(_cfg(), data_dir=data_dir, out=tmp_path, progress=False)
    old = Path(shutil.copytree(run, tmp_path / "old"))
    record = read_json(old / "run.json")
    record["manifest_sha256"] = record.pop("data_sha256")
    write_json(old / "run.json", record)
    with pytest.raises(ConfigError, match="trained by an earlier prlbench.*retrain it"):
        evaluate_run(old, data_dir)


@pytest.mark.slow
def test_run_json_records_the_thread_count(data_dir, tmp_path):
    run = train_mod.train_run(_cfg(threads=1), data_dir=data_dir, out=tmp_path, progress=False)
    assert read_json(run / "run.json")["threads"] == 1


# ------------------------------------------------------- damaged run folders and checkpoints
def _cut_run(data_dir: Path, out: Path, monkeypatch, stop_after) -> Path:
    """An interrupted run (mid-epoch 1) whose state.pt is then cut in half, as a full disk or a
    killed copy leaves it."""
    with monkeypatch.context() as m:
        m.setattr(loop_mod, "StopFlag", lambda: stop_after(20))
        with pytest.raises(Interrupted):
            train_mod.train_run(_cfg(epochs=1), data_dir=data_dir, out=out, progress=False)
    part = next((out / "runs").glob("*.partial"))
    state = part / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    return part


@pytest.mark.slow
def test_train_resume_with_a_truncated_state_pt_is_one_line_naming_the_file(
        data_dir, tmp_path, monkeypatch, stop_after):
    from typer.testing import CliRunner

    from prlbench.cli import app

    part = _cut_run(data_dir, tmp_path, monkeypatch, stop_after)
    r = CliRunner().invoke(app, ["train", "--dataset", "synthetic", "--model", "mmoe", "--loss",
                                 "pwiser", "--epochs", "1", "--batch-size", "1024", "--threads",
                                 "1", "--data-dir", str(data_dir), "--out", str(tmp_path),
                                 "--resume", "-q"])
    text = " ".join(r.output.split())
    assert r.exit_code == 1, text
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)  # no traceback either
    assert f"{part / 'state.pt'} is damaged or truncated" in text and "--restart" in text
    assert (part / "state.pt").exists()  # refused: nothing moved, nothing discarded


@pytest.mark.slow
def test_compare_sets_a_damaged_state_pt_aside_and_starts_the_run_over(
        data_dir, tmp_path, monkeypatch, stop_after, capfd):
    part = _cut_run(data_dir, tmp_path / "cut", monkeypatch, stop_after)
    # As prlbench compare's executor calls it: always resume.
    run = train_mod.train_run(_cfg(epochs=1), data_dir=data_dir, out=tmp_path / "cut",
                              resume=True, progress=False)
    kept = list(run.glob("state.pt.damaged-*"))
    assert len(kept) == 1 and not (run / "state.pt").exists()
    err = " ".join(capfd.readouterr().err.split())
    assert f"{part / 'state.pt'} is damaged or truncated" in err and kept[0].name in err
    assert "started over" in err
    # Started over from scratch: the numbers of a run never interrupted.
    whole = train_mod.train_run(_cfg(epochs=1), data_dir=data_dir, out=tmp_path / "whole",
                                progress=False)
    assert _metrics(run) == _metrics(whole)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["no run.json", "status failed", "not JSON"])
def test_a_finished_folder_that_is_not_done_is_set_aside_and_trained_again(
        data_dir, tmp_path, capfd, damage):
    run = train_mod.train_run(_cfg(epochs=1), data_dir=data_dir, out=tmp_path, progress=False)
    before = _metrics(run)
    record = run / "run.json"
    if damage == "no run.json":
        record.unlink()
    elif damage == "status failed":
        write_json(record, {**read_json(record), "status": "failed"})
    else:
        record.write_text('{"status": "do')
    again = train_mod.train_run(_cfg(epochs=1), data_dir=data_dir, out=tmp_path, progress=False)
    assert again == run and read_json(run / "run.json")["status"] == "done"
    assert _metrics(again) == before
    aside = list((tmp_path / "runs").glob(f"{run.name}.broken-*"))
    assert len(aside) == 1 and (aside[0] / "best.pt").exists()  # kept, not deleted
    err = " ".join(capfd.readouterr().err.split())
    assert f"{run} is not a finished run" in err and aside[0].name in err
    # and once only: the next call reuses the new run
    assert train_mod.train_run(_cfg(epochs=1), data_dir=data_dir, out=tmp_path,
                               progress=False) == run
    assert len(list((tmp_path / "runs").glob("*.broken-*"))) == 1


# ------------------------------------------------------- a run scores the data it trained on
def _small_cache(tmp_path) -> Path:
    d = tmp_path / "data"
    preprocess_synthetic(d, rows=6_000, seed=0, progress=False)
    return d


def test_preprocess_is_refused_while_a_run_holds_the_data_set(tmp_path, monkeypatch):
    from prlbench.data.preprocess import preprocess
    from prlbench.errors import CacheError

    d = _small_cache(tmp_path)
    real, seen = loop_mod.Loop.steps, []

    def steps(self, **kw):  # a preprocess of the same data set while the run trains
        yield from real(self, **kw)
        with pytest.raises(CacheError) as e:
            preprocess("synthetic", d, progress=False, rows=5_000)
        seen.append(str(e.value))

    monkeypatch.setattr(loop_mod.Loop, "steps", steps)
    run = train_mod.train_run(_cfg(epochs=1), data_dir=d, out=tmp_path / "out", progress=False)
    (message,) = seen
    assert f"is in use by run {run.name} (pid " in message and "Wait for the run" in message
    # the cache was not replaced: the run scored the data it trained on, and it says so
    from prlbench.data.cache import data_hash

    record = read_json(run / "run.json")
    assert record["status"] == "done" and record["data_sha256"] == data_hash(d, "synthetic")
    monkeypatch.undo()
    preprocess("synthetic", d, progress=False, rows=5_000)  # free again once the run is done


def test_a_run_whose_data_changed_under_it_fails_and_publishes_nothing(tmp_path, monkeypatch):
    from prlbench.errors import CacheError

    d = _small_cache(tmp_path)
    other = tmp_path / "other"
    preprocess_synthetic(other, rows=6_000, seed=1, progress=False)
    real = loop_mod.Loop.steps

    def steps(self, **kw):  # the test split replaced by hand (no preprocess) while it trained
        yield from real(self, **kw)
        (d / "synthetic" / "test.parquet").write_bytes(
            (other / "synthetic" / "test.parquet").read_bytes())

    monkeypatch.setattr(loop_mod.Loop, "steps", steps)
    out = tmp_path / "out"
    with pytest.raises(CacheError, match="changed while this run used it") as e:
        train_mod.train_run(_cfg(epochs=1), data_dir=d, out=out, progress=False)
    assert "not scored on other data than it trained with" in str(e.value)
    runs = out / "runs"
    assert [p.name for p in runs.iterdir() if not p.name.startswith(".")] == [
        p.name for p in runs.glob("*.partial")]  # nothing published
    (part,) = runs.glob("*.partial")
    record = read_json(part / "run.json")
    assert record["status"] == "failed" and "CacheError" in record["error"]
    assert not (part / "metrics.json").exists()


def test_max_steps_ends_the_run_in_the_epoch_under_way(data_dir, tmp_path, monkeypatch):
    steps = []
    make = loop_mod.make_optimizer

    def counting(model, cfg):
        opt = make(model, cfg)
        step = opt.step
        opt.step = lambda *a, **k: (steps.append(1), step(*a, **k))[1]
        return opt

    monkeypatch.setattr(loop_mod, "make_optimizer", counting)
    cfg = _cfg(epochs=5, patience=5, max_steps=45)  # an epoch has fewer than 45 steps
    run = train_mod.train_run(cfg, data_dir=data_dir, out=tmp_path, progress=False)
    assert len(steps) == 45
    assert len(read_json(run / "history.json")) == 2  # the second epoch ended at the budget
    assert read_json(run / "run.json")["status"] == "done"
    with pytest.raises(ConfigError, match=r"train.max_steps \(--max-steps\) must be >= 0"):
        _cfg(max_steps=-1)


def test_the_allocator_keeps_freed_memory_only_for_steps_with_large_blocks(monkeypatch):
    from prlbench.models import create_model

    asked = []
    monkeypatch.setattr(loop_mod, "reuse_freed_memory", lambda: asked.append(1))
    vocab = [30] * 16
    small = create_model("mmoe", vocab_sizes=vocab, num_numerical=63, preset="small")
    paper = create_model("mmoe", vocab_sizes=vocab, num_numerical=63, preset="paper")
    assert not loop_mod.reuse_memory_if_large(small, 2048) and asked == []
    assert loop_mod.reuse_memory_if_large(paper, 2048) and asked == [1]  # 8 x 512 x 2176 fp32
    assert loop_mod.reuse_memory_if_large(small, 2**17)  # a huge batch's activations

