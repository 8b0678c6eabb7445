"""Keeping broken numbers out of the model: bad micro-steps, poisoned averages, and rollback to the last good state.

Four checks, each cheap next to a micro-step:

- **A micro-step** whose loss or gradient norm is not finite contributes nothing: its gradients are dropped and
  its samples are not reported to the swarm (:meth:`TrainingGuard.micro_step_ok`).
- **Averaged gradients** that are not finite, or whose norm exceeds :attr:`HealthLimits.gradient_trust_ratio`
  times this peer's own accumulated gradients, are replaced by the peer's own gradients for that global step.
  One peer sending NaN or values 1e30 times too large cannot steer the update, and the honest peers still take
  a step with what they computed (:func:`averaged_gradients_problem`).
- **Averaged parameters**: the result of a parameter averaging round that is not finite, holds a value above
  :attr:`HealthLimits.max_abs_parameter` or a norm :attr:`HealthLimits.max_norm_growth` times this peer's is
  not applied (:func:`reject_poisoned_state`).
- **The training state** (parameters and Adam's statistics) is checked after every global step: not finite, any
  ``|parameter|`` above :attr:`HealthLimits.max_abs_parameter`, or a parameter norm more than
  :attr:`HealthLimits.max_norm_growth` times the last good one (a poisoned parameter-averaging round) restores
  the last good state in place (:meth:`TrainingGuard.after_global_step`).

The last good state is a CPU copy taken after every healthy global step: parameters plus both Adam moments,
12 bytes per parameter (about 280 MB for the 23M-parameter model, 0.3 MB for the tests' tiny model), and one
memory copy of that size per global step. The copy is restored in place, because Hivemind's averagers share
these very tensors with their background processes; replacing them would cut the averagers off.
"""

import logging
import math
import time
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

LOG_PERIOD = 60.0
"""Seconds between two log lines about the same kind of problem; the lines in between are counted."""


@dataclass(frozen=True)
class HealthLimits:
    """Bounds beyond which numbers count as broken. Generous: a healthy run never comes near them."""

    max_abs_parameter: float = 1e4
    """No weight of a trained GPT-2-sized model comes near this; a value 1e30 times too large exceeds it."""
    max_norm_growth: float = 10.0
    """One global step moves the parameter norm by a few percent at most; a tenfold jump is a poisoned average."""
    gradient_trust_ratio: float = 100.0
    """Averaged gradients may be at most this many times larger (in norm) than this peer's own, or than
    :attr:`gradient_norm_floor` when this peer's own are smaller (a peer that joined mid-epoch has none)."""
    gradient_norm_floor: float = 1.0
    """Clipped micro-steps average to at most ``training.grad_clip`` (1.0 by default) in norm."""


class RateLimitedLog:
    """Log a warning per kind of event at most once per ``period`` seconds, with the number left out since."""

    def __init__(self, period: float = LOG_PERIOD):
        self.period = period
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -math.inf) < self.period:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        skipped = self._skipped.pop(kind, 0)
        suffix = f" ({skipped} more since the last such message)" if skipped else ""
        logger.warning(message + suffix)
        self._last[kind] = now


def gradient_norm(parameters) -> torch.Tensor:
    """Return the global L2 norm of the parameters' gradients (inf or nan if any gradient is not finite)."""
    grads = [p.grad.detach().float() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def tensors_problem(tensors, max_abs: float) -> str | None:
    """Why ``tensors`` are broken (not finite, or an element above ``max_abs``), or None if they are not."""
    for tensor in tensors:
        if not tensor.is_floating_point():
            continue
        if not bool(torch.isfinite(tensor).all()):
            return "a value is not finite"
        if tensor.numel() and float(tensor.detach().abs().max()) > max_abs:
            return f"a value exceeds {max_abs:g} in magnitude"
    return None


def averaged_gradients_problem(optimizer, limits: HealthLimits = HealthLimits()) -> str | None:
    """Why the averaged gradients now in ``optimizer`` (a ``hivemind.Optimizer``) cannot be used, or None.

    With ``offload_optimizer=True`` the averaged gradients are the ``.grad`` of the offloaded parameters. This
    peer's own gradients are its accumulators divided by the micro-steps accumulated, as Hivemind loads them.
    """
    opt_params = [p for group in optimizer.opt.param_groups for p in group["params"]]
    averaged = gradient_norm(opt_params)
    if not bool(torch.isfinite(averaged)):
        return "the averaged gradients are not finite"
    grad_averager = optimizer.grad_averager
    accumulators = list(grad_averager._grad_accumulators())  # NOTE: private in hivemind 1.1.12; recheck on upgrade
    own = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(a.float()) for a in accumulators]))
    own = float(own) / max(1, grad_averager.local_times_accumulated)
    if float(averaged) > limits.gradient_trust_ratio * max(own, limits.gradient_norm_floor):
        return (f"the averaged gradient norm {float(averaged):.3g} is more than {limits.gradient_trust_ratio:g} "
                f"times this peer's own ({own:.3g})")
    return None


def replace_poisoned_gradients(optimizer, log: RateLimitedLog) -> bool:
    """Swap unusable averaged gradients for this peer's own (Hivemind's fallback); return whether it did."""
    problem = averaged_gradients_problem(optimizer)
    if problem is None:
        return False
    log.warning("averaged gradients", f"Rejected the averaged gradients of this global step ({problem}); "
                                      "using this peer's own gradients instead")
    optimizer._load_local_gradients_into_optimizer()  # NOTE: private in hivemind 1.1.12; recheck on upgrade
    return True


