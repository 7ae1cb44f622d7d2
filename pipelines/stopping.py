"""Stopping a local pipeline run so that the step it is running keeps its work.

kfp.local runs each step as a child process and prints the child's output through a pipe. Left alone, a
Ctrl-C ends this process at once; the pipe closes, and the step dies at its next write, before a training
step can save its state (components/resume.py). While a run is under way, `StepStopper` takes a first
Ctrl-C (or SIGTERM) instead:

- it sends SIGTERM to every process the run started (the step's shell and Python): a training step saves
  its state at the end of the step it is in and stops; any other step stops at once (its finished parts,
  labelling shards among them, are already written whole);
- it waits, still printing the step's output, until those processes have ended and kfp.local has printed
  the last of it, then stops the run (no retry of the step starts) with `TrainingInterrupted`: exit 130 for
  Ctrl-C, 143 for SIGTERM.

A second Ctrl-C stops at once (KeyboardInterrupt), as before. The step may get the terminal's own SIGINT as
well as this SIGTERM; to a training step both are one request to save and stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2


class _StepsEnded(BaseException):
    """Raised in the main thread once the signalled step processes have ended: a BaseException, as
    KeyboardInterrupt is, so that no `except Exception` of kfp.local's takes it for a failed step and retries."""


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process: from /proc, else from `ps` (macOS)."""
    return _proc_table() if Path("/proc/self/stat").exists() else _ps_table()


def _proc_table() -> dict[int, tuple[int, str]]:
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces and ')'
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def _ps_table() -> dict[int, tuple[int, str]]:
    listing = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "stat="], capture_output=True,
                             text=True, check=True).stdout
    return {int(pid): (int(ppid), state[0]) for pid, ppid, state, *_ in map(str.split, listing.splitlines())}


def descendants(pid: int, table: dict[int, tuple[int, str]] | None = None) -> list[int]:
    """Every live process below `pid` (children, their children...), parents first; zombies left out.
    `table`: a `_process_table()` already read."""
    children: dict[int, list[int]] = {}
    states = {}
    for child, (parent, state) in (_process_table() if table is None else table).items():
        children.setdefault(parent, []).append(child)
        states[child] = state
    found, todo = [], list(children.get(pid, ()))
    while todo:
        child = todo.pop(0)
        if states.get(child) != "Z":
            found.append(child)
        todo += children.get(child, ())
    return found


def _pending(pids: list[int], direct: set[int]) -> bool:
    """Whether any of `pids` is still to be waited for: one still running, or one of this process's own
    children (`direct`) not yet reaped. kfp.local reaps its step's process only once it has printed all the
    step's output (the last lines, a block-buffered log among them, come through the pipe as the step
    ends), so the run is not stopped before then. Another process's zombie is taken as ended."""
    table = _process_table()
    return any(pid in table and (pid in direct or table[pid][1] != "Z") for pid in pids)


class StepStopper:
    """Within `installed()`: a first Ctrl-C or SIGTERM stops the running step as the module says; `signum`
    is then the signal that asked. Signals can only be taken in the main thread; elsewhere nothing changes."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._ended = False
        self._active = False  # whether the waiter may still wake the main thread (changed under _lock)
        self._closing = False
        self._lock = threading.Lock()

    def _handle(self, signum: int, frame) -> None:
        if self._ended:  # the waiter's wake-up: the steps have ended
            if self._closing:  # the run ended meanwhile (kfp.local reported the failed step): nothing to wake
                return
            raise _StepsEnded
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: at once, unsaved
            return
        self.signum = signum
        table = _process_table()
        steps = descendants(os.getpid(), table)
        direct = {pid for pid, (parent, _) in table.items() if parent == os.getpid()}
        log.warning("%s: stopping the running step; a training step saves its state first (seconds; "
                    "Ctrl-C again stops at once, unsaved)", signal.Signals(signum).name)
        for pid in steps:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        threading.Thread(target=self._wait, args=(steps, direct), name="kdrank-stop", daemon=True).start()

    def _wait(self, steps: list[int], direct: set[int]) -> None:
        while _pending(steps, direct):
            time.sleep(POLL_SECONDS)
        with self._lock:
            if self._active:
                self._ended = True
                # a real signal to the main thread: it breaks off whatever it waits in (a retry's back-off too)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StepStopper]:
        """Take SIGINT and SIGTERM as above within. Once a stop was asked, whatever the run raises (the
        wake-up, or kfp.local's report of the failed step, whichever comes first) is the stop: see `stopped`."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        self._active = True
        try:
            yield self
        finally:
            try:  # a wake-up raised here is the stop all the same; the handlers are put back in any case
                self._closing = True
                with self._lock:
                    self._active = False
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)


def stopped(stopper: StepStopper, err: BaseException) -> bool:
    """Whether `err`, raised out of a run under `stopper`, is the run's end by a first Ctrl-C or SIGTERM
    (the steps' wake-up, or the failed step kfp.local reports first) rather than a failure of its own."""
    return stopper.signum is not None and not isinstance(err, KeyboardInterrupt)
