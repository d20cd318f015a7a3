"""Progress bars only on a terminal; what a command prints is unchanged."""

from __future__ import annotations

import io
import time

import pytest

from properties.progress import process_started, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_the_items_pass_and_nothing_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    assert list(progress(iter(range(5)), "work", 5)) == [0, 1, 2, 3, 4]
    assert stderr.getvalue() == ""


def test_on_a_terminal_a_bar_goes_to_standard_error_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert list(progress([3, 1, 2], "traces")) == [3, 1, 2]
    assert "traces" in terminal.getvalue()
    assert "0/3" in terminal.getvalue()  # drawn, then cleared (leave=False)
    assert terminal.getvalue().endswith("\r")
    assert capsys.readouterr().out == ""


def test_the_process_started_before_now() -> None:
    started = process_started()
    assert started <= time.perf_counter()
    assert time.perf_counter() - started < 24 * 3600 * 365  # a process, not the machine


def test_the_gate_shows_a_bar_per_section_on_a_terminal_and_lines_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from properties.gate import Progress

    for stream, expected in ((Terminal(), "10/10"), (io.StringIO(), "  contract ...\n")):
        monkeypatch.setattr("sys.stderr", stream)
        progress_of_the_gate = Progress(True)
        for done in range(11):
            progress_of_the_gate.show("contract", done, 10)
        progress_of_the_gate.end()
        assert expected in stream.getvalue()
        if not stream.isatty():
            assert stream.getvalue() == "  contract ...\n"
