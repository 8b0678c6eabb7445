"""Helpers every benchmark shares: the machine description, medians, tables, peers as subprocesses, memory.

Benchmarks import this as ``from common import ...`` because each runs as a script from ``bench/``.
"""

import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import psutil
import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "work"


def cpu_model() -> str:
    """Return the ``Model name`` line of ``lscpu``, or the platform's processor string when lscpu is missing."""
    if shutil.which("lscpu"):
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in output.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def print_machine(title: str, threads: str) -> None:
    """Print the header every benchmark starts with: what ran, on which CPU, with which threads and torch."""
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"# {title}")
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, threads: {threads}")
    print(f"load average at start (1, 5, 15 min): {load}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_table(headers: list[str], rows: list[list]) -> None:
    """Print a Markdown table, so that the output can be pasted into docs/benchmarks.md as it is."""
    cells = [[_format(value) for value in row] for row in rows]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in cells:
        print("| " + " | ".join(row) + " |")
    print(flush=True)


def _format(value) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.3e}"
    return str(value)


class Elapsed:
    """Wall-clock and CPU seconds of one timed block (CPU: all threads of this process)."""

    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def timer():
    """Yield an :class:`Elapsed` that holds the block's wall and CPU seconds when the block ends.

    On a shared machine other processes take turns on the cores, which stretches wall time but not the CPU time
    this process gets, so single-process compute rates are reported per CPU second as well.
    """
    elapsed = Elapsed()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield elapsed
    finally:
        elapsed.wall = time.perf_counter() - wall
        elapsed.cpu = time.process_time() - cpu


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# processes


def python_command(*arguments: str) -> list[str]:
    return [sys.executable, *arguments]


def peer_command(*arguments: str) -> list[str]:
    """Return the ``cellmind-peer`` command line for this interpreter, so that the benchmark's venv is used."""
    return [sys.executable, "-c", "import sys; from cellmind.cli import peer_main; sys.exit(peer_main())", *arguments]


def cellmind_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "cellmind", *arguments]


def child_environment(threads: int) -> dict[str, str]:
    """Environment for a child process pinned to ``threads`` math threads, unbuffered."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


class Processes:
    """Children started by one benchmark; ``close`` ends each of them and its descendants (p2pd included)."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, command: list[str], log_path: Path, threads: int = 1, env: dict | None = None,
              **kwargs) -> subprocess.Popen:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "w", encoding="utf-8")
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**child_environment(threads), **(env or {})},
            cwd=REPO_DIR, start_new_session=True, **kwargs,
        )
        process.log_path = log_path
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 60.0) -> int | None:
        """Send SIGINT (a clean stop for a peer), then SIGKILL to what is left of its process tree."""
        tree = _tree(process.pid)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        for child in tree:
            if child.is_running():
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
        if process.poll() is None:
            process.kill()
            process.wait(10)
        return process.returncode

    def kill(self, process: subprocess.Popen) -> None:
        """SIGKILL the process and its descendants at once, as a crash or a pulled plug would end them."""
        for child in [*_tree(process.pid)]:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        process.wait(10)

    def close(self) -> None:
        for process in self.started:
            self.stop(process, timeout=30.0)

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (the DHT and averager forks and p2pd)."""
    total = 0
    for process in _tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def wait_for_line(process: subprocess.Popen, pattern: str, timeout: float, start_offset: int = 0) -> float:
    """Wait until the process's log contains ``pattern``; return the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = Path(process.log_path).read_text(encoding="utf-8", errors="replace")[start_offset:]
        if pattern in text:
            return time.monotonic()
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[-1]!r}... exited with {process.returncode}; see {process.log_path}")
        time.sleep(0.05)
    raise TimeoutError(f"{pattern!r} did not appear in {process.log_path} within {timeout:.0f} s")


def read_join_address(join_file: Path, process: subprocess.Popen, timeout: float = 120.0) -> str:
    """Return the first multiaddr of a bootstrap's join line, once it has written ``join.txt``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the bootstrap exited with {process.returncode}; see {process.log_path}")
        if join_file.is_file():
            words = join_file.read_text(encoding="utf-8").split()
            addresses = [word for word in words if word.startswith("/ip4/")]
            if addresses:
                return addresses[0]
        time.sleep(0.2)
    raise TimeoutError(f"no join line in {join_file} within {timeout:.0f} s")


LOG_TIME = re.compile(r"^[A-Z][a-z]{2} \d{2} (\d{2}):(\d{2}):(\d{2}\.\d{3}) ")


def log_seconds(line: str) -> float | None:
    """Seconds since midnight of a Hivemind-style log line (``Dec 04 20:54:14.454 [INFO] ...``), else None."""
    match = LOG_TIME.match(line)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def now_seconds() -> float:
    """Seconds since local midnight now, on the clock :func:`log_seconds` reads."""
    moment = datetime.now()
    return moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6


def tree_cpu_breakdown(pid: int) -> dict[str, float]:
    """CPU seconds of a process tree split into the root process, its p2pd and its other (forked) processes."""
    parts = {"main process": 0.0, "p2pd": 0.0, "forked processes": 0.0}
    for process in _tree(pid):
        try:
            times = process.cpu_times()
            if process.pid == pid:
                part = "main process"
            elif process.name() == "p2pd":
                part = "p2pd"
            else:
                part = "forked processes"
            parts[part] += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return parts


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    total = 0.0
    for process in _tree(pid):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes summed over a process tree.

    The RSS sum counts pages shared between the processes (forked Hivemind processes, shared-memory tensors) once
    per process, so it overstates; PSS divides each shared page among the processes that map it.
    """
    rss = pss = 0
    for process in _tree(pid):
        try:
            info = process.memory_full_info()
            rss, pss = rss + info.rss, pss + info.pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss, pss


