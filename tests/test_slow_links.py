"""Peers on slow and lossy links: two network namespaces joined by one veth pair, shaped with ``tc`` (opt-in).

The test creates its own namespaces and gives them 10.x addresses that exist only inside them; the veth pair
connects these two namespaces and nothing else. It needs root and a kernel that permits network namespaces, and
skips with the reason otherwise. ``tc netem`` (delay and loss) needs the kernel's ``sch_netem`` module, which
some containers lack; the slow-link case then still runs with a token bucket (``tbf``) that limits the rate.
Runs with ``make test-faults`` (``CELLMIND_FAULT_TESTS=1``).
"""

import os
import subprocess
import uuid

import pytest

from conftest import PEER_COMMAND, PeerProcess

pytestmark = [
    pytest.mark.swarm,
    pytest.mark.skipif(not os.environ.get("CELLMIND_FAULT_TESTS"),
                       reason="minutes of swarm training over shaped links; run with `make test-faults`"),
]

TOGETHER_LINE = r"global epoch (\d+) \| loss [\d.]+ \| \d+ samples/s \| 2 peers in last round \| lr "
JOIN_LINE = r"^\s+cellmind-peer --initial-peers (\S+)$"
START_TIMEOUT = 180
STEP_TIMEOUT = 180
SHAPES = {
    # delay 40 ms +- 10 ms and 2 % loss each way: a home uplink on a bad day
    "netem": ["netem", "delay", "40ms", "10ms", "loss", "2%"],
    # 4 Mbit/s with a 100 ms queue: a slow uplink, no loss
    "tbf": ["tbf", "rate", "4mbit", "burst", "32kbit", "latency", "100ms"],
}


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


class LinkedNamespaces:
    """Two namespaces ``a`` and ``b`` with 10.77.0.1 and 10.77.0.2 on the two ends of one veth pair."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.names = {"a": f"cm-a-{tag}", "b": f"cm-b-{tag}"}
        self.devices = {"a": f"cmva{tag}", "b": f"cmvb{tag}"}
        self.addresses = {"a": "10.77.0.1", "b": "10.77.0.2"}
        self.created: list[str] = []

    def create(self) -> str | None:
        """Set the namespaces up; return why not (a reason to skip) or None."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        for name in self.names.values():
            result = _ip("netns", "add", name)
            if result.returncode != 0:
                return f"'ip netns add' is not permitted here: {result.stderr.strip()}"
            self.created.append(name)
        a, b = self.names["a"], self.names["b"]
        steps = [("link", "add", self.devices["a"], "netns", a, "type", "veth", "peer", "name", self.devices["b"],
                  "netns", b)]
        for side in ("a", "b"):
            ns, device = self.names[side], self.devices[side]
            steps += [("-n", ns, "addr", "add", f"{self.addresses[side]}/24", "dev", device),
                      ("-n", ns, "link", "set", device, "up"), ("-n", ns, "link", "set", "lo", "up")]
        for step in steps:
            result = _ip(*step)
            if result.returncode != 0:
                return f"'ip {' '.join(step)}' failed: {result.stderr.strip()}"
        return None

    def shape(self, shape: str) -> str | None:
        """Apply one of :data:`SHAPES` on both ends; return why it cannot be applied, or None."""
        for side in ("a", "b"):
            command = ["ip", "netns", "exec", self.names[side], "tc", "qdisc", "add", "dev", self.devices[side],
                       "root", *SHAPES[shape]]
            result = subprocess.run(command, capture_output=True, text=True, timeout=10)
            if result.returncode != 0:
                return f"'tc qdisc add ... {SHAPES[shape][0]}' failed: {result.stderr.strip()}"
        return None

    def delete(self) -> None:
        for name in self.created:  # deleting a namespace removes its end of the veth pair, and with it the pair
            _ip("netns", "del", name)


@pytest.fixture
def namespaces():
    linked = LinkedNamespaces()
    reason = linked.create()
    try:
        if reason is not None:
            pytest.skip(reason)
        yield linked
    finally:
        linked.delete()


def _peer_in(namespace: str, tiny_run, *args: str, log_name: str) -> PeerProcess:
    command = ["ip", "netns", "exec", namespace, str(PEER_COMMAND), "--config", str(tiny_run.config_path),
               "--threads", "1", "-v", *args]
    return PeerProcess(command, cwd=tiny_run.root, log_path=tiny_run.root / f"{log_name}.log")


@pytest.mark.parametrize("shape", ["netem", "tbf"])
def test_peers_on_shaped_link_take_global_steps(namespaces, tiny_run, shape):
    reason = namespaces.shape(shape)
    if reason is not None:
        pytest.skip(f"{reason} (the kernel lacks the sch_{shape} queueing discipline)")
    common = ["--target-batch-size", "128", "--averaging-timeout", "30"]
    bootstrap = _peer_in(
        namespaces.names["a"], tiny_run, "--bootstrap", "--host-maddrs", f"/ip4/{namespaces.addresses['a']}/tcp/31337",
        "--identity", str(tiny_run.root / f"ns-{shape}" / "identity.key"),
        "--checkpoint-dir", str(tiny_run.root / f"ns-{shape}-boot"), *common, log_name=f"ns-{shape}-bootstrap",
    )
    address = bootstrap.wait_for(JOIN_LINE, START_TIMEOUT).group(1)
    assert address.startswith(f"/ip4/{namespaces.addresses['a']}/tcp/31337/p2p/")
    joiner = _peer_in(
        namespaces.names["b"], tiny_run, "--initial-peers", address,
        "--host-maddrs", f"/ip4/{namespaces.addresses['b']}/tcp/0",
        "--checkpoint-dir", str(tiny_run.root / f"ns-{shape}-joiner"), *common, log_name=f"ns-{shape}-joiner",
    )
    first = int(joiner.wait_for(TOGETHER_LINE, START_TIMEOUT).group(1))
    joiner.wait_for(rf"global epoch {first + 2} \|", STEP_TIMEOUT)
    bootstrap.wait_for(rf"global epoch {first + 2} \|", STEP_TIMEOUT)
    for peer in (bootstrap, joiner):
        peer.kill_group()
