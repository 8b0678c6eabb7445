"""Faults that happen every day, in one swarm of separate processes on 127.0.0.1.

One scenario, in order, so that the swarm is started once:

- a relay bootstrap (``--no-train``) and four trainers started within one second form one swarm;
- a trainer SIGKILLs itself inside a gradient all-reduce (through ``tests/fault_hooks``, in its second round of
  all four trainers that still runs 50 ms after it starts);
- the relay is SIGKILLed, and a new peer joins through a trainer's address. The trainer it downloads its state
  from is SIGKILLed as the download starts;
- every peer is stopped and started again, one of them with a checkpoint three epochs older, and training
  resumes from the newest checkpoint among them.

It takes about three minutes on two cores.
"""

import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from cellmind.checkpoints import load_checkpoint, numbered_name
from conftest import free_port

pytestmark = pytest.mark.swarm

STEP_LINE = r"global epoch (\d+) \| loss ([\d.]+) \| \d+ samples/s \| (\d+) peers in last round \| lr "
JOIN_LINE = r"^\s+cellmind-peer --initial-peers (\S+)$"
JOINED = r"Joined the swarm at global epoch (\d+) \(parameter digest (\w+)\)"
DHT_STARTED = r"DHT node (\S+) started"
DYING_LINE = r"fault hook: SIGKILL inside gradient all-reduce \(round (\d+), (\d+) peers\)"
"""Printed by tests/fault_hooks/sitecustomize.py right before the peer SIGKILLs its process group."""
HOOKS = Path(__file__).parent / "fault_hooks"
TRAINERS = 4
MATCHMAKING_TIME, AVERAGING_TIMEOUT = 1.0, 10.0  # the tiny run's config
ACCUMULATION_TIME = 30.0
"""Seconds the swarm may need to accumulate one target batch on a loaded two-core machine."""
START_TIMEOUT = 120
STEP_TIMEOUT = 60


def step_epochs(peer, start: int = 0) -> list[int]:
    return [int(m.group(1)) for m in (re.search(STEP_LINE, line) for line in peer.lines[start:]) if m]


def digest_at(peer, epoch: int, timeout: float = STEP_TIMEOUT) -> str:
    return peer.wait_for(rf"parameters at global epoch {epoch}: digest (\w+)", timeout).group(1)


class FaultSwarm:
    """A relay bootstrap and trainers with fixed ports and identities, so each can be restarted or joined."""

    def __init__(self, tiny_run):
        self.run = tiny_run
        self.ports = {name: free_port() for name in ["relay", *self.trainer_names]}
        self.peers = {}
        self.peer_ids = {}

    trainer_names = [f"trainer{index}" for index in range(TRAINERS)]

    def address(self, name: str) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.ports[name]}/p2p/{self.peer_ids[name]}"

    def start_relay(self, suffix: str = "") -> str:
        relay = self.run.peer(
            "--bootstrap", "--no-train", "--host-maddrs", f"/ip4/127.0.0.1/tcp/{self.ports['relay']}",
            "--identity", str(self.run.root / "relay" / "identity.key"), log_name=f"relay{suffix}", keep=True,
        )
        self.peers["relay"] = relay
        address = relay.wait_for(JOIN_LINE, START_TIMEOUT).group(1)
        self.peer_ids["relay"] = address.rsplit("/", 1)[1]
        return address

    def start_trainer(self, name: str, initial_peer: str, suffix: str = "", env: dict[str, str] | None = None):
        peer = self.run.peer(
            "--initial-peers", initial_peer, "--host-maddrs", f"/ip4/127.0.0.1/tcp/{self.ports[name]}",
            "--identity", str(self.run.root / name / "identity.key"),
            "--checkpoint-dir", str(self.run.root / f"{name}-checkpoints"), "--target-batch-size", "256",
            "--name", name, log_name=f"{name}{suffix}", keep=True, env=env,
        )
        self.peers[name] = peer
        return peer

    def trainers(self):
        return [self.peers[name] for name in self.trainer_names if name in self.peers]

    def learn_peer_ids(self) -> None:
        for name in self.trainer_names:
            self.peer_ids[name] = self.peers[name].wait_for(DHT_STARTED, START_TIMEOUT).group(1)

    def kill(self, name: str) -> None:
        self.peers.pop(name).kill_group()


@pytest.fixture(scope="module")
def swarm(tiny_run):
    swarm = FaultSwarm(tiny_run)
    yield swarm
    for peer in swarm.peers.values():
        peer.kill_group()


def test_four_peers_started_together_form_one_swarm(swarm):
    relay_address = swarm.start_relay()
    # trainer3 dies inside its second gradient all-reduce of all four trainers (see the next test)
    dies = {"PYTHONPATH": os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")])),
            "CELLMIND_TEST_DIE_IN_ROUND": "2", "CELLMIND_TEST_DIE_MIN_GROUP": str(TRAINERS)}
    for name in swarm.trainer_names:  # all four within well under a second
        swarm.start_trainer(name, relay_address, env=dies if name == "trainer3" else None)
    swarm.learn_peer_ids()
    for peer in swarm.trainers():
        peer.wait_for(rf"\| {TRAINERS} peers in last round \|", START_TIMEOUT)


