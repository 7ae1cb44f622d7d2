"""A local run's Ctrl-C / SIGTERM: the running step is asked to stop and waited for (pipelines/stopping.py).

These drive `StepStopper` with plain child processes standing in for kfp.local's step; the whole path
through `kdrank run` and a training step is in test_kfp_local.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pipelines.stopping import StepStopper, _proc_table, _ps_table, descendants, stopped

# A step that takes a while to save on SIGTERM, as a training step does, then writes its last lines through
# a block-buffered stdout, as a step's log comes when it ends.
SAVING_STEP = textwrap.dedent("""
    import signal, sys, time
    def save_and_stop(signum, frame):
        time.sleep(1.0)
        print("\\n".join(f"saved {i}" for i in range(40)))
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, save_and_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(60)
""")


def start_step(code: str = SAVING_STEP) -> subprocess.Popen:
    step = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert step.stdout.readline().strip() == "ready"  # its handlers are in place
    return step


def test_descendants_include_the_steps_own_children():
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(found := descendants(os.getpid())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shell.pid in found and len(found) == 2 and found.index(shell.pid) == 0
    finally:
        for pid in descendants(shell.pid) + [shell.pid]:
            os.kill(pid, signal.SIGKILL)
        shell.wait()
    assert shell.pid not in descendants(os.getpid())


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="no /proc here")
def test_ps_and_proc_give_the_same_parents():
    """`ps` stands in for /proc where there is none (macOS); both must read the same tree."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while _proc_table()[child.pid][1] != "S" and time.monotonic() < deadline:
            time.sleep(0.05)  # started, and asleep
        proc, ps = _proc_table(), _ps_table()
        assert proc[os.getpid()][0] == ps[os.getpid()][0] == os.getppid()
        assert proc[child.pid] == ps[child.pid] == (os.getpid(), "S")
    finally:
        child.kill()
        child.wait()


def run_like_kfp_local(step: subprocess.Popen, lines: list[str], per_line: float) -> None:
    """What kfp.local does with a step: print its output line by line (slowly here), reap it, then wait
    out a retry's back-off (the step failed and has retries left)."""
    for line in step.stdout:
        lines.append(line.strip())
        time.sleep(per_line)
    step.wait()
    time.sleep(30)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_first_signal_lets_the_step_save_then_ends_the_run(signum):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stopper = StepStopper()
    step, lines = start_step(), []
    start = time.monotonic()
    with pytest.raises(BaseException) as raised, stopper.installed():
        os.kill(os.getpid(), signum)
        run_like_kfp_local(step, lines, per_line=0.05)  # the stop breaks off the back-off, not the printing
    waited = time.monotonic() - start
    assert stopped(stopper, raised.value) and stopper.signum == signum
    # the step got SIGTERM (whatever the run got), and the run waited until all it wrote had been printed
    assert step.returncode == 128 + signal.SIGTERM and lines == [f"saved {i}" for i in range(40)]
    assert 1.0 + 40 * 0.05 <= waited < 10
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_second_ctrl_c_stops_at_once():
    stopper = StepStopper()
    step = start_step(SAVING_STEP.replace("time.sleep(1.0)", "time.sleep(30)"))
    try:
        with pytest.raises(KeyboardInterrupt) as raised, stopper.installed():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)
            assert step.poll() is None  # still saving: the run waits for it
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
        assert not stopped(stopper, raised.value)
    finally:
        step.kill()
        step.wait()


def test_a_stop_between_steps_ends_the_run_at_once():
    stopper = StepStopper()
    start = time.monotonic()
    with pytest.raises(BaseException) as raised, stopper.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    assert stopped(stopper, raised.value) and time.monotonic() - start < 5


def test_a_run_that_ends_before_the_wake_up_is_left_alone():
    """kfp.local may report the failed step before the waiter sees it end: the run's own error stands, and
    no stray Ctrl-C reaches the code after it."""
    stopper = StepStopper()
    step = start_step(SAVING_STEP.replace("time.sleep(1.0)", "time.sleep(0.5)"))
    with pytest.raises(RuntimeError, match="step failed") as raised, stopper.installed():
        os.kill(os.getpid(), signal.SIGINT)
        raise RuntimeError("step failed")
    assert stopped(stopper, raised.value)
    step.wait(timeout=5)
    time.sleep(0.5)  # the waiter has seen the step end by now; it must not signal this process
