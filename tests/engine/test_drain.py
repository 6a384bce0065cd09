"""Graceful drain in a real process: signals, deadline, hand-back, exit statuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


WORKER = Path(__file__).with_name("drain_worker.py")
REPO = WORKER.parent.parent.parent


def start(scenario: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), scenario], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")


def test_a_sigterm_during_work_ends_with_every_accepted_message_handled_or_handed_back() -> None:
    proc = start("drain")
    wait_ready(proc)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - signalled
    report = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 0, err
    accepted, acked, nacked = set(report["accepted"]), set(report["acked"]), set(report["nacked"])
    assert len(report["accepted"]) == len(report["acked"]) + len(report["nacked"])  # the sum: nothing lost
    assert acked | nacked == accepted and not acked & nacked
    assert set(report["handled"]) == acked
    assert acked and nacked  # the quick ones finished; the 5 s ones (and their customers' later ones) went back
    assert elapsed < 4.5  # 0.5 s deadline, not the 5 s handlers
    assert '"msg":"SIGTERM: draining (deadline 0.5 s)"' in err


def test_a_second_signal_exits_at_once() -> None:
    proc = start("stubborn")
    wait_ready(proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - signalled < 3
    assert proc.returncode == 128 + signal.SIGINT
    assert "second SIGINT: exiting now without draining" in err


def test_a_supervisor_giving_up_at_the_top_stops_the_process_with_one_clear_line_and_status_1() -> None:
    proc = start("crash")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    final = [r for r in lines if r["msg"].startswith("wabridge stopping:")]
    assert len(final) == 1 and final[0]["level"] == "error"
    assert "supervisor 'root' gave up: more than 2 restarts in 10 s" in final[0]["msg"]
    assert "RuntimeError: database schema is missing" in final[0]["msg"]
