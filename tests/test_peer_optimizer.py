"""The peer's optimizer helpers that do not need a swarm: Adam's state creation and shared-memory copies."""

import torch

from cellmind.config import Config
from cellmind.model import GPT, GPTConfig
from cellmind.peer import initialize_optimizer_state, optimizer_factory, parameter_groups, shared_copy

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
        assert float(state["step"]) == 1.0
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