class TreeSampler:
    """Poll a process tree's CPU time and memory and watch its log for lines containing ``marker``, in a thread.

    ``events`` contains ``(monotonic time, tree CPU seconds, line)`` for each new marker line, seen within one
    polling period (``period`` seconds) of being written; ``peak_rss`` and ``peak_pss`` are the largest tree
    sums seen (PSS only with ``memory=True``, because reading it costs a few milliseconds per process).
    """

    def __init__(self, process: subprocess.Popen, marker: str | None = None, period: float = 0.1,
                 memory: bool = False):
        import threading

        self.process, self.marker, self.period, self.memory = process, marker, period, memory
        self.events: list[tuple[float, float, str]] = []
        self.breakdowns: list[dict[str, float]] = []  # tree_cpu_breakdown at each event
        self.peak_rss = self.peak_pss = 0
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.process.poll() is None:
            if self.memory:
                rss, pss = tree_memory(self.process.pid)
                self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            else:
                self.peak_rss = max(self.peak_rss, tree_rss(self.process.pid))
            if self.marker is not None:
                self._read_log()
            self._stop.wait(self.period)

    def _read_log(self) -> None:
        with open(self.process.log_path, encoding="utf-8", errors="replace") as log:
            log.seek(self._offset)
            text = log.read()
        complete = text[: text.rfind("\n") + 1]
        self._offset += len(complete.encode("utf-8"))
        lines = [line for line in complete.splitlines() if self.marker in line]
        if lines:
            now, breakdown = time.monotonic(), tree_cpu_breakdown(self.process.pid)
            self.events.extend((now, sum(breakdown.values()), line) for line in lines)
            self.breakdowns.extend(breakdown for _line in lines)

    def wait_events(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            if self.process.poll() is not None:
                raise RuntimeError(f"process exited with {self.process.returncode}; see {self.process.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} lines with {self.marker!r} not seen within {timeout:.0f} s "
                                   f"in {self.process.log_path}")
            time.sleep(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def tree_pids(pid: int, name: str | None = None) -> set[int]:
    """Pids of a process tree, or only of its processes called ``name`` (e.g. ``p2pd``)."""
    pids = set()
    for process in _tree(pid):
        try:
            if name is None or process.name() == name:
                pids.add(process.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def tcp_bytes_sent(pids: set[int]) -> dict[tuple[str, str], int]:
    """``bytes_sent`` of every TCP socket that one of ``pids`` owns, by (local, remote) address, from ``ss``.

    The kernel counts these per socket (tcp_info), so they are the bytes a process put on the wire, retransmissions
    included, whatever else runs on the machine.
    """
    output = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, check=True).stdout
    sent, key = {}, None
    for line in output.splitlines():
        if not line.startswith((" ", "\t")):
            fields = line.split()
            owners = {int(part[4:]) for part in line.replace(",", " ").replace(")", " ").split()
                      if part.startswith("pid=")}
            key = (fields[3], fields[4]) if owners & pids and len(fields) >= 5 else None
        elif key is not None:
            for field in line.split():
                if field.startswith("bytes_sent:"):
                    sent[key] = int(field.split(":")[1])
    return sent


def bytes_sent_between(before: dict, after: dict) -> int:
    """Bytes sent on each socket between two :func:`tcp_bytes_sent` snapshots; new sockets count from zero."""
    return sum(value - before.get(key, 0) for key, value in after.items())


def watch_markers(process: subprocess.Popen, markers: list[str], timeout: float) -> dict[str, float]:
    """Poll a process's log until each marker has appeared; return the monotonic time each was first seen."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(markers):
        text = Path(process.log_path).read_text(encoding="utf-8", errors="replace")
        now = time.monotonic()
        for marker in markers:
            if marker not in seen and marker in text:
                seen[marker] = now
        if process.poll() is not None and len(seen) < len(markers):
            raise RuntimeError(f"process exited with {process.returncode}; see {process.log_path}")
        if now > deadline:
            missing = [marker for marker in markers if marker not in seen]
            raise TimeoutError(f"{missing} not seen within {timeout:.0f} s in {process.log_path}")
        time.sleep(0.05)
    return seen
