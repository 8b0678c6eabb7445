"""``cellmind monitor`` against a real swarm on 127.0.0.1: peers in separate processes, the viewer as the CLI.

One swarm serves the whole module: two peers start, the JSON snapshot and the web page (in headless Chromium) are
checked on them, then the viewer restarts while a third peer joins, and one peer is killed. The tests run in file
order for that reason. Processes a test starts itself end with it (``tests/conftest.py`` reaps them).
Peers are ``tests/monitor_peer.py``: a tiny model under ``hivemind.Optimizer`` with CellMind's metrics publisher.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.swarm, pytest.mark.timeout(300)]

RUN_ID = "monitor-e2e"
PEER_SCRIPT = Path(__file__).with_name("monitor_peer.py")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
METRICS_EXPIRATION = 3.0
"""Seconds a test peer's metrics record lives, so a killed peer leaves the view within seconds."""


class Processes:
    """Every process the tests start, each in its own session so that its DHT and p2pd children end with it."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.started = log_dir, {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("w")
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "COLUMNS": "120"}
        )
        self.started[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.started[name]
        if process.poll() is None:
            os.killpg(process.pid, sig)

    def stop(self, *names: str, timeout: float = 10.0) -> None:
        """SIGINT first (a clean shutdown), then SIGKILL for each group still there after ``timeout`` seconds."""
        running = [self.started[name] for name in names if self.started[name].poll() is None]
        for process in running:
            os.killpg(process.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for name in names:
            try:
                os.killpg(self.started[name].pid, signal.SIGKILL)  # leftovers of the group (DHT process, p2pd)
            except ProcessLookupError:
                pass
            self.started[name].wait(5)

    def stop_all(self) -> None:
        self.stop(*self.started, timeout=5.0)


def wait_until(check, timeout: float, interval: float = 0.5, describe=lambda: ""):
    """Call ``check()`` until it returns something truthy and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout}s; {describe()}")


def start_peer(processes: Processes, name: str, initial_peers: list[str], address_file: Path = None):
    argv = [sys.executable, str(PEER_SCRIPT), "--run-id", RUN_ID, "--name", name,
            "--expiration", str(METRICS_EXPIRATION), "--period", "0.5", "--step-delay", "0.15"]
    if initial_peers:
        argv += ["--initial-peers", *initial_peers]
    if address_file is not None:
        argv += ["--address-file", str(address_file)]
    return processes.start(name, argv)


def start_viewer(processes: Processes, name: str, address: str, history: Path) -> str:
    """Start ``cellmind monitor --web`` and return the URL of its page."""
    processes.start(name, [sys.executable, "-m", "cellmind", "monitor", "--initial-peers", address, "--run-id", RUN_ID,
                           "--web", "127.0.0.1:0", "--refresh", "500ms", "--history", str(history)])

    def url():
        match = re.search(r"http://127\.0\.0\.1:\d+/", processes.log(name))
        return match.group(0) if match else None

    return wait_until(url, timeout=60, describe=lambda: processes.log(name)[-2000:])


