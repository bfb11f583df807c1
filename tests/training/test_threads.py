"""The load-aware default of training threads counts other processes' CPU use, not this process's own."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from backend.ml.train import busy_cores_elsewhere, free_cpu_cores

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")

_SPIN = "import time\nend = time.monotonic() + 3.0\nwhile time.monotonic() < end: pass\n"


def _spin_here(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_busy_process_elsewhere_counts_and_our_own_work_does_not():
    child = subprocess.Popen([sys.executable, "-c", _SPIN])
    try:
        time.sleep(0.3)
        with_child = busy_cores_elsewhere(window_s=1.0)
    finally:
        child.wait()
    spinner = threading.Thread(target=_spin_here, args=(1.5,))
    spinner.start()
    own = busy_cores_elsewhere(window_s=1.0)
    spinner.join()
    assert with_child is not None
    assert own is not None
    assert with_child >= 0.6, "a process spinning on one core is busy elsewhere"
    assert own <= with_child - 0.4, "this process's own threads are not someone else's load"


def test_free_cores_is_between_one_and_the_usable_cores():
    import os

    assert 1 <= free_cpu_cores() <= len(os.sched_getaffinity(0))
