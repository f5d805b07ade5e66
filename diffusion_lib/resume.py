"""Training that survives an interruption (a closed laptop, a Colab disconnect, a
session that ends): inside `with resumable(folder, name):` every training loop of the
library (train.fit, train_parts.train_vae) saves its whole state to
`folder/name.progress-K.pt` (K: the K-th loop of the block) every `every` steps, and a
loop that finds its file continues from it. What is saved is everything the next step
depends on: the weights, AdamW's moments, the EMA, the seeded batch generator and
torch's global generator, the losses and callback records so far, the seconds spent.
So a run stopped at any point and started again ends with the same weights as one
that was never stopped. A finished loop's file is kept until the block ends, so a rerun
after a later crash skips it; the files are deleted when the block ends without error.

    with resumable(out_dir, "scenes-ldm"):
        result = train_diffusion(...)   # picks up scenes-ldm.progress-0.pt, if any

A single process only: under `accelerate launch` the loops run as usual, unsaved.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

_RUNS: list = []  # the open `resumable` blocks, innermost last


@dataclass
class _Run:
    folder: Path
    name: str
    every: int
    key: dict
    loops: int = 0  # training loops started in this block so far


@contextmanager
def resumable(folder, name: str, every: int = 200, key: dict | None = None):
    """See the module docstring. every: steps between two saves; key: what the run
    is (e.g. its recipe, seed and mode), stored with the state: a file saved under
    another key, or for another number of steps, is refused rather than continued."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    run = _Run(Path(folder), name, every, dict(key or {}))
    _RUNS.append(run)
    try:
        yield run
    finally:
        _RUNS.remove(run)
    # reached only when the block ended without an exception
    for path in progress_files(folder, name):
        path.unlink()


def progress_files(folder, name: str) -> list[Path]:
    return sorted(Path(folder).glob(f"{name}.progress-*.pt"))


class LoopState:
    """One training loop's saved state (a no-op outside `resumable`, or when
    `enabled` is false, e.g. data-parallel)."""

    def __init__(self, model, ema, opt, gen, result, enabled: bool = True):
        run = _RUNS[-1] if _RUNS and enabled else None
        self.path = self.every = None
        self.key = {} if run is None else run.key
        if run is not None:
            self.path = run.folder / f"{run.name}.progress-{run.loops}.pt"
            self.every = run.every
            run.loops += 1
        self.model, self.ema, self.opt, self.gen, self.result = (
            model,
            ema,
            opt,
            gen,
            result,
        )
        self.seconds_before, self.start = 0.0, time.perf_counter()

    def restore(self, total: int) -> int:
        """The first step to run: 0, or where the saved loop stopped. total: the
        loop's number of steps."""
        self.total = total
        if self.path is None or not self.path.exists():
            return 0
        s = torch.load(self.path, weights_only=True)
        if s["key"] != self.key or s["total"] != total or s["step"] > total:
            raise ValueError(
                f"{self.path} was saved by another run ({s['key']}, "
                f"{s['total']} steps), not this one ({self.key}, {total} steps): "
                "delete it to start afresh"
            )
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        self.ema.model.load_state_dict(s["ema"])
        self.ema.num_updates = s["ema_updates"]
        self.gen.set_state(s["gen"])
        torch.set_rng_state(s["torch_rng"])
        for key, values in s["lists"].items():
            getattr(self.result, key)[:] = values
        self.seconds_before = s["seconds"]
        self.start = time.perf_counter()
        print(f"resuming {self.path.name} at step {s['step']}", flush=True)
        return s["step"]

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.start

    def save(self, step: int) -> None:
        """The state before step `step` (atomically: a stop while writing leaves the
        previous file)."""
        lists = {k: v for k, v in vars(self.result).items() if isinstance(v, list)}
        state = {
            "key": self.key,
            "total": self.total,
            "step": step,
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "ema": self.ema.model.state_dict(),
            "ema_updates": self.ema.num_updates,
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "lists": lists,
            "seconds": self.seconds(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def after(self, step: int) -> None:
        """Call after step `step` (0-based) has run."""
        if self.path is not None and (
            (step + 1) % self.every == 0 or step + 1 == self.total
        ):
            self.save(step + 1)
