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


GENESYS = FIXTURES.parent / "genesys"


def test_outbound_turns_an_agents_message_into_meta_send_bodies():
    done = wabridge("transform", "--outbound", str(GENESYS / "image-caption.json"))
    assert done.returncode == 0, done.stderr
    [send] = [json.loads(line) for line in done.stdout.splitlines()]
    assert send["messaging_product"] == "whatsapp" and send["type"] == "image"
    assert send["image"]["link"].startswith("http") and "id" not in send["image"]
    assert json.loads(send["biz_opaque_callback_data"])["p"] == [0, 1]
    assert b"image in 1 message(s)" in done.stderr


def test_outbound_stdin_reports_typing_skips_and_invalid_input_on_stderr():
    typing = json.dumps(json.loads((GENESYS / "typing-off.json").read_bytes())).encode()
    refused = json.dumps(json.loads((GENESYS / "video-too-large.json").read_bytes())).encode()
    done = wabridge("transform", "--outbound", "-", stdin=typing + b"\n[1]\n" + refused + b"\n")
    assert done.returncode == 2 and done.stdout == b""
    err = done.stderr.decode()
    assert "input 1: skipped" in err and "input 2: invalid" in err
    assert "input 3: skipped" in err and "media_too_large" in err and "InvalidMediaContentLength" in err
