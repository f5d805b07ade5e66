"""The one set-up call every chapter starts with: picks the run mode, seeds, device and
plotting.

Run modes (see the book's "How to use" page):
  quick  set by the test command (DIFFUSION_MODE=quick): tiny data, a handful of steps;
         proves every cell runs. The network is blocked inside the kernel, so a notebook
         cannot download anything.
  cpu    the default without CUDA: short training demonstrations, then the shipped
         checkpoints.
  gpu    the default with CUDA (Colab): trains the chapter's models from scratch.

DIFFUSION_FROM_SCRATCH=1 (or setup(from_scratch=True)) makes any mode go on with the
models the chapter trains instead of loading the shipped checkpoints, as gpu mode does;
in quick mode that runs gpu mode's code paths, with tiny models, on any machine (`make
test-from-scratch`). 0 makes gpu mode use the shipped checkpoints after its training
cells (its figures are then the book's).
"""

from __future__ import annotations

import os
import platform
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch

MODES = ("quick", "cpu", "gpu")
MODE_VARIABLE = "DIFFUSION_MODE"
FROM_SCRATCH_VARIABLE = "DIFFUSION_FROM_SCRATCH"


def hardware(device="cpu") -> str:
    """The GPU's name, or the CPU (machine, torch threads): where something ran, as
    the chapters print it and the manifests record it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


@dataclass(frozen=True)
class RunMode:
    mode: str
    device: torch.device
    seed: int
    from_scratch: bool | None = None  # None: gpu mode's default (True there only)

    @property
    def quick(self) -> bool:
        return self.mode == "quick"

    @property
    def train_from_scratch(self) -> bool:
        """Whether the chapter goes on with the models it trained (a GPU trains them
        fully) instead of loading the shipped checkpoints: by default in gpu mode
        only; $DIFFUSION_FROM_SCRATCH (1 or 0) or setup(from_scratch=...) decide
        otherwise."""
        return self.mode == "gpu" if self.from_scratch is None else self.from_scratch

    def pick(self, quick, cpu, gpu=None):
        """The value for the current mode: cfg.pick(quick=20, cpu=500, gpu=8000)."""
        return {"quick": quick, "cpu": cpu, "gpu": cpu if gpu is None else gpu}[
            self.mode
        ]

    @property
    def hardware(self) -> str:
        """Where the chapter runs: the GPU's name, or the CPU and its thread count."""
        return hardware(self.device)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the chapter seed (CPU so that results agree
        across devices)."""
        return torch.Generator().manual_seed(self.seed + offset)


def _block_network() -> None:
    """Make any Internet connection from this process fail loudly (quick mode / tests
    run offline)."""

    def refuse(*args, **kwargs):
        raise RuntimeError(
            "network access is disabled in quick mode (the tests run offline)"
        )

    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse()
        return real_connect(self, address)

    socket.socket.connect = connect
    socket.create_connection = refuse


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _from_scratch(value: bool | None) -> bool | None:
    if value is not None:
        return bool(value)
    text = os.environ.get(FROM_SCRATCH_VARIABLE, "")
    if text not in ("", "0", "1"):
        raise ValueError(
            f"${FROM_SCRATCH_VARIABLE} must be 1 (go on with the models the chapter "
            f"trains) or 0 (load the shipped checkpoints), got {text!r}"
        )
    return None if text == "" else text == "1"


def full_float32():
    """Compute float32 convolutions in float32 on GPUs that would use TF32 (10-bit
    mantissas: PyTorch's default for cuDNN convolutions on Ampere and newer; matrix
    products are float32 by default already). gpu mode calls this: the chapters check
    their own code against the library's, or diffusers', to about 1e-3 after tens of
    sampling steps, which float32 meets and TF32 need not. Speed comes from bf16
    autocast instead (`accelerate launch --mixed_precision bf16`; diffusion_lib.bench).
    Returns a function that restores the previous setting."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # PyTorch >= 2.9
        before = conv.fp32_precision
        conv.fp32_precision = "ieee"
        return lambda: setattr(conv, "fp32_precision", before)
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    return lambda: setattr(torch.backends.cudnn, "allow_tf32", before)


def setup(
    seed: int = 0,
    mode: str | None = None,
    verbose: bool = True,
    from_scratch: bool | None = None,
) -> RunMode:
    """Pick the run mode (argument, else $DIFFUSION_MODE, else gpu if CUDA else cpu),
    seed, and style plots. from_scratch (else $DIFFUSION_FROM_SCRATCH): see
    RunMode.train_from_scratch."""
    mode = (
        mode
        or os.environ.get(MODE_VARIABLE)
        or ("gpu" if torch.cuda.is_available() else "cpu")
    )
    if mode not in MODES:
        raise ValueError(
            f"unknown run mode {mode!r} (from ${MODE_VARIABLE} or the argument); "
            f"expected one of {MODES}"
        )
    if mode == "gpu" and not torch.cuda.is_available():
        raise ValueError(
            "gpu mode needs CUDA; in Colab choose Runtime > Change runtime type > GPU, "
            "or use mode='cpu'"
        )
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    run = RunMode(mode, device, seed, _from_scratch(from_scratch))
    if mode == "gpu":
        full_float32()
    if mode == "quick":
        _block_network()
    seed_everything(seed)
    try:
        import matplotlib.pyplot as plt

        plt.rcParams.update(
            {"figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False}
        )
    except ImportError:
        pass
    if verbose:
        print(
            f"run mode: {mode} | device: {device} | from scratch: "
            f"{'yes' if run.train_from_scratch else 'no'} | torch {torch.__version__} "
            f"| seed {seed}"
        )
    return run


HEADLESS = "DIFFUSION_HEADLESS"  # set by `make book` and by the grader's runs


def headless() -> bool:
    """Whether this notebook runs with no reader: rendered into the book (`make book`)
    or graded (`classroom grade`). Then nothing displays a live ipywidget: no kernel
    will answer it, a static page would fetch its JavaScript from a CDN, and
    executions with widgets sometimes stall nbclient (seen once in `make book` and
    once in grading; nbclient issue 312)."""
    return os.environ.get(HEADLESS) == "1"


def progress_bar(iterable, show: bool = True, desc: str | None = None):
    """tqdm's notebook-or-terminal progress bar over `iterable`; none when `show` is
    False or the run is headless (in a notebook a bar is an ipywidget)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not show or headless(), desc=desc)
