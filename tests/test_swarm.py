"""A real swarm on 127.0.0.1: a bootstrap peer and joiners as separate processes training a one-layer model.

One module-scoped swarm serves the tests below, which run in file order: the bootstrap trains alone, a second
peer joins, a third joins and is killed, a puller downloads the state, and the bootstrap restarts. Every peer
logs ``parameters at global epoch E: digest D`` (``-v``), a SHA-256 of its parameters after each global step,
which is how the tests compare parameters across processes.
"""

import re
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch

from cellmind.checkpoints import load_checkpoint, numbered_name
from cellmind.peer import parameter_digest
from conftest import AVERAGE_STATE_EVERY, free_port

pytestmark = pytest.mark.swarm

STEP_LINE = r"global epoch (\d+) \| loss ([\d.]+) \| \d+ samples/s \| (\d+) peers in last round \| lr "
TOGETHER_LINE = STEP_LINE.replace(r"(\d+) peers", r"(2) peers")
JOIN_LINE = r"^\s+cellmind-peer --initial-peers (\S+)$"
JOINED = r"Joined the swarm at global epoch (\d+) \(parameter digest (\w+)\)"
ALONE_EPOCHS = 4
TARGET_BATCH_SIZE = "2048"
"""Large enough that a global step takes seconds, as in real runs, so that peers see each other within one."""
"""Global steps the bootstrap takes alone before the first joiner starts."""
START_TIMEOUT = 90
STEP_TIMEOUT = 90


def digest_at(peer, epoch: int, timeout: float = STEP_TIMEOUT) -> str:
    return peer.wait_for(rf"parameters at global epoch {epoch}: digest (\w+)", timeout).group(1)


def last_epoch(peer) -> int:
    steps = peer.matches(STEP_LINE)
    return int(steps[-1].group(1)) if steps else 0


class Swarm:
    def __init__(self, tiny_run):
        self.run = tiny_run
        self.port = free_port()
        self.bootstrap_args = [
            "--bootstrap", "--host-maddrs", f"/ip4/127.0.0.1/tcp/{self.port}",
            "--identity", str(tiny_run.root / "boot" / "identity.key"),
            "--checkpoint-dir", str(self.checkpoint_dir("boot")),
            "--target-batch-size", TARGET_BATCH_SIZE, "--name", "boot",
        ]
        self.bootstrap = tiny_run.peer(*self.bootstrap_args, log_name="bootstrap", keep=True)
        self.address = self.bootstrap.wait_for(JOIN_LINE, START_TIMEOUT).group(1)
        self.bootstrap.wait_for(rf"global epoch {ALONE_EPOCHS} \|", START_TIMEOUT)
        self.joiner = self.join("joiner", keep=True)

    def checkpoint_dir(self, name: str):
        return self.run.root / f"{name}-checkpoints"

    def join(self, name: str, keep: bool = False):
        return self.run.peer(
            "--initial-peers", self.address, "--host-maddrs", "/ip4/127.0.0.1/tcp/0",
            "--checkpoint-dir", str(self.checkpoint_dir(name)),
            "--target-batch-size", TARGET_BATCH_SIZE, "--name", name,
            log_name=name, keep=keep,
        )


@pytest.fixture(scope="module")
def swarm(tiny_run):
    swarm = Swarm(tiny_run)
    yield swarm
    for peer in (swarm.bootstrap, swarm.joiner):
        peer.kill_group()


def test_bootstrap_join_line_and_file(swarm):
    assert swarm.address.startswith(f"/ip4/127.0.0.1/tcp/{swarm.port}/p2p/")
    join_file = (swarm.run.root / "boot" / "join.txt").read_text(encoding="utf-8").strip()
    assert join_file == f"cellmind-peer --initial-peers {swarm.address}"
    assert swarm.bootstrap.matches(r"work on this machine only")


def test_lone_peer_loss_falls_and_warns(swarm):
    alone = [match for match in swarm.bootstrap.matches(STEP_LINE) if int(match.group(1)) <= ALONE_EPOCHS]
    losses = [float(match.group(2)) for match in alone]
    assert len(losses) == ALONE_EPOCHS
    assert all(match.group(3) == "1" for match in alone)
    assert losses[-1] < losses[0] - 0.2
    digests = {digest_at(swarm.bootstrap, epoch) for epoch in range(1, ALONE_EPOCHS + 1)}
    assert len(digests) == ALONE_EPOCHS
    assert len(swarm.bootstrap.matches(r"\[WARN\].*No other peer to average with")) == 1


def test_late_joiner_has_swarm_state(swarm):
    joined = swarm.joiner.wait_for(JOINED, START_TIMEOUT)
    joined_line = swarm.joiner.last_index
    epoch, digest = int(joined.group(1)), joined.group(2)
    assert epoch >= ALONE_EPOCHS
    assert digest == digest_at(swarm.bootstrap, epoch)
    first_step = swarm.joiner.wait_for(STEP_LINE, STEP_TIMEOUT)
    assert swarm.joiner.last_index > joined_line
    assert int(first_step.group(1)) > epoch


