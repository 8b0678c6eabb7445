"""Bad peers and broken numbers: one swarm of two honest peers, joined first by a peer that sends NaN into every
averaging round and then by one that sends values 1e30 times too large.

The bad peers are ordinary ``cellmind-peer`` processes with ``tests/fault_hooks`` on their ``PYTHONPATH``: its
test-only ``sitecustomize`` corrupts what they send (see that file). The honest peers must reject the poisoned
averages or roll back to their last good state, keep finite parameters, and keep lowering their loss.
"""

import math
import os
import re
from pathlib import Path

import pytest
import torch

from cellmind.guard import HealthLimits, RateLimitedLog, TrainingGuard, gradient_norm, tensors_problem
from conftest import free_port

pytestmark = pytest.mark.swarm

HOOKS = Path(__file__).parent / "fault_hooks"
STEP_LINE = r"global epoch (\d+) \| loss (\S+) \| \d+ samples/s \| (\d+) peers in last round \| lr "
JOIN_LINE = r"^\s+cellmind-peer --initial-peers (\S+)$"
DEFENDED = r"Rejected the averaged gradients|Rolled back to the last good training state"
START_TIMEOUT = 90
STEP_TIMEOUT = 60
BAD_PEER_TIMEOUT = 90


def losses(peer, first_line: int = 0, last_line: int | None = None) -> list[float]:
    lines = peer.lines[first_line:last_line]
    return [float(match.group(2)) for line in lines if (match := re.search(STEP_LINE, line))]


def start_bad_peer(tiny_run, monkeypatch, address: str, mode: str, name: str):
    monkeypatch.setenv("CELLMIND_TEST_CORRUPT_AVERAGING", mode)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")])))
    try:
        return tiny_run.peer(
            "--initial-peers", address, "--host-maddrs", "/ip4/127.0.0.1/tcp/0",
            "--checkpoint-dir", str(tiny_run.root / f"{name}-checkpoints"), "--target-batch-size", "256",
            "--name", name, log_name=name,
        )
    finally:
        monkeypatch.delenv("CELLMIND_TEST_CORRUPT_AVERAGING")
        monkeypatch.undo()


def test_honest_peers_survive_nan_and_huge_averages(tiny_run, monkeypatch):
    port = free_port()
    honest = [tiny_run.peer(
        "--bootstrap", "--host-maddrs", f"/ip4/127.0.0.1/tcp/{port}",
        "--identity", str(tiny_run.root / "honest-boot" / "identity.key"),
        "--checkpoint-dir", str(tiny_run.root / "honest-boot-checkpoints"), "--target-batch-size", "256",
        log_name="honest-boot",
    )]
    address = honest[0].wait_for(JOIN_LINE, START_TIMEOUT).group(1)
    # an open swarm logs one warning about it (checked here to spare a swarm of its own)
    assert len(honest[0].matches(r"This swarm is open: anyone who knows its address can join")) == 1
    honest.append(tiny_run.peer(
        "--initial-peers", address, "--host-maddrs", "/ip4/127.0.0.1/tcp/0",
        "--checkpoint-dir", str(tiny_run.root / "honest-joiner-checkpoints"), "--target-batch-size", "256",
        log_name="honest-joiner",
    ))
    reference = {}
    start = {peer: 0 for peer in honest}

    for mode in ("nan", "huge"):
        bad = start_bad_peer(tiny_run, monkeypatch, address, mode, name=f"bad-{mode}")
        bad.wait_for(r"\| 3 peers in last round \|", BAD_PEER_TIMEOUT)  # it took part in an averaging round
        if not reference:  # the losses as the first attack began
            reference = {peer: [float(peer.wait_for(STEP_LINE, STEP_TIMEOUT).group(2))] for peer in honest}
        for peer in honest:
            peer.wait_for(DEFENDED, STEP_TIMEOUT, start=start[peer])
            peer.wait_for(STEP_LINE, STEP_TIMEOUT, start=peer.last_index + 1)  # and stepped on after that
            start[peer] = len(peer.lines)
        bad.kill_group()

    for peer in honest:
        all_losses = losses(peer)
        assert all_losses and all(math.isfinite(loss) for loss in all_losses), all_losses
        assert not [line for line in peer.lines if "loss nan" in line or "loss inf" in line]
        assert min(all_losses[-3:]) < max(reference[peer]), "the loss stopped falling"
        peer.kill_group()


# the guard on its own, without a swarm


class _FakeOptimizer:
    """The parts of hivemind.Optimizer the guard reads: offloaded ``opt``, main ``param_groups``, the epoch."""

    def __init__(self, params):
        self.param_groups = [dict(params=params)]
        offloaded = [torch.nn.Parameter(p.detach().clone()) for p in params]
        self.opt = torch.optim.AdamW(offloaded, lr=0.1)
        for p in offloaded:
            p.grad = torch.ones_like(p)
        self.opt.step()
        with torch.no_grad():  # after a step, Hivemind copies the offloaded parameters into the model's
            for main, source in zip(params, offloaded):
                main.copy_(source)
        self.local_epoch = 7

    def zero_grad(self):
        for p in self.param_groups[0]["params"]:
            p.grad = None


@pytest.mark.parametrize("poison", [math.nan, 1e30])
def test_guard_rolls_back_poisoned_state_in_place(poison):
    params = [torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4))]
    optimizer = _FakeOptimizer(params)
    guard = TrainingGuard(optimizer)
    good = [p.detach().clone() for p in params]
    offloaded = optimizer.opt.param_groups[0]["params"]
    moments = optimizer.opt.state[offloaded[0]]["exp_avg"]

    with torch.no_grad():
        offloaded[0].fill_(poison)
        moments.fill_(poison)
        params[0].fill_(poison)
    assert guard.after_global_step() is False
    assert guard.rollbacks == 1
    assert all(torch.equal(p, g) for p, g in zip(params, good))
    assert optimizer.opt.state[offloaded[0]]["exp_avg"] is moments and bool(torch.isfinite(moments).all())
    assert guard.after_global_step() is True


def test_guard_skips_non_finite_micro_steps_and_catches_norm_jumps():
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = _FakeOptimizer(params)
    guard = TrainingGuard(optimizer, HealthLimits(max_norm_growth=5.0))
    params[0].grad = torch.tensor([1.0, math.inf, 0.0])
    assert not guard.micro_step_ok(torch.tensor(1.0), gradient_norm(params))
    assert params[0].grad is None and guard.skipped_micro_steps == 1
    assert not guard.micro_step_ok(torch.tensor(math.nan))
    assert guard.micro_step_ok(torch.tensor(2.0), torch.tensor(0.5))

    with torch.no_grad():
        params[0].mul_(6.0)
    assert "norm jumped" in guard.state_problem()
    assert tensors_problem([torch.tensor([2e4])], 1e4) == "a value exceeds 10000 in magnitude"


def test_rate_limited_log_counts_what_it_leaves_out(caplog):
    log = RateLimitedLog(period=3600)
    with caplog.at_level("WARNING", logger="cellmind.guard"):
        for _ in range(5):
            log.warning("loss", "bad loss")
        log.warning("grad", "bad gradients")
    assert [record.getMessage() for record in caplog.records] == ["bad loss", "bad gradients"]
    log.period = 0
    with caplog.at_level("WARNING", logger="cellmind.guard"):
        log.warning("loss", "bad loss")
    assert caplog.records[-1].getMessage() == "bad loss (4 more since the last such message)"
