"""Every compression a peer may choose decodes back to the tensor it was given, as another peer receives it."""

import pytest
import torch
from hivemind.compression import CompressionInfo, deserialize_torch_tensor

from cellmind.peer import compression_options


@pytest.mark.parametrize(
    ("name", "max_error"),
    [("none", 0.0), ("fp16", 1e-3), ("uint8", 0.05)],  # relative error, as a norm: 8-bit clips outliers
)
def test_gradient_compression_round_trip(name, max_error):
    gradients = compression_options(name)["grad_compression"]
    tensor = torch.randn(2**17, generator=torch.Generator().manual_seed(0))
    received = deserialize_torch_tensor(gradients.compress(tensor, CompressionInfo.from_tensor(tensor)))
    assert received.shape == tensor.shape
    assert received.dtype == tensor.dtype
    assert torch.linalg.vector_norm(received - tensor) <= max_error * torch.linalg.vector_norm(tensor)
