"""Shared test fixtures: reaping child processes, a tiny run (corpus, tokenizer, config), and peer processes.

Swarm tests start real peers as separate processes on 127.0.0.1 (two optimizers in one process would look like
one peer). Each peer runs in its own session, so that killing its process group also ends the DHT, averager and
p2pd processes it forked, including those left behind by a SIGKILL of the peer itself.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

PEER_COMMAND = Path(sys.executable).with_name("cellmind-peer")
CELLMIND_COMMAND = Path(sys.executable).with_name("cellmind")

AVERAGE_STATE_EVERY = 4
"""Global epochs between parameter averaging rounds in the tiny run."""

# A few words in a fixed cycle: the next word is fully determined by the previous ones, so even a one-layer
# model's loss falls quickly on it.
EASY_WORDS = ["안녕", "하세요", "오늘", "날씨", "좋네요", "밥", "먹었어", "응", "그래", "내일", "봐", "잘자"]


# child processes


def _kill_tree(process: psutil.Process) -> None:
    for member in [*process.children(recursive=True), process]:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(autouse=True)
def reap_children():
    """Kill the child processes a test leaves behind (DHT nodes, averagers, p2pd), except long-lived peers."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    yield
    for child in psutil.Process().children(recursive=True):
        if child.pid in before or _belongs_to_kept_peer(child.pid):
            continue
        _kill_tree(child)
    for peer in list(PeerProcess.running):
        if not peer.keep:
            peer.kill_group()


def _belongs_to_kept_peer(pid: int) -> bool:
    """Whether ``pid`` is a long-lived peer or was started by one (its DHT, averagers, p2pd, torch_shm_manager)."""
    kept = {peer.pid for peer in PeerProcess.running if peer.keep}
    try:
        process = psutil.Process(pid)
        return process.pid in kept or any(parent.pid in kept for parent in process.parents())
    except psutil.NoSuchProcess:
        return False


# peer processes


class PeerProcess:
    """A ``cellmind-peer`` (or ``cellmind``) subprocess whose merged output is collected line by line."""

    running: list["PeerProcess"] = []

    def __init__(self, command: list[str], cwd: Path, log_path: Path, keep: bool = False,
                 env: dict[str, str] | None = None):
        self.log_path = log_path
        self.keep = keep
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8", "LANGUAGE": "", **(env or {})},
        )
        self.pid = self.pgid = self.process.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        PeerProcess.running.append(self)

    def _read(self) -> None:
        with open(self.log_path, "w", encoding="utf-8") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match:
        """Return the first match of ``pattern`` in an output line at index ``start`` or later."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self._changed:
            while True:
                for index in range(index, len(self.lines)):
                    match = regex.search(self.lines[index])
                    if match:
                        self.last_index = index
                        return match
                index = len(self.lines)
                if not self._reader.is_alive() and index == len(self.lines):
                    raise AssertionError(f"peer exited before printing {pattern!r}; output in {self.log_path}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout} s; output in {self.log_path}")
                self._changed.wait(min(remaining, 1.0))

    def matches(self, pattern: str) -> list[re.Match]:
        regex = re.compile(pattern)
        with self._changed:
            return [match for line in self.lines if (match := regex.search(line))]

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children(recursive=True)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill_group(self) -> None:
        """SIGKILL every process of this peer's session, orphans included."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        if self in PeerProcess.running:
            PeerProcess.running.remove(self)


# the tiny run


@dataclass
class TinyRun:
    """A directory with an easy corpus, its tokenizer and a config for a one-layer model."""

    root: Path
    config_path: Path

    def peer(self, *args: str, log_name: str, keep: bool = False, env: dict[str, str] | None = None) -> PeerProcess:
        """Start ``cellmind-peer`` on this run; ``env`` adds variables to the inherited environment."""
        command = [str(PEER_COMMAND), "--config", str(self.config_path), "--threads", "1", "-v", *args]
        return PeerProcess(command, cwd=self.root, log_path=self.root / f"{log_name}.log", keep=keep, env=env)

    def cellmind(self, *args: str, log_name: str) -> PeerProcess:
        command = [str(CELLMIND_COMMAND), *args]
        return PeerProcess(command, cwd=self.root, log_path=self.root / f"{log_name}.log")


def _easy_lines(count: int) -> list[str]:
    return [" ".join(EASY_WORDS[(start + k) % len(EASY_WORDS)] for k in range(12)) for start in range(count)]


def _write_jsonl(path: Path, lines: list[str], per_record: int) -> None:
    with open(path, "w", encoding="utf-8") as file:
        for first in range(0, len(lines), per_record):
            text = "\n".join(lines[first : first + per_record])
            file.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    from cellmind.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tiny-run")
    data = root / "data"
    data.mkdir()
    lines = _easy_lines(480)
    (data / "text.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_jsonl(data / "train.jsonl", lines, per_record=4)
    _write_jsonl(data / "val.jsonl", lines[:48], per_record=4)
    tokenizer_path = train_tokenizer(data / "text.txt", root / "tokenizer", vocab_size="auto")

    config = {
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "dropout": 0.0},
        "tokenizer": {"model_path": str(tokenizer_path)},
        "training": {
            "batch_size": 8, "lr": 0.003, "warmup_steps": 1, "seq_len": 32,
            "dataset_path": str(data / "train.jsonl"), "val_path": str(data / "val.jsonl"),
            "checkpoint_every": 1, "keep_checkpoints": 100,
        },
        "swarm": {"run_id": "tiny", "target_batch_size": 32, "matchmaking_time": 3.0, "averaging_timeout": 30.0,
                  "compression": "none", "average_state_every": AVERAGE_STATE_EVERY},
    }
    config_path = root / "config.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return TinyRun(root=root, config_path=config_path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
