"""The signal policy (prlbench.signals): pool workers that never outlive their driver, and a
run record that a second signal cannot leave half-written."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prlbench import signals
from prlbench.config import resolve
from prlbench.engine import run as run_mod
from prlbench.engine.loop import Loop
from prlbench.errors import Interrupted
from prlbench.store import RunFolder, RunStatus
from prlbench.fileio import read_json


def _gone(pid: int) -> bool:
    """No such process, or a zombie (exited; pid 1 of a container may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


DRIVER = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from prlbench import signals
    from prlbench.experiment.executors import LocalExecutor

    if os.environ.get("NO_PRCTL"):  # runs in the workers too (spawn imports this module)
        signals._pdeathsig = lambda: False

    def busy():  # a worker in a run: SIGTERM unwinds it
        with signals.working():
            time.sleep(600)

    if __name__ == "__main__":
        pool = LocalExecutor(2, 1).pool()
        pool.submit(busy)
        pool.submit(os.getpid).result()  # the second worker, then idle on the call queue
        print(*[p.pid for p in multiprocessing.active_children()], flush=True)
        time.sleep(600)
""")


@pytest.mark.slow
@pytest.mark.parametrize("watch", ["prctl", "polling"])
def test_pool_workers_exit_when_their_driver_is_killed(tmp_path, watch):
    """SIGKILL of compare's driver once left its workers (~0.5 GB each) blocked forever. Linux
    asks the kernel (prctl); elsewhere a thread looks for the parent every second."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "NO_PRCTL": "1" if watch == "polling" else ""}
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        pids = [int(p) for p in driver.stdout.readline().split()]
        assert len(pids) == 2, pids
        time.sleep(0.5)  # both workers are in their tasks or waiting for one
        driver.kill()
        driver.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in pids if not _gone(p)] == []
    finally:
        driver.kill()
        for p in pids if "pids" in locals() else []:
            if not _gone(p):
                os.kill(p, signal.SIGKILL)


@pytest.fixture
def as_a_pool_worker():
    """This process's SIGINT / SIGTERM handled as a pool worker's, then restored."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signals.worker_init()
    yield
    for s, handler in old.items():
        signal.signal(s, handler)


def test_a_sigterm_during_the_interrupted_record_leaves_it_interrupted(
        data_dir, tmp_path, monkeypatch, as_a_pool_worker):
    """The driver SIGTERMs its workers while one writes 'interrupted' into run.json: the
    record must still say interrupted, never running."""
    cfg = resolve(None, {"model": {"preset": "small"}, "train": {"epochs": 1, "threads": 1}})

    def stopped(self, **kw):  # the loop saved its checkpoint and stopped (a first signal)
        raise Interrupted("stopped")
        yield  # a generator, as the loop's steps are

    real = RunFolder.write_record

    def write_record(self, record):
        if record.status == RunStatus.INTERRUPTED:
            os.kill(os.getpid(), signal.SIGTERM)  # the second signal lands mid-write
        real(self, record)

    monkeypatch.setattr(Loop, "steps", stopped)
    monkeypatch.setattr(RunFolder, "write_record", write_record)
    with pytest.raises((Interrupted, KeyboardInterrupt)):
        with signals.working():
            run_mod.train_run(cfg, data_dir=data_dir, out=tmp_path, progress=False)
    records = list(tmp_path.glob("runs/*.partial/run.json"))
    assert len(records) == 1 and read_json(records[0])["status"] == "interrupted"


def test_signals_held_off_are_delivered_after_the_block(as_a_pool_worker):
    caught = []
    with signals.working():
        with pytest.raises(KeyboardInterrupt):
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                caught.append("the block ran to its end")
    assert caught == ["the block ran to its end"]
