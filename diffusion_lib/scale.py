"""Training that scales out: the recipes under 🤗 Accelerate.

    accelerate launch --multi_gpu --num_processes 4 -m diffusion_lib.recipes scenes-ldm
    accelerate launch --mixed_precision bf16 -m diffusion_lib.recipes shapes-ddpm
    accelerate launch --multi_gpu --num_processes 2 -m diffusion_lib.recipes \\
        shapes-ddpm --quick --grad-accum 2 --out /tmp/ckpt  # no GPU: 2 CPU processes

Every diffusion model trains with one loop, `train.fit` (train_diffusion, the
upsampler's and ControlNet's differ only in how a batch is drawn). Under
`accelerate launch`, the recipes' command line makes one `Accelerator` and passes it
to the recipe, which passes it to every loop and to `save_checkpoint` (there is no
module-level state: a caller may pass its own to `fit`); the loop keeps the recipe's
meaning and changes only where the arithmetic happens:

* every process draws the same global batch of `config.batch_size` rows (the same seeded
  generator on each), with its timesteps and noise, and computes the loss on its own
  1 / (processes x accumulation steps) share of it; DistributedDataParallel averages
  the gradients, so one optimizer step sees the gradient of the whole batch, as in the
  single-process run (the tests check the weights agree);
* gradient accumulation (`--grad-accum N`) splits each process's share into N
  micro-batches, for memory;
* mixed precision (`accelerate launch --mixed_precision bf16|fp16`) runs the forward
  pass under autocast; the weights, the optimizer and the EMA stay float32;
* checkpoints and manifests are written by the main process only, after every process
  has hashed the weights it holds (the manifest records the hashes: they must agree).

Every recipe scales out. `run_recipe` runs a recipe's training function on every
process; a recipe with a separate measurement stage is then measured on the main
process alone, while one that measures inside its training run (before and after, or
while it trains) does so on every process (seeded: the same numbers), and the main
one writes.

The loops that are not diffusion training (the evaluator's, the VAE's, CLIP's) and
textual inversion's (one embedding row of a text encoder that the loop calls before
the UNet) stay plain loops around one call, `backward(accelerator, loss_of, batch,
params)`: plain (accelerator None), loss_of(batch).backward(); launched, each
process's share of the rows, with the gradients summed across processes by one
all-reduce. CLIP's contrastive loss compares
every caption with every image of the batch, so there each process `gather`s the
others' embeddings (gradients flow back to the process that computed them), and
gradient accumulation is refused: a micro-batch would see fewer negatives.
"""

from __future__ import annotations

import hashlib
import os

import torch


def launched() -> bool:
    """True in a process started by `accelerate launch` (which always sets this)."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ


def is_main(accelerator) -> bool:
    """Whether this process writes files and shows progress: always in a plain run
    (accelerator None), else on the accelerator's main process only."""
    return accelerator is None or accelerator.is_main_process


def describe(accelerator) -> dict:
    """The manifest's record of how a recipe was trained."""
    return {
        "processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "device": str(accelerator.device.type),
    }


def state_hash(state: dict) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        v = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{v.dtype}:{tuple(v.shape)}".encode())
        v = v.reshape(-1)  # a 0-d tensor cannot be viewed as bytes
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def gather_hashes(state: dict) -> list[str]:
    """Every process's hash of `state`, in process order (a collective call: every
    process must make it)."""
    from accelerate.utils import gather_object

    return gather_object([state_hash(state)])


def processes(accelerator) -> int:
    """How many processes train together (1 for a plain loop)."""
    return 1 if accelerator is None else accelerator.num_processes


def share(step_batch: int, accelerator) -> int:
    """The rows each process computes per micro-batch; ValueError unless the batch
    splits evenly."""
    procs, accum = accelerator.num_processes, accelerator.gradient_accumulation_steps
    if step_batch % (procs * accum):
        raise ValueError(
            f"batch size {step_batch} does not split into {procs} processes x {accum} "
            "accumulation steps; "
            "choose a process count and --grad-accum whose product divides it"
        )
    return step_batch // (procs * accum)


def my_rows(accelerator, part: int, micro: int) -> slice:
    """This process's rows of micro-batch `part` in the whole batch: the batch is cut
    into accumulation steps x processes slices of `micro` rows, process-major within
    each step."""
    first = (part * accelerator.num_processes + accelerator.process_index) * micro
    return slice(first, first + micro)


# ---------------------------------------------------------------------------------
# The other loops (the evaluator's, the VAE's, CLIP's, textual inversion's): written
# out in their modules as plain loops around one call, `backward(accelerator, loss_of,
# batch, params)`, which under an Accelerator becomes the data-parallel step.


def _distributed(accelerator) -> bool:
    return accelerator is not None and accelerator.num_processes > 1


def start(accelerator, *modules):
    """Where a loop trains: the Accelerator's device (the modules are moved
    there, and every process starts from the main process's weights, as
    DistributedDataParallel would give them), or, in the plain loop, where the first
    module's parameters are. Returns (device, the devices to move them back to)."""
    homes = [next(m.parameters()).device for m in modules]
    if accelerator is None:
        return homes[0], homes
    for m in modules:
        m.to(accelerator.device)
        if _distributed(accelerator):
            import torch.distributed as dist

            with torch.no_grad():
                for v in [*m.parameters(), *m.buffers()]:
                    dist.broadcast(v.data, src=0)
    return accelerator.device, homes


