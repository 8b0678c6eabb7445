"""TEST-ONLY: make this process a bad peer, or one that dies in the middle of an averaging round.

Python imports ``sitecustomize`` at start-up from ``sys.path``; swarm tests put this folder on ``PYTHONPATH`` of
one peer process and set one of these variables:

- ``CELLMIND_TEST_CORRUPT_AVERAGING=nan``: every floating tensor this peer contributes to an all-reduce is NaN;
- ``CELLMIND_TEST_CORRUPT_AVERAGING=huge``: every such tensor is 1e30 times its true value;
- ``CELLMIND_TEST_DIE_IN_ROUND=N``: in its N-th gradient all-reduce with at least
  ``CELLMIND_TEST_DIE_MIN_GROUP`` peers (default 2), once the parts are on
  their way, the peer prints :data:`DYING_LINE` and SIGKILLs its whole process group (itself, its DHT and
  averager processes and p2pd), as a device that loses power mid-round.

The patches wrap Hivemind's ``DecentralizedAverager._run_allreduce_inplace_`` (hivemind 1.1.12), which both the
gradient and the parameter averagers use, so the peer's averagers (forked after start-up) inherit them. A
corrupting peer sends corrupted copies and keeps its own tensors, as a peer with broken hardware or a malicious
one would. Nothing in the ``cellmind`` package reads these variables.
"""

import os

_MODE = os.environ.get("CELLMIND_TEST_CORRUPT_AVERAGING")
_DIE_IN_ROUND = int(os.environ.get("CELLMIND_TEST_DIE_IN_ROUND") or 0)
_DIE_MIN_GROUP = int(os.environ.get("CELLMIND_TEST_DIE_MIN_GROUP") or 2)
DYING_LINE = "fault hook: SIGKILL inside gradient all-reduce"
_DYING_DELAY = 0.05
"""Seconds between the start of the all-reduce and the SIGKILL: parts are in flight, results not yet back."""

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


if _DIE_IN_ROUND:
    import asyncio
    import signal
    import sys

    from hivemind.averaging.averager import DecentralizedAverager

    _original_allreduce = DecentralizedAverager._run_allreduce_inplace_
    _rounds = 0

    async def _dying_allreduce(self, tensors, group_info, group_id=None, **kwargs):
        global _rounds
        counted = self.prefix.endswith("_grad_averager") and len(group_info.peer_ids) >= _DIE_MIN_GROUP
        _rounds += counted
        if not counted or _rounds < _DIE_IN_ROUND:
            return await _original_allreduce(self, tensors, group_info, group_id, **kwargs)
        task = asyncio.create_task(_original_allreduce(self, tensors, group_info, group_id, **kwargs))
        await asyncio.wait({task}, timeout=_DYING_DELAY)
        if task.done():  # the round ended too fast to die in its middle: try again in the next one
            return task.result()
        print(f"{DYING_LINE} (round {_rounds}, {len(group_info.peer_ids)} peers)", file=sys.stderr, flush=True)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    DecentralizedAverager._run_allreduce_inplace_ = _dying_allreduce
