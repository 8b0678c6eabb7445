"""Bad peers and broken numbers: one swarm of two honest peers, joined first by a peer that sends NaN into every
averaging round and then by one that sends values 1e30 times too large.

The bad peers are ordinary ``cellmind-peer`` processes with ``tests/fault_hooks`` on their ``PYTHONPATH``: its
test-only ``sitecustomize`` corrupts what they send (see that file). The honest peers must reject the poisoned
averages or roll back to their last good state, keep finite parameters, and keep lowering their loss.
"""

import math
import os
import multiprocessing
import re
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from cellmind.guard import (
    HealthLimits, RateLimitedLog, TrainingGuard, TrainingStateLost, replace_poisoned_gradients, tensors_problem,
)
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


class _FakeStateAverager:
    """The parts of hivemind's TrainingStateAverager the guard uses: the averaging buffers and their locks."""

    reuse_tensors = False

    def __init__(self, opt):
        self.optimizer = opt
        self.lock_averaging = threading.Lock()
        self.lock_averaged_tensors = multiprocessing.Lock()
        self.finished_averaging_round = threading.Event()
        self.buffers = self._averaged_tensors = [tensor.detach().clone() for tensor in self._local_tensors()]

    def _local_tensors(self):
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        yield from params
        for key in ("exp_avg", "exp_avg_sq"):
            for p in params:
                yield self.optimizer.state[p][key]

    @contextmanager
    def get_tensors(self):
        yield self.buffers

    @torch.no_grad()
    def _load_local_tensors_into_averager_(self):
        for buffer, tensor in zip(self.buffers, self._local_tensors()):
            buffer.copy_(tensor)


class _FakeGradientAverager:
    """Hivemind's gradient averager with ``reuse_grad_buffers``: its accumulators are the parameters' ``.grad``."""

    def __init__(self, params):
        self.params = params
        self.resets = 0

    def reset_accumulated_grads_(self):
        self.resets += 1
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()


class _FakeTracker:
    def __init__(self):
        self.reported = []

    def report_local_progress(self, local_epoch, samples_accumulated):
        self.reported.append((local_epoch, samples_accumulated))


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
        self.state_averager = _FakeStateAverager(self.opt)
        self.grad_averager = _FakeGradientAverager(params)
        self.tracker = _FakeTracker()
        self.downloads = 0

    def load_state_from_peers(self):
        self.downloads += 1  # no peer sends a state: it stays as it is


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
    assert optimizer.downloads == 0
    assert guard.after_global_step() is True


def test_guard_keeps_its_copy_in_the_averaging_buffers():
    params = [torch.nn.Parameter(torch.randn(5))]
    optimizer = _FakeOptimizer(params)
    guard = TrainingGuard(optimizer)
    buffers = optimizer.state_averager.buffers
    offloaded = optimizer.opt.param_groups[0]["params"][0]
    with torch.no_grad():
        offloaded.add_(1.0)
    assert guard.after_global_step() is True
    assert torch.equal(buffers[0], offloaded)  # a healthy global step refreshes the copy

    kept = offloaded.detach().clone()
    with optimizer.state_averager.lock_averaging:  # a background averaging round owns the buffers
        with torch.no_grad():
            offloaded.add_(1.0)
        assert guard.snapshot() is False
    assert torch.equal(buffers[0], kept)

    with optimizer.state_averager.lock_averaged_tensors:  # the averager's process is in a round
        assert guard.snapshot() is False
    assert torch.equal(buffers[0], kept)


def test_guard_gives_up_on_broken_copy():
    params = [torch.nn.Parameter(torch.randn(4))]
    optimizer = _FakeOptimizer(params)
    guard = TrainingGuard(optimizer)
    with torch.no_grad():
        optimizer.state_averager.buffers[0].fill_(math.nan)  # a broken step was copied in as a round began
        optimizer.opt.param_groups[0]["params"][0].fill_(math.nan)
    with pytest.raises(TrainingStateLost, match="restart cellmind-peer"):
        guard.after_global_step()
    assert optimizer.downloads == 1


def test_guard_skips_non_finite_micro_steps_and_catches_norm_jumps():
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = _FakeOptimizer(params)
    guard = TrainingGuard(optimizer, HealthLimits(max_norm_growth=5.0))
    assert not guard.loss_ok(torch.tensor(math.nan))
    assert guard.loss_ok(torch.tensor(2.0))
    params[0].grad = torch.tensor([0.5, 0.5, 0.0])
    assert guard.gradients_ok()
    assert optimizer.grad_averager.resets == 0
    params[0].grad = torch.tensor([1.0, math.inf, 0.0])  # the sum of what was accumulated is spoilt
    assert not guard.gradients_ok()
    assert optimizer.grad_averager.resets == 1
    assert optimizer.tracker.reported == [(7, 0)]
    assert guard.skipped_micro_steps == 2

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


def test_poisoned_averaged_gradients_dropped():
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = _FakeOptimizer(params)
    offloaded = optimizer.opt.param_groups[0]["params"][0]
    log = RateLimitedLog()
    offloaded.grad = torch.tensor([0.3, 0.4, 0.0])  # an honest average: left as it is
    assert not replace_poisoned_gradients(optimizer, log)
    assert torch.equal(offloaded.grad, torch.tensor([0.3, 0.4, 0.0]))
    for poison in (math.nan, 1e30):
        offloaded.grad = torch.full((3,), poison)
        assert replace_poisoned_gradients(optimizer, log)
        assert offloaded.grad is None  # AdamW leaves the parameter as it is
