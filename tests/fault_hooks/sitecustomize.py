"""TEST-ONLY: make this process a bad peer that corrupts every tensor it sends into averaging.

Python imports ``sitecustomize`` at start-up from ``sys.path``; swarm tests put this folder on ``PYTHONPATH`` of
one peer process and set ``CELLMIND_TEST_CORRUPT_AVERAGING``:

- ``nan``: every floating tensor this peer contributes to an all-reduce is NaN;
- ``huge``: every such tensor is 1e30 times its true value.

The patch wraps Hivemind's ``DecentralizedAverager._run_allreduce_inplace_`` (hivemind 1.1.12), which both the
gradient and the parameter averagers use, so the peer's averagers (forked after start-up) inherit it. The peer
sends corrupted copies and keeps its own tensors, as a peer with broken hardware or a malicious one would.
Nothing in the ``cellmind`` package reads this variable.
"""

import os

_MODE = os.environ.get("CELLMIND_TEST_CORRUPT_AVERAGING")

if _MODE:
    import torch
    from hivemind.averaging.averager import DecentralizedAverager

    if _MODE not in ("nan", "huge"):
        raise ValueError(f"CELLMIND_TEST_CORRUPT_AVERAGING must be nan or huge, got {_MODE!r}")
    _original = DecentralizedAverager._run_allreduce_inplace_

    def _corrupt(tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point():
            return tensor
        return torch.full_like(tensor, float("nan")) if _MODE == "nan" else tensor * 1e30

    async def _corrupted_allreduce(self, tensors, group_info, group_id=None, **kwargs):
        await _original(self, [_corrupt(tensor) for tensor in tensors], group_info, group_id, **kwargs)

    DecentralizedAverager._run_allreduce_inplace_ = _corrupted_allreduce
