"""Resumable training: a training loop's state kept beside its output, so a cut-short run goes on.

A run on a preemptible node (Kubernetes sends SIGTERM, then waits 30 s by default before it kills), one
stopped by a time limit, or one that crashed loses its work unless the loop's state was saved. A
`Resumer` keeps it in `<output>.state/state.pt` (local or gs://): the model's and optimiser's state, the
learning-rate schedule, the random number generators and the loop's own counters. The caller may put it
elsewhere (`state_dir=` of the training functions): a Kubeflow step keeps it under its output artifact's
URI, which every retry of the task is given, so a retried pod goes on. It is written

- every KDRANK_STATE_EVERY seconds of training (default 600; 0 turns the timed saves off), and
- at the first step boundary after SIGTERM, or after a first Ctrl-C (SIGINT; a second one stops at once,
  unsaved); the loop then raises `TrainingInterrupted`.

A rerun of the same training (the same identity: data contents and settings) loads the state and goes on
with the very batches it would have drawn, so the finished model is the one an uninterrupted run makes.
A state left by other training is ignored and replaced. The state goes once the finished model is saved.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from components import storage

if TYPE_CHECKING:  # torch is imported where it is used: the CLI imports this module to catch its error
    import torch

log = logging.getLogger(__name__)

STATE_EVERY = "KDRANK_STATE_EVERY"  # seconds between timed saves; 0: only on SIGTERM
DEFAULT_EVERY = 600.0
STATE_FILE = "state.pt"
VERSION = 1  # of the state's layout (the first states had no field: 1); a state of another is not resumed


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGTERM or Ctrl-C after saving its state; the same command again resumes it.
    `signum`: the signal that stopped it (a CLI exits with 128 + signum, as a process killed by it)."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = int(signum)


def state_dir(output_dir: str) -> str:
    """Where the training that writes `output_dir` keeps its state: a sibling, `<output_dir>.state`."""
    return str(output_dir).rstrip("/") + ".state"


def save_every() -> float:
    raw = os.environ.get(STATE_EVERY, "")
    if not raw:
        return DEFAULT_EVERY
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{STATE_EVERY}={raw!r} is not a number of seconds") from None
    if seconds < 0:
        raise ValueError(f"{STATE_EVERY}={raw!r}: seconds between saves cannot be negative")
    return seconds


class Resumer:
    """Saves and finds the state of one training, identified by `identity` (a digest of what it trains on
    and how), in the folder `directory` (local or gs://; `state_dir(output_dir)` by default). Use
    `with resumer.watch():` around the loop, `resumer.load()` before it, `resumer.step(make_state)` after
    every optimiser step, `resumer.clear()` once the model is saved."""

    def __init__(self, directory: str, identity: str, *, every: float | None = None):
        self.directory = str(directory)
        self.uri = storage.join(self.directory, STATE_FILE)
        self.identity = identity
        self.every = save_every() if every is None else every
        self.stop_requested = False
        self.stop_signal = signal.SIGTERM
        self._last = time.monotonic()

    def load(self, device: torch.device) -> dict | None:
        """The saved state of this training, or None (nothing saved, or a state of other training)."""
        import torch

        if not storage.exists(self.uri):
            return None
        with storage.local_file(self.uri) as path:
            try:
                state = torch.load(path, map_location=device, weights_only=True)
            except Exception as err:  # noqa: BLE001 - a torn or foreign file must not stop training
                log.warning("%s is unreadable (%s); training starts from the beginning", self.uri, err)
                return None
        if state.get("version", 1) != VERSION:
            log.warning("%s is a training state of layout %s, not %s; training starts from the beginning",
                        self.uri, state["version"], VERSION)
            return None
        if state.get("identity") != self.identity:
            log.warning("%s holds the state of other training (other data or settings); starting afresh and "
                        "replacing it", self.uri)
            return None
        log.info("resuming from %s: batch %d of %d", self.uri, state["done"], state["total"])
        return state

    def step(self, make_state) -> None:
        """After an optimiser step: save when a save is due or SIGTERM came, then stop if it did."""
        due = self.every > 0 and time.monotonic() - self._last >= self.every
        if not (due or self.stop_requested):
            return
        state = make_state()
        self.save(state)
        if self.stop_requested:
            raise TrainingInterrupted(
                f"stopped by {signal.Signals(self.stop_signal).name} at batch {state['done']} of {state['total']}; "
                f"the state is saved at {self.uri}, and the same command again resumes from it", self.stop_signal)

    def save(self, state: dict) -> None:
        import torch

        start = time.monotonic()
        with storage.atomic_path(self.uri) as tmp:
            torch.save({**state, "identity": self.identity, "version": VERSION}, tmp)
        self._last = time.monotonic()
        log.info("training state saved to %s at batch %d of %d (%.1f s)", self.uri, state["done"], state["total"],
                 self._last - start)

    def clear(self) -> None:
        """Remove the state, any part of one whose save was killed (SIGKILL, the OOM killer: a teacher's is
        over a GB), and the folder when that is local and now empty."""
        if storage.exists(self.uri):
            storage.remove(self.uri)
        if not storage.is_gcs(self.uri):
            storage.sweep_orphans(self.uri)
        remove_empty(self.directory)

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Within: SIGTERM, or a first Ctrl-C (SIGINT), asks the loop to save and stop at its next step instead
        of killing it at once; a second Ctrl-C stops it at once, unsaved (KeyboardInterrupt). Signals can only
        be caught on the main thread; elsewhere only the timed saves run."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            if signum == signal.SIGINT and self.stop_requested:
                raise KeyboardInterrupt
            # SIGTERM after a request is the same request: `kdrank run` passes a terminal's Ctrl-C on to its
            # step so, and the step had that Ctrl-C too
            if self.stop_requested:
                return
            extra = " (Ctrl-C again stops at once, unsaved)" if signum == signal.SIGINT else ""
            log.warning("%s: saving the training state at the end of this step, then stopping%s",
                        signal.Signals(signum).name, extra)
            self.stop_requested, self.stop_signal = True, signum

        previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def remove_empty(directory: str) -> None:
    """Remove a local folder if it is empty (gs:// has no folders to remove)."""
    if not storage.is_gcs(directory):
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def rng_states() -> dict:
    """torch's CPU (and CUDA) generator states, to put in a training state."""
    import torch

    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    import torch

    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])