def finish(accelerator, homes, *modules) -> None:
    """Move the modules back to where `start` found them (the recipe goes on to measure
    where it built them)."""
    if accelerator is not None:
        for m, home in zip(modules, homes):
            m.to(home)


def backward(accelerator, loss_of, batch: dict, params, contrastive: bool = False):
    """One step's gradient of the whole batch's mean loss, into the params' .grad.

    loss_of(rows) -> the mean loss over `rows` (a dict of tensors, rows of `batch`), or
    a tuple (loss, other means to report). batch: the whole batch, the same on every
    process (drawn from the same seeded generator). Plain: loss_of(batch).backward().
    Under an Accelerator (one made by `accelerate launch`), this process computes its
    share of the rows, micro-batch by micro-batch (under the launch's autocast), each
    weighted by its share of the batch, and the gradients are summed across processes:
    the gradient of the same mean as in the plain loop. contrastive: the loss compares
    each row with every other row of the batch (CLIP), so it cannot be split into
    micro-batches; loss_of must then `gather` the embeddings of all processes.
    Returns the whole batch's mean loss (and the other means), detached.
    """
    acc = accelerator
    if acc is None:
        out = loss_of(batch)
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()
        return (
            tuple(v.detach() for v in out) if isinstance(out, tuple) else loss.detach()
        )
    n = len(next(iter(batch.values())))
    accum = acc.gradient_accumulation_steps
    if contrastive and accum > 1:
        raise ValueError(
            "a contrastive loss needs the whole batch at once (every row is a negative "
            "for the others): train it without --grad-accum, or on more processes"
        )
    if acc.mixed_precision == "fp16":
        raise ValueError(
            "this loop trains in float32 or under bf16 autocast; fp16 would need loss "
            "scaling: launch with --mixed_precision bf16 (or no)"
        )
    micro = share(n, acc)
    totals = None
    for part in range(accum):
        rows = my_rows(acc, part, micro)
        with acc.autocast():
            out = loss_of({k: v[rows] for k, v in batch.items()})
        out = out if isinstance(out, tuple) else (out,)
        (out[0].float() * (micro / n)).backward()
        part_means = [v.detach().float() * (micro / n) for v in out]
        totals = (
            part_means
            if totals is None
            else [a + b for a, b in zip(totals, part_means)]
        )
    params = [p for p in params if p.requires_grad]
    if _distributed(acc):
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)  # the sum over processes of their weighted shares
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(p).to(p.dtype)
            offset += g.numel()
        totals = [acc.reduce(v, reduction="sum") for v in totals]
    return tuple(totals) if len(totals) > 1 else totals[0]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each process the gradient that every process's
    loss sends to its rows (an all-reduce of the gathered gradient, then its slice)."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather(accelerator, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every process's rows of x, concatenated in process order, with gradients
    flowing back to each process's own rows; where this process's rows start). In the
    plain loop, or with one process: (x, 0)."""
    if not _distributed(accelerator):
        return x, 0
    return _GatherWithGrad.apply(x), accelerator.process_index * x.shape[0]


def launch_accelerator(grad_accum: int = 1):
    """The one Accelerator of a process started by `accelerate launch`: every recipe
    of the launch trains with it (a second Accelerator after `end_training` would find
    the process group destroyed). Without a GPU, several processes train on the CPU
    over gloo (accelerate needs cpu=True to take that path; `accelerate launch
    --multi_gpu` starts them)."""
    from accelerate import Accelerator

    return Accelerator(
        gradient_accumulation_steps=grad_accum, cpu=not torch.cuda.is_available()
    )


def run_recipe(
    recipe, out_dir, quick=False, seed=0, stage="all", accelerator=None
) -> dict | None:
    """Run `recipe` (a recipes.Recipe) in a process started by `accelerate launch`:
    its training function on every process (data-parallel; a recipe that measures
    inside its training run measures there, seeded, so every process computes the
    same numbers and the main one writes them), then, where the recipe has a separate
    measurement stage, the measurement on the main process while the others wait.
    `accelerator`: the launch's (launch_accelerator), shared by the recipes of one
    launch; None makes one for this recipe alone and ends it. Returns the manifest on
    the main process, None on the others."""
    recipe.check(stage)
    alone = accelerator is None
    if alone:
        accelerator = launch_accelerator()
    # gradient accumulation counts micro-batches from the launch's first: each recipe
    # counts its own
    accelerator.step = 0
    # where accelerate says, for the recipes that take a device
    device = accelerator.device.type
    device = str(accelerator.device) if device in recipe.devices else "cpu"
    info = None
    if stage in ("all", "train"):
        info = recipe.train(
            out_dir, quick=quick, seed=seed, device=device, accelerator=accelerator
        )
    accelerator.wait_for_everyone()
    measure = stage == "measure" or (stage == "all" and recipe.measures_apart)
    if measure and accelerator.is_main_process:
        info = recipe.measure(out_dir, quick=quick, seed=seed, device=device)
    accelerator.wait_for_everyone()
    if alone:
        accelerator.end_training()
    return info if accelerator.is_main_process else None
