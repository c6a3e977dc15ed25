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
  A worker never outlives its driver: when the driver dies (even by SIGKILL) the worker gets
  SIGTERM (Linux: PR_SET_PDEATHSIG; elsewhere a thread that watches the parent), stops its run
  as above and exits.
- The driver (`stop_workers`): after Ctrl-C it sends SIGTERM to every worker and waits for them,
  so that every checkpoint is complete when it exits.
- A record being written (`deferred`): SIGINT and SIGTERM wait until the write is done, so that
  a second signal cannot leave a run's record saying `running`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Iterator

_STOPS = (signal.SIGINT, signal.SIGTERM)


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


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold off SIGINT and SIGTERM while the block runs (a record being written); one that
    arrives meanwhile is delivered, to the handler it was meant for, when the block ends."""
    if not _main_thread():  # Python runs handlers in the main thread only
        yield
        return
    caught: list[int] = []
    old = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
           for sig in _STOPS}
    try:
        yield
    finally:
        for sig, handler in old.items():  # None: a handler not set from Python
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


_busy = False  # in a pool worker: True while it works on a run
_parent: int | None = None  # in a pool worker: the driver's pid


def worker_init(parent_pid: int | None = None) -> None:
    """The initializer of every process-pool worker (see the module doc); `parent_pid`: the
    driver, whose death ends the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if parent_pid is not None:
        _die_with_parent(parent_pid)


def _on_sigterm(signum, frame) -> None:
    if _busy:
        raise KeyboardInterrupt
    if _orphaned():  # SystemExit in a task would only end the task, not the worker
        _exit_now()
    raise SystemExit(0)


def _orphaned() -> bool:
    return _parent is not None and os.getppid() != _parent


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM to this process when its parent dies. A worker orphaned otherwise waits on the
    driver's call queue forever: it holds the queue's write end itself, so it never sees EOF."""
    global _parent
    _parent = parent_pid
    if not _pdeathsig():
        threading.Thread(target=_watch_parent, name="prlbench-parent-watch", daemon=True).start()
    if _orphaned():  # the driver died before the request above took effect
        _exit_now()


def _pdeathsig() -> bool:
    """Linux: the kernel sends SIGTERM when the parent exits (the thread that started this
    process, which for the pool is the driver's main thread)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent() -> None:
    """Where prctl is not available: look for the parent every second."""
    while not _orphaned():
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def working() -> Iterator[None]:
    """Mark this process busy with a run: SIGTERM then unwinds it instead of ending it. A
    worker whose driver died exits once its run has unwound (its record written)."""
    global _busy
    _busy = True
    try:
        yield
    finally:
        _busy = False
        if _orphaned():
            _exit_now()


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
