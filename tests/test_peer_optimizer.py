"""The peer's optimizer helpers that do not need a swarm: Adam's state creation and shared-memory copies."""

import logging
import multiprocessing
from types import SimpleNamespace

import torch

from cellmind.config import Config
from cellmind.model import GPT, GPTConfig
from cellmind.peer import (
    CellMindOptimizer, ClippedGradientAverager, initialize_optimizer_state, optimizer_factory, parameter_groups, shared_copy,
)

# With the file_system sharing strategy (a user's choice, see cellmind/__init__.py) torch starts torch_shm_manager on
# the first shared tensor. Starting it here, outside any test, keeps the reap_children fixture from killing it.
torch.zeros(1).share_memory_()


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))


def test_optimizer_state_creation_keeps_parameters():
    model = tiny_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    config = Config()
    optimizer = optimizer_factory(config)(parameter_groups(model, weight_decay=0.1))

    initialize_optimizer_state(optimizer)

    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert all(group["lr"] == config.training.lr for group in optimizer.param_groups)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_optimizer_state_is_shared_and_zero():
    model = tiny_model()
    optimizer = optimizer_factory(Config())(parameter_groups(model, weight_decay=0.1))

    initialize_optimizer_state(optimizer)

    assert len(optimizer.state) == len(list(model.parameters()))
    for state in optimizer.state.values():
        assert float(state["step"]) == 0.0  # as a fresh AdamW: the first update is bias-corrected for step 1
        for name in ("exp_avg", "exp_avg_sq"):
            assert state[name].is_shared(), name
            assert not state[name].any(), name


def test_shared_copy_is_separate_shared_tensor():
    source = torch.randn(3, 5)

    copy = shared_copy(source)

    assert copy.is_shared()
    assert torch.equal(copy, source)
    assert copy.data_ptr() != source.data_ptr()
    source.add_(1.0)
    assert not torch.equal(copy, source)



def test_created_adam_state_matches_fresh():
    created, fresh = tiny_model(), tiny_model()
    config = Config()
    optimizers = [optimizer_factory(config)(parameter_groups(model, weight_decay=0.1)) for model in (created, fresh)]
    initialize_optimizer_state(optimizers[0])
    torch.manual_seed(1)
    for a, b in zip(created.parameters(), fresh.parameters(), strict=True):
        a.grad = torch.randn_like(a)
        b.grad = a.grad.clone()
    before = [p.detach().clone() for p in fresh.parameters()]
    for optimizer in optimizers:
        optimizer.step()
    assert all(not torch.equal(p, old) for p, old in zip(fresh.parameters(), before))  # a real update
    for a, b in zip(created.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    states = [optimizer.state_dict()["state"] for optimizer in optimizers]
    assert states[0].keys() == states[1].keys()
    for index, state in states[1].items():
        for name, value in state.items():
            assert torch.equal(states[0][index][name], value), (index, name)


def bare_gradient_averager(parameters, averaged, times: int, max_norm: float) -> ClippedGradientAverager:
    """A ClippedGradientAverager without a DHT or a process: only what loading its accumulators reads."""
    averager = object.__new__(ClippedGradientAverager)
    averager.parameters, averager.reuse_grad_buffers, averager._local_accumulators = tuple(parameters), True, None
    averager.local_times_accumulated, averager.max_norm = times, max_norm
    averager.lock_averaged_tensors, averager._averaged_tensors = multiprocessing.Lock(), tuple(averaged)
    averager._parent_pid = None  # no process to shut down when it is collected
    return averager


def test_mean_gradient_clipped_on_load():
    weight, bias = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(1))
    weight.grad, bias.grad = torch.tensor([6.0, 0.0, 8.0]), torch.tensor([0.0])  # the sum of two micro-steps
    averaged = [torch.empty(3), torch.empty(1)]
    bare_gradient_averager([weight, bias], averaged, times=2, max_norm=1.0).load_accumulators_into_averager_()
    assert torch.allclose(averaged[0], torch.tensor([0.6, 0.0, 0.8]))  # the mean (3, 0, 4) scaled to norm 1
    assert torch.equal(weight.grad, torch.tensor([6.0, 0.0, 8.0]))  # the accumulators are left alone

    bare_gradient_averager([weight, bias], averaged, times=2, max_norm=10.0).load_accumulators_into_averager_()
    assert torch.equal(averaged[0], torch.tensor([3.0, 0.0, 4.0]))  # short enough: only averaged


def test_lone_step_uses_clipped_mean():
    weight = torch.nn.Parameter(torch.zeros(3))
    weight.grad = torch.tensor([6.0, 0.0, 8.0])  # the sum of two micro-steps, accumulated in .grad
    averaged = [torch.empty(3)]
    grad_averager = bare_gradient_averager([weight], averaged, times=2, max_norm=1.0)
    optimizer = object.__new__(CellMindOptimizer)  # only what a global step without a round reads
    optimizer._parent_pid = None  # nothing to shut down when it is collected
    optimizer.offload_optimizer = False
    optimizer.grad_averager, optimizer.scheduled_grads, optimizer.status_loglevel = grad_averager, None, logging.DEBUG
    optimizer.tracker = SimpleNamespace(global_progress=SimpleNamespace(num_peers=1))
    optimizer.state_averager = SimpleNamespace(optimizer=SimpleNamespace(param_groups=[{"params": [weight]}]))

    assert optimizer._begin_averaging_gradients(None) is False
    assert torch.allclose(weight.grad, torch.tensor([0.6, 0.0, 0.8]))  # what AdamW reads: the clipped mean
    grad_averager.load_accumulators_into_averager_()  # Hivemind's own call that follows changes nothing
    assert torch.allclose(averaged[0], torch.tensor([0.6, 0.0, 0.8]))
