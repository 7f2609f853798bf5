"""ForkedSaver: the daemon's save runs in a forked child, one at a time, and a failed
child is reported, not raised (forks a process: component tier)."""
from __future__ import annotations

import logging
import os
import time

from agent.service.saver import ForkedSaver


def test_the_work_runs_in_a_child_and_the_parent_goes_on(tmp_path):
    saver, out = ForkedSaver(), tmp_path / "saved"

    def work():
        time.sleep(0.3)
        out.write_text(str(os.getpid()))
    start = time.monotonic()
    saver.start(work, "revision r1")
    assert time.monotonic() - start < 0.25 and saver.busy() and not out.exists()
    saver.wait()
    assert not saver.busy() and int(out.read_text()) not in (0, os.getpid())


def test_one_save_at_a_time_in_order(tmp_path):
    saver, out = ForkedSaver(), tmp_path / "saved"
    saver.start(lambda: (time.sleep(0.2), out.write_text("first")), "revision r1")
    saver.start(lambda: out.write_text("second"), "revision r2")     # waits for the first child
    saver.wait()
    assert out.read_text() == "second"


def test_a_failed_child_is_logged(caplog):
    saver = ForkedSaver()

    def work():
        raise OSError("disk gone")
    with caplog.at_level(logging.WARNING, logger="agent.service.saver"):
        saver.start(work, "revision r3")
        saver.wait()
    assert "revision r3" in caplog.text and "failed" in caplog.text
