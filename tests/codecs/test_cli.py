"""`wabridge transform` as a user runs it: a real process, files and stdin, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "meta"
REPO = Path(__file__).resolve().parents[2]


def wabridge(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "wabridge", *args], input=stdin, capture_output=True, cwd=REPO,
                          timeout=60, check=False)


def test_a_file_prints_one_genesys_message_per_line_and_skips_on_stderr():
    done = wabridge("transform", str(FIXTURES / "batch_with_malformed_message.json"))
    assert done.returncode == 0
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [m["text"] for m in lines] == ["first", "third"]
    assert b"skipped wamid.BAD1: malformed_message" in done.stderr


def test_stdin_takes_one_webhook_per_line_and_invalid_json_exits_2():
    good = json.dumps(json.loads((FIXTURES / "text.json").read_bytes())).encode()
    statuses = json.dumps(json.loads((FIXTURES / "statuses.json").read_bytes())).encode()
    done = wabridge("transform", "-", stdin=good + b"\n{not json\n" + statuses + b"\n")
    assert done.returncode == 2
    assert [json.loads(line)["text"] for line in done.stdout.splitlines()] == ["Does it come in another color?"]
    err = done.stderr.decode()
    assert "input 2: invalid: not JSON" in err
    assert "input 3: status wamid.OUT2: read (receipt Delivered)" in err


def test_a_missing_file_is_a_one_line_error_with_exit_2():
    done = wabridge("transform", str(FIXTURES / "no_such_scenario.json"))
    assert done.returncode == 2 and done.stdout == b"" and done.stderr.count(b"\n") == 1
