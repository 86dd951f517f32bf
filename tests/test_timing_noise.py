"""Noise detection: other processes' CPU use while timing (``/proc/stat`` minus this process), the spread of the
repeats, and the beyond-noise comparison ``auto`` decides with."""

import subprocess
import sys
import time

import pytest

from lowrankcnn.timing import CpuSnapshot, Timing, cpu_snapshot, noise_warning, other_cores, separated


def test_other_cores_subtracts_this_process():
    start, end = CpuSnapshot(busy=10.0, own=2.0, wall=100.0), CpuSnapshot(busy=14.0, own=4.0, wall=102.0)
    assert other_cores(start, end) == pytest.approx(1.0)  # 4 CPU-s in 2 s, 2 of them ours
    assert other_cores(None, end) is None and other_cores(end, start) is None
    quiet = {"a": Timing([1.0, 1.01, 0.99, 1.0])}
    assert noise_warning(quiet, others=0.1) is None
    assert "other processes kept 1.0 of" in noise_warning(quiet, others=1.0)
    assert "repeats vary by 50%" in noise_warning({"a": Timing([1.0, 0.5, 1.5, 1.0, 1.0])}, others=0.0)


@pytest.mark.serial  # under pytest -n, the other workers are busy neighbours
@pytest.mark.skipif(cpu_snapshot() is None, reason="no /proc/stat (not Linux)")
def test_a_busy_neighbour_is_seen_and_our_own_work_is_not():
    start = cpu_snapshot()
    time.sleep(0.5)
    if other_cores(start, cpu_snapshot()) > 0.3:
        pytest.skip("the machine is busy with other work: nothing to compare against")
    start = cpu_snapshot()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # this process busy: not "other"
        pass
    assert other_cores(start, cpu_snapshot()) < 0.5
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        start = cpu_snapshot()
        time.sleep(1.0)
        assert other_cores(start, cpu_snapshot()) > 0.5  # the neighbour keeps about one core busy
    finally:
        spinner.kill()
        spinner.wait()


def test_separated_needs_the_quartiles_apart():
    fast, slow = Timing([1.0, 1.1, 1.0, 1.05]), Timing([2.0, 2.1, 1.9, 2.0])
    assert separated(fast, slow) and not separated(slow, fast)
    assert not separated(Timing([1.0, 2.0, 1.0, 2.0]), Timing([1.5, 2.5, 1.5, 2.5]))  # overlapping