def once_json(address: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "cellmind", "monitor", "--initial-peers", address, "--run-id", RUN_ID, "--once",
         "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def web_state(url: str) -> dict:
    with urllib.request.urlopen(url + "api/state", timeout=5) as response:
        return json.loads(response.read())


def peer_names(snapshot: dict) -> set[str]:
    return {peer["name"] for peer in snapshot["peers"]}


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    directory = tmp_path_factory.mktemp("monitor-swarm")
    processes = Processes(directory)
    try:
        start_peer(processes, "alpha", [], address_file=directory / "alpha.addr")
        address = wait_until(
            lambda: (directory / "alpha.addr").exists() and (directory / "alpha.addr").read_text(),
            timeout=60, describe=lambda: processes.log("alpha")[-2000:],
        )
        start_peer(processes, "beta", [address], address_file=directory / "beta.addr")
        history = directory / "history.jsonl"
        url = start_viewer(processes, "viewer", address, history)
        # Wait until every long-lived process has forked its DHT, averager and p2pd children: children that
        # appear during a test are reaped at its end by tests/conftest.py.
        wait_until(lambda: (directory / "beta.addr").exists(), timeout=60, describe=lambda: processes.log("beta"))
        wait_until(lambda: web_state(url)["snapshot"], timeout=60, describe=lambda: processes.log("viewer"))
        yield dict(processes=processes, address=address, url=url, history=history, directory=directory)
    finally:
        processes.stop_all()


def test_once_json_lists_both_peers_training(swarm):
    def both_training():  # polled on the running viewer, because each --once run starts a DHT node
        snapshot = web_state(swarm["url"])["snapshot"]
        return snapshot and peer_names(snapshot) == {"alpha", "beta"} and all(
            peer["local_epoch"] >= 1 for peer in snapshot["peers"])

    wait_until(both_training, timeout=90, describe=lambda: web_state(swarm["url"])["snapshot"])
    first = once_json(swarm["address"])
    assert peer_names(first) == {"alpha", "beta"}
    first_epochs = {peer["name"]: peer["local_epoch"] for peer in first["peers"]}

    def advanced():  # polled on the running viewer again; then one more --once run must show it too
        snapshot = web_state(swarm["url"])["snapshot"]
        epochs = {peer["name"]: peer["local_epoch"] for peer in snapshot["peers"]}
        return epochs.keys() == first_epochs.keys() and all(epochs[name] > first_epochs[name] for name in epochs)

    wait_until(advanced, timeout=60, describe=lambda: web_state(swarm["url"])["snapshot"])
    second = once_json(swarm["address"])
    assert {peer["name"]: peer["local_epoch"] > first_epochs[peer["name"]] for peer in second["peers"]} == {
        "alpha": True, "beta": True,
    }
    epochs = [peer["local_epoch"] for peer in second["peers"]]
    assert max(epochs) <= second["global_epoch"] <= min(epochs) + 2  # records are up to one period old
    assert second["num_peers"] == 2
    assert second["target_batch_size"] == 24
    assert second["samples_per_second"] > 0
    assert second["rejected"] == {"malformed": 0, "forged": 0}
    assert all(peer["age"] < METRICS_EXPIRATION for peer in second["peers"])


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                                                  "(run `make browser` or `apt-get install chromium`)")
def test_page_shows_peers_and_loss_plot(swarm, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000}, locale="en-US")
            page.goto(swarm["url"])
            page.wait_for_function(
                """() => document.querySelectorAll('#peers tbody tr[data-peer-id]').length === 2
                        && Number(document.getElementById('loss-plot').dataset.points) >= 2""",
                timeout=60_000,
            )
            names = page.locator("#peers tbody tr td:nth-child(2)").all_text_contents()
            assert sorted(names) == ["alpha", "beta"]
            assert page.locator("h1").text_content() == "CellMind monitor"
            assert int(page.locator("#global-epoch").text_content()) >= 1
            assert painted_pixels(page, "loss-plot") > 100
            page.screenshot(path=str(tmp_path / "monitor-desktop.png"), full_page=True)

            phone = browser.new_page(viewport={"width": 390, "height": 844}, locale="ko-KR", device_scale_factor=2)
            phone.goto(swarm["url"])
            phone.wait_for_function("() => document.querySelectorAll('#peers tbody tr[data-peer-id]').length === 2",
                                    timeout=30_000)
            assert phone.locator("h1").text_content() == "CellMind 모니터"
            assert phone.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
            phone.screenshot(path=str(tmp_path / "monitor-phone.png"), full_page=True)
        finally:
            browser.close()


def painted_pixels(page, canvas_id: str) -> int:
    return page.evaluate(
        """(id) => {
            const canvas = document.getElementById(id);
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
            return painted;
        }""",
        canvas_id,
    )


def test_restarted_viewer_sees_peer_join_and_leave(swarm):
    processes = swarm["processes"]

    # restart the viewer while a third peer starts; killed, it kept only what it had appended to its history
    before = len(web_state(swarm["url"])["series"]["training_loss"])
    assert before >= 1
    processes.kill("viewer")
    processes.started["viewer"].wait(10)
    start_peer(processes, "gamma", [swarm["address"]])
    url = start_viewer(processes, "viewer-restarted", swarm["address"], swarm["history"])
    assert len(web_state(url)["series"]["training_loss"]) >= before

    # the third peer appears
    def names_now():
        snapshot = web_state(url)["snapshot"]
        return peer_names(snapshot) if snapshot else set()

    wait_until(lambda: names_now() == {"alpha", "beta", "gamma"}, timeout=90, describe=names_now)

    # a killed peer disappears once its last record expires
    processes.kill("beta")
    killed_at = time.monotonic()
    wait_until(lambda: names_now() == {"alpha", "gamma"}, timeout=30, describe=names_now)
    assert time.monotonic() - killed_at >= METRICS_EXPIRATION - 1.5  # it left by expiry, not by a clean exit