def test_peers_hold_same_parameters_after_global_step(swarm):
    # Right after a join, peers may take a few steps apart until each detects the other (Hivemind then proceeds
    # with local gradients). The next averaging of parameters and Adam's moments pulls them together, and from
    # then on each averaged global step keeps them equal, up to rounding in Hivemind's all-reduce: gradients travel
    # as fp16 there, so each peer's Adam update differs from the others' by about 1e-6 after a few steps.
    first_together = int(swarm.joiner.wait_for(TOGETHER_LINE, STEP_TIMEOUT).group(1))
    # A joiner whose download was already one global epoch old meets the others' rounds one epoch off, and its
    # rounds fail (30 s each) until Hivemind catches it up. So the check takes the first parameter averaging
    # round after which both peers took two global steps together.
    after_averaging = (first_together // AVERAGE_STATE_EVERY + 1) * AVERAGE_STATE_EVERY + 1
    for _round in range(3):
        rounds = [int(peer.wait_for(rf"global epoch {epoch} \| .* \| (\d+) peers in last round", STEP_TIMEOUT).group(1))
                  for epoch in (after_averaging, after_averaging + 1) for peer in (swarm.joiner, swarm.bootstrap)]
        if rounds == [2, 2, 2, 2]:
            break
        after_averaging += AVERAGE_STATE_EVERY
    assert rounds == [2, 2, 2, 2], f"no two global steps together after three parameter averaging rounds: {rounds}"
    for epoch in (after_averaging, after_averaging + 1):
        for peer in (swarm.joiner, swarm.bootstrap):
            peer.wait_for(rf"Saved checkpoint .* at global epoch {epoch}$", STEP_TIMEOUT)
        joiner = load_checkpoint(swarm.checkpoint_dir("joiner") / numbered_name(epoch)).model_state
        bootstrap = load_checkpoint(swarm.checkpoint_dir("boot") / numbered_name(epoch)).model_state
        assert joiner.keys() == bootstrap.keys()
        for name in joiner:
            torch.testing.assert_close(joiner[name], bootstrap[name], rtol=0, atol=1e-5, msg=name)


def test_checkpoint_pull_gives_swarm_parameters(swarm, tiny_run):
    output = tiny_run.root / "pulled" / "latest.pt"
    puller = tiny_run.cellmind(
        "checkpoint", "pull", "-v", "--config", str(tiny_run.config_path),
        "--initial-peers", swarm.address, "--output", str(output), log_name="pull",
    )
    assert puller.wait(START_TIMEOUT) == 0
    checkpoint = load_checkpoint(output)
    assert checkpoint.global_epoch >= ALONE_EPOCHS
    # Either training peer may send the state, and their parameters differ by fp16 all-reduce rounding, so
    # the pulled parameters are compared with those of the peer that sent them.
    sender = puller.matches(r"Downloading parameters from peer (\w+)")[-1].group(1)
    source = swarm.bootstrap if sender == swarm.address.rsplit("/p2p/", 1)[1] else swarm.joiner
    assert parameter_digest(checkpoint.model_state) == digest_at(source, checkpoint.global_epoch)
    assert checkpoint.optimizer_state["state"]["local_epoch"] == checkpoint.global_epoch
    assert checkpoint.config["model"]["n_embd"] == 32


def test_killed_peer_does_not_stop_others(swarm):
    doomed = swarm.join("doomed")
    doomed.wait_for(JOINED, START_TIMEOUT)
    doomed.wait_for(STEP_LINE, STEP_TIMEOUT)
    tree = {doomed.pid, *(child.pid for child in doomed.descendants())}
    doomed.kill_group()  # SIGKILL to the peer and everything it started, as when a device loses power
    # Shared tensors must not outlive the peer: torch names files in /dev/shm after the creating process.
    left = [path.name for path in Path("/dev/shm").glob("torch_*") if int(path.name.split("_")[1]) in tree]
    assert left == [], f"the killed peer left shared memory behind: {left[:5]}"

    killed_at = max(last_epoch(swarm.bootstrap), last_epoch(swarm.joiner))
    for peer in (swarm.bootstrap, swarm.joiner):
        peer.wait_for(rf"global epoch {killed_at + 3} \|", STEP_TIMEOUT)


def test_sigterm_leaves_no_p2pd_and_restart_keeps_address(swarm):
    old = swarm.bootstrap
    children = old.descendants()
    assert any(child.name() == "p2pd" for child in children)
    old.process.send_signal(signal.SIGTERM)
    assert old.wait(STEP_TIMEOUT) == 0
    assert old.matches(r"Saved checkpoint")
    _ended, alive = psutil.wait_procs(children, timeout=10)
    assert [child.pid for child in alive] == []
    old.kill_group()

    restarted_at = len(swarm.joiner.lines)
    swarm.bootstrap = swarm.run.peer(*swarm.bootstrap_args, log_name="bootstrap-restarted", keep=True)
    assert swarm.bootstrap.wait_for(JOIN_LINE, START_TIMEOUT).group(1) == swarm.address
    swarm.bootstrap.wait_for(r"Resuming from", START_TIMEOUT)

    # The joiner is back in the swarm once it averages with the bootstrap or downloads the bootstrap's state.
    bootstrap_id = swarm.address.rsplit("/p2p/", 1)[1]
    rejoined = rf"(\| 2 peers in last round \||Downloading parameters from peer {bootstrap_id})"
    # The joiner's p2pd backs off from dialing the address that failed while the bootstrap was down (libp2p's
    # dial backoff grows with each failed dial), so the rejoin gets twice the start timeout.
    swarm.joiner.wait_for(rejoined, 2 * START_TIMEOUT, start=restarted_at)