def averaged_state_problem(averager, limits: HealthLimits = HealthLimits()) -> str | None:
    """Why the result of a parameter averaging round in ``averager`` (a ``TrainingStateAverager``) is unusable.

    Its averaged tensors are the offloaded parameters first, then the averaged optimizer statistics.
    """
    local = [p for group in averager.optimizer.param_groups for p in group["params"]]
    with averager.get_tensors() as averaged:
        parameters, statistics = averaged[: len(local)], averaged[len(local):]
        problem = tensors_problem(parameters, limits.max_abs_parameter) or tensors_problem(statistics, math.inf)
        if problem is not None:
            return problem
        new, old = _norm(parameters), _norm(local)
    if new > limits.max_norm_growth * old:
        return f"the averaged parameter norm {new:.4g} is more than {limits.max_norm_growth:g} times this peer's {old:.4g}"
    return None


def reject_poisoned_state(averager, log: RateLimitedLog) -> bool:
    """Return True, and log why, when a parameter averaging result is broken and must not be applied."""
    problem = averaged_state_problem(averager)
    if problem is None:
        return False
    log.warning("averaged state", f"Rejected the result of a parameter averaging round ({problem}); "
                                  "keeping this peer's own parameters")
    return True


def _norm(tensors) -> float:
    norms = [torch.linalg.vector_norm(t.detach().float()) for t in tensors]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


class TrainingGuard:
    """Checks one peer's micro-steps and global steps, and keeps the last good training state to roll back to.

    ``optimizer`` is the peer's ``hivemind.Optimizer`` with ``offload_optimizer=True``: its ``opt`` holds the
    offloaded parameters and Adam's statistics, while ``param_groups`` hold the model's own parameters.
    """

    def __init__(self, optimizer, limits: HealthLimits = HealthLimits()):
        self.optimizer = optimizer
        self.limits = limits
        self.log = RateLimitedLog()
        self.rollbacks = 0
        self.skipped_micro_steps = 0
        self._good: list[torch.Tensor] = []
        self._good_norm = math.nan
        self.snapshot()

    # the tensors that make up the training state

    def _model_parameters(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _state_tensors(self) -> list[torch.Tensor]:
        """Offloaded parameters, then every tensor of Adam's per-parameter state, in a fixed order."""
        opt = self.optimizer.opt
        params = [p for group in opt.param_groups for p in group["params"]]
        stats = [value for p in params for _name, value in sorted(opt.state[p].items()) if torch.is_tensor(value)]
        return params + stats

    @torch.no_grad()
    def snapshot(self) -> None:
        """Keep a CPU copy of the current training state as the last good one."""
        tensors = self._state_tensors()
        if len(self._good) != len(tensors) or any(a.shape != b.shape for a, b in zip(self._good, tensors)):
            self._good = [t.detach().to("cpu", copy=True) for t in tensors]
        else:
            for kept, tensor in zip(self._good, tensors):
                kept.copy_(tensor)
        self._good_norm = self._parameter_norm()

    @torch.no_grad()
    def rollback(self, reason: str) -> None:
        """Copy the last good state back into the optimizer and the model, in place."""
        tensors = self._state_tensors()
        if len(tensors) != len(self._good):  # Adam's state appeared since the snapshot: restore what there was
            tensors = tensors[: len(self._good)]
        for tensor, kept in zip(tensors, self._good):
            tensor.copy_(kept)
        offloaded = [p for group in self.optimizer.opt.param_groups for p in group["params"]]
        for main, source in zip(self._model_parameters(), offloaded, strict=True):
            main.copy_(source.to(main.device, main.dtype))
        self.rollbacks += 1
        logger.warning(f"Rolled back to the last good training state: {reason} (rollback {self.rollbacks})")

    def _parameter_norm(self) -> float:
        return _norm(self._model_parameters())

    def state_problem(self) -> str | None:
        """Why the current parameters or optimizer statistics are broken, or None if they look healthy."""
        problem = tensors_problem(self._model_parameters(), self.limits.max_abs_parameter)
        if problem is not None:
            return f"parameters: {problem}"
        problem = tensors_problem(self._state_tensors(), math.inf)
        if problem is not None:
            return f"optimizer state: {problem}"
        norm = self._parameter_norm()
        if norm > self.limits.max_norm_growth * self._good_norm:
            return f"the parameter norm jumped from {self._good_norm:.4g} to {norm:.4g}"
        return None

    # the checks the training loop calls

    def micro_step_ok(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> bool:
        """Whether this micro-step's loss and gradients may go to the swarm; drops its gradients if not.

        A non-finite loss can also mean that this peer's parameters broke (a poisoned average applied in the
        background), in which case they are rolled back at once rather than at the next global step, which a
        peer that skips every micro-step would never reach.
        """
        if grad_norm is None:
            grad_norm = gradient_norm(self._model_parameters())
        if bool(torch.isfinite(loss.detach())) and bool(torch.isfinite(grad_norm)):
            return True
        self.skipped_micro_steps += 1
        what = "loss" if not bool(torch.isfinite(loss.detach())) else "gradient norm"
        self.log.warning(what, f"Skipped a micro-step: its {what} is not finite; its samples are not reported")
        self.optimizer.zero_grad()
        problem = self.state_problem()
        if problem is not None:
            self.rollback(problem)
        return False

    def after_global_step(self) -> bool:
        """Keep the new state as the last good one, or roll back to it; return whether the state was healthy."""
        problem = self.state_problem()
        if problem is None:
            self.snapshot()
            return True
        self.rollback(f"after global epoch {self.optimizer.local_epoch}, {problem}")
        return False