def test_sigkill_during_averaging_others_step_on(swarm):
    victim = swarm.peers["trainer3"]
    round_number, group_size = map(int, victim.wait_for(DYING_LINE, START_TIMEOUT).groups())
    assert round_number >= 2
    assert group_size == TRAINERS
    assert victim.process.wait(STEP_TIMEOUT) == -signal.SIGKILL
    survivors = [swarm.peers[name] for name in ("trainer0", "trainer1", "trainer2")]
    marks = [len(peer.lines) for peer in survivors]
    swarm.kill("trainer3")  # reaps whatever of its process group is left
    for peer, mark in zip(survivors, marks):
        peer.wait_for(STEP_LINE, MATCHMAKING_TIME + AVERAGING_TIMEOUT + ACCUMULATION_TIME, start=mark)
        peer.wait_for(STEP_LINE, STEP_TIMEOUT, start=peer.last_index + 1)


def test_bootstrap_killed_others_train_and_newcomers_join_through_any_peer(swarm):
    swarm.kill("relay")
    marks = {peer: len(peer.lines) for peer in swarm.trainers()}
    for peer, mark in marks.items():
        peer.wait_for(STEP_LINE, STEP_TIMEOUT, start=mark)
        peer.wait_for(STEP_LINE, STEP_TIMEOUT, start=peer.last_index + 1)

    # the newcomer joins through trainer0; whichever trainer it downloads from is SIGKILLed as the download starts
    swarm.ports["trainer3"] = free_port()
    newcomer = swarm.start_trainer("trainer3", swarm.address("trainer0"), suffix="-newcomer")
    sender_id = newcomer.wait_for(r"Downloading parameters from peer (\S+)", START_TIMEOUT).group(1)
    senders = [name for name in ("trainer0", "trainer1", "trainer2") if swarm.peer_ids[name] == sender_id]
    assert senders, f"{sender_id} is none of {swarm.peer_ids}"
    swarm.kill(senders[0])

    epoch, digest = newcomer.wait_for(JOINED, START_TIMEOUT).groups()
    assert newcomer.process.poll() is None and not newcomer.matches(r"^error:")
    survivors = [peer for name, peer in swarm.peers.items() if name not in ("trainer3", senders[0])]
    # the digest it reports is that of the peer it finally downloaded from: the killed one or a survivor
    candidates = {digest_at(peer, int(epoch)) for peer in survivors if int(epoch) in step_epochs(peer)}
    killed_log = (swarm.run.root / f"{senders[0]}.log").read_text(encoding="utf-8")
    assert digest in candidates or f"parameters at global epoch {epoch}: digest {digest}" in killed_log
    newcomer.wait_for(STEP_LINE, STEP_TIMEOUT, start=newcomer.last_index + 1)


def test_stop_all_and_restart_resumes_from_newest_checkpoint(swarm):
    running = {name: peer for name, peer in swarm.peers.items()}
    for peer in running.values():
        peer.process.send_signal(signal.SIGTERM)
    for peer in running.values():
        assert peer.wait(STEP_TIMEOUT) == 0
        peer.kill_group()
    epochs = {name: load_checkpoint(swarm.run.root / f"{name}-checkpoints" / "latest.pt").global_epoch
              for name in running}
    newest = max(epochs.values())
    assert newest > 3

    # One peer comes back with a checkpoint three epochs older: it must take the newest state, not train on its own.
    holder = min(name for name, epoch in epochs.items() if epoch == newest)
    older = numbered_name(newest - 3)
    laggard = next(name for name in sorted(running)
                   if name != holder and (swarm.run.root / f"{name}-checkpoints" / older).is_file())
    laggard_dir = swarm.run.root / f"{laggard}-checkpoints"
    shutil.copyfile(laggard_dir / older, laggard_dir / "latest.pt")

    relay_address = swarm.start_relay(suffix="-restarted")
    restarted = {name: swarm.start_trainer(name, relay_address, suffix="-restarted") for name in running}
    for peer in restarted.values():
        peer.wait_for(r"Resuming from .* at global epoch", START_TIMEOUT)
        first_step = int(peer.wait_for(STEP_LINE, START_TIMEOUT).group(1))
        # No peer may repeat an epoch the newest checkpoint already holds, as one starting from scratch or from an
        # older state would.
        assert first_step > newest, f"first global step {first_step}, newest checkpoint at {newest}"
    assert restarted[laggard].matches(rf"Resuming from .* at global epoch {newest - 3}\b")
    assert restarted[laggard].matches(r"newer than this checkpoint; downloading")
    joined = int(restarted[laggard].wait_for(JOINED, START_TIMEOUT, start=0).group(1))
    assert joined >= newest
