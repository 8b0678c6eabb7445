"""Progress bars and spinners draw on a terminal's stderr and stay silent elsewhere."""

import fcntl
import io
import os
import select
import struct
import sys
import termios
import time

import pytest

from cellmind.progress import DISABLE_VARIABLE, progress_bar, progress_enabled, spinner


class PseudoTerminal:
    """A pseudo-terminal that replaces stderr. Call ``attach()`` in the test body, because pytest resets stderr before it."""

    def __init__(self, monkeypatch, columns: int = 100, rows: int = 24):
        self.monkeypatch = monkeypatch
        self.leader, follower = os.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.stream = open(follower, "w", encoding="utf-8", buffering=1)

    def attach(self) -> None:
        self.monkeypatch.setattr(sys, "stderr", self.stream)

    def read(self) -> str:
        """Return what was drawn so far."""
        self.stream.flush()
        chunks = []
        # The pty hands written bytes to the reading side asynchronously: read until it stays quiet.
        while select.select([self.leader], [], [], 0.5)[0]:
            chunks.append(os.read(self.leader, 65536))
        return b"".join(chunks).decode("utf-8", errors="replace")

    def close(self) -> None:
        self.stream.close()
        os.close(self.leader)


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.delenv(DISABLE_VARIABLE, raising=False)
    pseudo_terminal = PseudoTerminal(monkeypatch)
    yield pseudo_terminal
    pseudo_terminal.close()


def test_disabled_for_pipes():
    assert not progress_enabled(io.StringIO())


def test_bar_silent_when_not_a_terminal(capsys):
    with progress_bar(total=10, description="tokenizing") as bar:
        bar.update(10)
    with spinner("waiting"):
        pass
    assert capsys.readouterr().err == ""


def test_bar_draws_on_terminal(terminal):
    terminal.attach()
    with progress_bar(total=4, description="tokenizing train.jsonl") as bar:
        bar.update(4)
    drawn = terminal.read()
    assert "tokenizing train.jsonl" in drawn
    assert "/4 [" in drawn


def test_spinner_draws_on_terminal(terminal):
    terminal.attach()
    with spinner("downloading the swarm's model"):
        time.sleep(0.3)
    assert "downloading the swarm's model" in terminal.read()


def test_environment_variable_turns_progress_off(terminal, monkeypatch):
    terminal.attach()
    assert progress_enabled()
    monkeypatch.setenv(DISABLE_VARIABLE, "1")
    assert not progress_enabled()
    with progress_bar(total=2, description="tokenizing") as bar:
        bar.update(2)
    assert terminal.read() == ""


def test_bar_draws_without_terminal_size(monkeypatch):
    terminal = PseudoTerminal(monkeypatch, columns=0, rows=0)  # what a new pty, or `script` without a terminal, reports
    try:
        terminal.attach()
        monkeypatch.delenv(DISABLE_VARIABLE, raising=False)
        with progress_bar(total=4, description="tokenizing train.jsonl") as bar:
            bar.update(4)
        assert "tokenizing train.jsonl" in terminal.read()
    finally:
        terminal.close()
