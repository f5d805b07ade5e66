"""Training compute, counted: the floating-point operations of every training loop of
the library, so that two designs can be compared at equal training compute (chapter
10) and every manifest says what its checkpoint cost.

What is counted: one training step of each loop is run under PyTorch's
FlopCounterMode, which counts the matrix multiplies, convolutions and attention of the
forward and the backward pass (2 FLOPs per multiply-add), of every network the step
runs (a frozen UNet under a ControlNet too: its forward and the backward through it
are spent). Not counted: elementwise operations (activations, norms, the loss), the
optimizer's update and the EMA of the weights. The step's count does not depend on
the data, so a loop's FLOPs are its first step's count times its number of steps.
A data-parallel run counts one process's share and multiplies by the processes.

    with compute.tally() as loops:      # Recipe.run does this around training
        train_diffusion(...)            # each loop adds a record to `loops`
                                        # (its StepCounter, before its first step)
    compute.summary(loops)              # the manifest's "training_compute"

A loop run `aside()` (a sweep that trains throw-away models to draw a curve) is not
the checkpoint's training and is left out of the tally.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

COUNTED = (
    "forward and backward matrix multiplies, convolutions and attention of one "
    "training step (torch FlopCounterMode, 2 FLOPs per multiply-add), times the "
    "steps; elementwise operations, the optimizer update and the EMA not counted"
)

# FlopCounterMode knows the GPU attention kernels but not the fused CPU one, which it
# would count as 0 FLOPs: register the same formulas for it.
_aten = torch.ops.aten
if _aten._scaled_dot_product_flash_attention_for_cpu.default not in flop_registry:

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_sdpa_backward_flop(
        grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs
    ) -> int:
        return sdpa_backward_flop_count(
            grad_out_shape, query_shape, key_shape, value_shape
        )


@dataclass
class LoopCompute:
    """One training loop's compute: its name, FLOPs per step and number of steps."""

    loop: str
    flops_per_step: int
    steps: int

    @property
    def flops(self) -> int:
        return self.flops_per_step * self.steps


class CountedOnly(Exception):
    """Raised by the first step of the first loop inside `only_count()`."""

    def __init__(self, record: LoopCompute):
        super().__init__(f"{record.loop}: {record.flops_per_step} FLOPs per step")
        self.record = record


_TALLIES: list = []  # the open tally() lists, innermost last (None: aside)
_ONLY_COUNT: list = []


@contextlib.contextmanager
def tally():
    """Collect a LoopCompute for every training loop run inside the block."""
    loops: list[LoopCompute] = []
    _TALLIES.append(loops)
    try:
        yield loops
    finally:
        _TALLIES.pop()


@contextlib.contextmanager
def aside():
    """Loops inside are not the checkpoint's training (a sweep's throw-away models):
    they are not added to the enclosing tally (nor stopped by only_count)."""
    _TALLIES.append(None)
    try:
        yield
    finally:
        _TALLIES.pop()


def count_in_enclosing(loops: list[LoopCompute]) -> None:
    """Add loops that an inner tally() collected to the tally around it (an inner
    tally keeps its loops from the outer ones): a loop counted apart that is part of
    the checkpoint's training too."""
    if _TALLIES and _TALLIES[-1] is not None:
        _TALLIES[-1].extend(loops)


@contextlib.contextmanager
def only_count():
    """Inside, the first step of the first counted loop raises CountedOnly with its
    count: what a loop costs, without training it."""
    _ONLY_COUNT.append(True)
    try:
        yield
    finally:
        _ONLY_COUNT.pop()


class StepCounter:
    """A training loop's counter. Before its first step, a loop calls
    `counter.count(forward_backward, params)` with a function that runs that step's
    forward and backward pass on the step's batch: it runs once more, on the side,
    under FlopCounterMode; the random generators are restored and the gradients it
    leaves are dropped, so training goes on bit for bit as it would uncounted (counting
    the real step would not: under the counter some kernels sum in another order).
    Later calls do nothing. steps and processes say what the loop's total is."""

    def __init__(self, loop: str, steps: int, processes: int = 1):
        self.record = LoopCompute(loop, 0, steps)
        self.processes = processes
        self.counted = False
        self.aside = bool(_TALLIES) and _TALLIES[-1] is None

    def count(self, forward_backward, params) -> None:
        if self.counted:
            return
        params = list(params)
        kept = [None if p.grad is None else p.grad.clone() for p in params]
        cuda = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=cuda), FlopCounterMode(display=False) as c:
            forward_backward()
        for p, grad in zip(params, kept):
            p.grad = grad
        self.counted = True
        self.record.flops_per_step = c.get_total_flops() * self.processes
        if self.aside:
            return
        if _ONLY_COUNT:
            raise CountedOnly(self.record)
        if _TALLIES:
            _TALLIES[-1].append(self.record)


def summary(loops: list[LoopCompute]) -> dict:
    """The manifest's "training_compute": the total FLOPs, each loop's count and what
    is counted."""
    return {
        "flops": sum(r.flops for r in loops),
        "loops": [asdict(r) for r in loops],
        "counted": COUNTED,
    }


def format_flops(flops: float) -> str:
    """1.23e15 -> '1.23 PFLOP' (for tables)."""
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= size:
            return f"{flops / size:.3g} {unit}"
    return f"{flops:.3g} FLOP"
