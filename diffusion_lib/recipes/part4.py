"""What Part IV's recipes share: they all start from the shipped mini SD."""

from __future__ import annotations

from ..pipelines import MiniStableDiffusion


def base_pipe(out_dir, accelerator=None):
    """The shipped mini SD from out_dir (pretrained/ by default), on the accelerator's
    device when there is one."""
    device = accelerator.device if accelerator is not None else None
    return MiniStableDiffusion.from_pretrained(device, out_dir)


def quick_patch(quick: bool, steps: int = 3) -> dict:
    """The fields a smoke run changes in a Part IV training config: a few steps,
    through warm-up, on a small batch."""
    return {"steps": steps, "warmup": 1, "batch_size": 8} if quick else {}
