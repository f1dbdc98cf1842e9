"""Termination messages: any summary fits the kubelet's 4,096 bytes as valid JSON, and a reader of a cut one
is told so."""

from __future__ import annotations

import json
import math
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mlworkflow.local.runner import Process
from mlworkflow.runtime import termination
from mlworkflow.runtime.termination import MAX_BYTES, bounded, read


def drift_summary(columns: int, name_length: int) -> dict[str, Any]:
    """A drift check's summary with `columns` drifted columns whose names are `name_length` long."""
    return {
        "status": "ok",
        "version": "v3",
        "share": 1.0,
        "drifted": True,
        "threshold": 0.3,
        "driftedColumns": columns,
        "columns": [
            {"column": f"c{i:04d}".ljust(name_length, "x"), "method": "K-S p_value", "score": 0.0}
            for i in range(columns)
        ],
        "result": "churn/drift/20260101T000000Z/result.json",
    }


def fits(line: str) -> dict[str, Any]:
    assert len(line.encode()) <= MAX_BYTES and "\n" not in line
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def test_a_summary_that_fits_is_written_as_it_is() -> None:
    summary = drift_summary(3, 10)
    assert json.loads(bounded(summary)) == summary


def test_many_long_columns_keep_the_verdict_and_say_how_many_more() -> None:
    parsed = fits(bounded(drift_summary(25, 120)))  # 4.7 KB as written before: the reported case
    kept = parsed["columns"]
    assert 0 < len(kept) < 25 and [c["column"] for c in kept] == [
        f"c{i:04d}".ljust(120, "x") for i in range(len(kept))
    ]
    assert parsed["truncated"] == {"columns": 25 - len(kept)}, "and N more"
    assert {k: parsed[k] for k in ("status", "version", "share", "drifted", "driftedColumns", "result")} == {
        "status": "ok",
        "version": "v3",
        "share": 1.0,
        "drifted": True,
        "driftedColumns": 25,
        "result": "churn/drift/20260101T000000Z/result.json",
    }


@pytest.mark.parametrize(
    "summary",
    [
        pytest.param(drift_summary(800, 300), id="hundreds of long column names"),
        pytest.param({"status": "error", "message": "é" * 10_000}, id="non-ASCII, 6 bytes a character"),
        pytest.param({"status": "ok", "deep": [[[["x" * 50] * 40] * 40] * 40]}, id="nested lists"),
        pytest.param({"status": "ok", **{f"key{i}": i for i in range(2000)}}, id="many top-level keys"),
        pytest.param({"status": "ok", "key" * 2000: 1}, id="a long key"),
        pytest.param({"status": "ok", "share": math.nan, "score": math.inf}, id="NaN and infinity"),
        pytest.param({"status": "ok", "what": object()}, id="not JSON at all"),
    ],
)
def test_whatever_the_data_the_line_is_json_within_the_limit(summary: dict[str, Any]) -> None:
    parsed = fits(bounded(summary))
    assert parsed["status"] == summary["status"]


def test_non_finite_numbers_become_null() -> None:
    assert json.loads(bounded({"share": math.nan, "score": -math.inf})) == {"share": None, "score": None}


def test_only_the_essential_keys_stay_when_nothing_else_fits() -> None:
    summary = {"status": "ok", "version": "v2", "share": 0.5, **{f"key{i}": i for i in range(2000)}}
    parsed = fits(bounded(summary))
    assert parsed == {"status": "ok", "version": "v2", "share": 0.5, "truncated": {"(other keys)": 2000}}


def test_the_written_file_and_the_log_line_are_the_bounded_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "termination-log"
    termination.report(drift_summary(500, 100), str(path))
    assert path.read_text() == capsys.readouterr().out.strip()
    fits(path.read_text())


def test_a_reader_gets_the_summary_back() -> None:
    line = bounded(drift_summary(500, 100))
    assert read(line) == json.loads(line)
    assert read("log line\n" + line + "\n") == json.loads(line), "the last line is the summary"


def test_a_message_cut_by_the_kubelet_is_an_error_saying_so() -> None:
    written = json.dumps(drift_summary(25, 120))  # as an unbounded writer wrote it: 4.7 KB
    kept = written.encode()[-MAX_BYTES:].decode()  # the kubelet keeps the last 4,096 bytes
    result = read(kept)
    assert result["status"] == "error" and result["reason"] == "ResultCut"
    assert "cut at the termination message's limit of 4096 bytes" in result["message"]


def test_garbled_json_is_an_error_and_a_log_tail_is_left_to_the_caller() -> None:
    garbled = read('{"status": "ok", "share": ')
    assert garbled["status"] == "error" and garbled["reason"] == "ResultUnreadable"
    assert '{"status": "ok"' in garbled["message"]
    assert read("Traceback (most recent call last):\nValueError: boom") == {}
    assert read("") == {} and read("\n  \n") == {}


def test_the_local_runner_says_a_result_file_is_unreadable(tmp_path: Path) -> None:
    result_file, log = tmp_path / "result.json", tmp_path / "run.log"
    result_file.write_text('{"status": "ok", "share": 0.')
    log.write_text("Traceback ...\nValueError: boom\n")
    with subprocess.Popen(["true"]) as popen:
        popen.wait()
    process = Process(popen, log, result_file, datetime.now(UTC))
    assert process.result()["reason"] == "ResultUnreadable"
    result_file.write_text("")
    assert process.result() == {"status": "error", "message": "Traceback ...\nValueError: boom"}
