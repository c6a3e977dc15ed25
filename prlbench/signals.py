"""The one signal policy of prlbench: what Ctrl-C (SIGINT) and SIGTERM do, and where.

- A command (`cli_signals`): SIGTERM (kill, a cluster's scheduler) unwinds like Ctrl-C, so that
  every cleanup runs: no staging folder, partial download or half-written result is left behind.
- The training loop (`StopFlag`): the first Ctrl-C or SIGTERM asks the loop to stop after the
  current step, which then saves a checkpoint; the same signal twice aborts at once. SIGTERM
  after Ctrl-C does not abort (compare's driver sends it to its workers when Ctrl-C has reached
  them already).
- A process-pool worker (`worker_init`, `working`): it ignores SIGINT except while training
  (the loop's StopFlag takes it then), so that Ctrl-C reaching the whole process group prints no
  traceback from an idle worker. SIGTERM unwinds a worker that is busy with a run (its run.json
  then says interrupted) and ends an idle one quietly.
- The driver (`stop_workers`): after Ctrl-C it sends SIGTERM to every worker and waits for them,
  so that every checkpoint is complete when it exits.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def cli_signals() -> Iterator[None]:
    """Within a command: SIGTERM raises KeyboardInterrupt, as Ctrl-C does (main thread only,
    and only where nobody installed a SIGTERM handler before)."""
    if not _main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class StopFlag:
    """Ctrl-C / SIGTERM ask the training loop to stop after the current step (`requested`);
    the same signal twice aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._seen: set[int] = set()
        self._old: dict = {}

    def __enter__(self) -> "StopFlag":
        if _main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum in self._seen:
            raise KeyboardInterrupt
        self._seen.add(signum)
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


_busy = False  # in a pool worker: True while it works on a run


def worker_init() -> None:
    """The initializer of every process-pool worker (see the module doc)."""

    def on_sigterm(signum, frame):
        if _busy:
            raise KeyboardInterrupt
        raise SystemExit(0)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_sigterm)


@contextlib.contextmanager
def working() -> Iterator[None]:
    """Mark this process busy with a run: SIGTERM then unwinds it instead of ending it."""
    global _busy
    _busy = True
    try:
        yield
    finally:
        _busy = False


def stop_workers(pool, grace_s: float = 120.0) -> None:
    """SIGTERM every worker of `pool` (a ProcessPoolExecutor of this process): one that is
    training saves its checkpoint and exits; an idle one exits at once. Waits for them."""
    import multiprocessing

    procs = multiprocessing.active_children()  # the pool's workers are this process's children
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=grace_s)
        if p.is_alive():
            p.kill()
