"""A plain training loop for diffusion models, with EMA, and safetensors checkpoints.

* `EMA`: an exponential moving average of the weights (used for sampling since DDPM,
  Ho et al. 2020, App. B), with the warm-up of Karras et al.'s / diffusers' EMAModel:
  decay_k = min(decay, (1+k)/(10+k)).
* `train_diffusion`: draw a batch, drop the condition with probability p_uncond (for
  classifier-free guidance, Ho & Salimans 2022, Alg. 1), compute the loss, step AdamW
  with warm-up + cosine decay, update the EMA. The loop is written out, not hidden in
  callbacks.
* `save_checkpoint`: weights as safetensors plus a JSON manifest with its hashes (read
  back, and checked, by diffusion_lib.checkpoints).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import compute
from . import scale as _scale
from .checkpoints import manifest_hash, read_manifest, sha256_file
from .config import Config
from .controlnet import ControlledUNet, ControlNet
from .forward import diffusion_loss, draw_noise
from .resume import LoopState
from .schedules import NoiseSchedule
from .setup import progress_bar
from .unclip import UnCLIPUpsampler, corrupt, downsample, enlarge, random_crops
from .unet import UNet


class EMA:
    """Keeps `self.model`, a copy of the network whose weights are an exponential moving
    average."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.num_updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


LR_SCHEDULES = ("cosine", "constant")


def lr_at(
    step: int, total: int, base_lr: float, warmup: int, schedule: str = "cosine"
) -> float:
    """Linear warm-up for `warmup` steps, then ("cosine") cosine decay to 10% of
    base_lr at step `total`, or ("constant") base_lr. The constant schedule does not
    depend on `total`: the first k steps of a longer run are a k-step run, so
    checkpoints taken along one run are what shorter runs would give (chapter 10's
    budgets; the EMA's warm-up does not depend on the total either)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(
            f"unknown lr schedule {schedule!r}; expected one of {LR_SCHEDULES}"
        )
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class OptimConfig(Config):
    """What every training loop's optimisation takes, written once: `steps` steps of
    `batch_size` rows drawn from a generator seeded with `seed`; AdamW at `lr` with
    `weight_decay`, its learning rate warmed up linearly for `warmup` steps, then
    decayed along a cosine to 10%, or held constant (`lr_schedule`, see lr_at); the
    gradient's norm clipped at `grad_clip`. The diffusion models', CLIP's and the
    VAE's configs extend it."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    lr_schedule: str = "cosine"

    def __post_init__(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
            )

    def optimizer(self, params) -> torch.optim.AdamW:
        """AdamW over `params` (parameters, or groups that set their own
        weight_decay)."""
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    def set_lr(self, optimizer, step: int) -> float:
        """Set every group's learning rate to the schedule's at `step`."""
        lr = lr_at(step, self.steps, self.lr, self.warmup, self.lr_schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


@dataclass
class TrainConfig(OptimConfig):
    """A diffusion model's training (train.fit): the optimisation, plus the EMA's
    decay, classifier-free guidance's label dropout, what the network predicts and
    how the loss weights the timesteps."""

    ema_decay: float = 0.999
    p_uncond: float = 0.1  # probability of replacing the labels by "null" (CFG)
    prediction_type: str = "eps"
    loss_weighting: str = "none"


@dataclass
class TrainResult:
    losses: list = field(default_factory=list)
    seconds: float = 0.0
    ema: EMA | None = None
    # (step, value) for each callback call that returned a value (saved with a
    # resumable run's state, so a resumed run still has the earlier ones)
    records: list = field(default_factory=list)
    flops_per_step: int = 0  # the FLOPs of one training step (compute.py)


def drop_labels(
    labels: torch.Tensor,
    null: torch.Tensor,
    p: float,
    generator: torch.Generator | None = None,
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replace each row of labels [B, ...] (label vectors [B, K], or text states
    [B, L, D]) by the null row with probability p: row i is dropped when u[i] < p, with
    u [B] ~ U(0, 1) drawn from `generator` unless given."""
    if u is None:
        # drawn on the CPU (where `generator` lives), so that the same seed drops the
        # same rows on any device
        u = torch.rand(labels.shape[0], generator=generator).to(labels.device)
    keep = (u >= p).view(-1, *[1] * (labels.ndim - 1))
    return torch.where(keep, labels, null)


def train_diffusion(
    model,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    config: TrainConfig = None,
    progress: bool = True,
    callback=None,
    callback_every: int = 0,
    context: torch.Tensor | None = None,
    null_context: torch.Tensor | None = None,
    conditions: dict | None = None,
    accelerator=None,
) -> TrainResult:
    """Train `model` (a UNet) on images [N, C, H, W] (pixels in [-1, 1], or scaled
    latents) with optional labels [N, K], or text states context [N, L, D] for
    cross-attention, replaced by null_context [L, D] (the empty caption's states) with
    probability p_uncond (caption dropout).
    conditions: any other model keyword arguments, {name: (values [N, ...], null
    [...])}, e.g. unCLIP's {"image_embed": (embeddings [N, D], zeros [D])}; in each
    batch the same rows of all of them are replaced by their nulls (p_uncond); a
    condition whose null is None is never dropped; (values, null, p): dropped with
    probability p, on rows of its own (draw_batch).

    callback(step, ema_model) is called every `callback_every` steps (e.g. to measure
    FID during training); what it returns (if not None) is kept in result.records.
    Inside `resume.resumable(...)` the loop saves its state and continues an
    interrupted run.
    Returns the per-step losses, the wall-clock seconds and the EMA of the weights.
    The loop is `fit`; with an `accelerator` (or under `accelerate launch`, see
    diffusion_lib.scale) the same call trains data-parallel.
    """
    cfg = config or TrainConfig()
    check_training_inputs(images, context, null_context, conditions)

    def next_batch(gen):
        return draw_batch(
            model, images, labels, cfg, gen, context, null_context, conditions
        )

    return fit(
        model,
        next_batch,
        schedule,
        cfg,
        accelerator,
        progress=progress,
        callback=callback,
        callback_every=callback_every,
    )


class OneProcess:
    """What `fit` asks of an 🤗 Accelerator, for one plain process on the device the
    model is on: nothing is wrapped, split or gathered (a one-process Accelerator on
    the CPU does the same; this one needs no accelerate)."""

    num_processes, process_index, gradient_accumulation_steps = 1, 0, 1
    is_main_process, sync_gradients = True, True

    def __init__(self, device):
        self.device = torch.device(device)

    def prepare(self, *objects):
        return objects

    def accumulate(self, model):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def reduce(self, value: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return value

    def wait_for_everyone(self) -> None:
        pass


def fit(
    model,
    next_batch,
    schedule: NoiseSchedule,
    config: TrainConfig,
    accelerator=None,
    *,
    trainable=None,
    progress: bool = True,
    callback=None,
    callback_every: int = 0,
    desc: str = "train",
) -> TrainResult:
    """The diffusion training loop of every diffusion model of the course: draw a
    batch, draw t and the noise, regress the model onto the target (forward.
    diffusion_loss), step AdamW with warm-up + cosine decay or a constant rate
    (lr_at), clip the gradient norm, update the EMA.

    model: what the loss calls, model(x_t, t, **kwargs); trainable: the module whose
    parameters train and whose EMA is kept (model itself by default, or a part of it,
    such as a ControlNet beside its frozen UNet). next_batch(gen) -> (x0 [B, ...],
    kwargs of [B, ...] tensors) draws a whole batch of config.batch_size rows from the
    seeded generator `gen` (on the CPU), which then draws t [B] and eps (draw_noise),
    so the same seed gives the same numbers on any device.

    accelerator: an 🤗 Accelerator, for data-parallel training, mixed precision and
    gradient accumulation (each process computes its share of the same global batch;
    see diffusion_lib.scale); None: one plain process (OneProcess).
    callback(step, ema_model) every `callback_every` steps (on the main process).
    Returns a TrainResult: the whole batch's mean loss per step, the seconds, the EMA.
    """
    trainable = model if trainable is None else trainable
    acc = accelerator or OneProcess(next(trainable.parameters()).device)
    micro = _scale.share(config.batch_size, acc)
    accum = acc.gradient_accumulation_steps
    gen = torch.Generator().manual_seed(config.seed)  # the same on every process
    opt = config.optimizer(trainable.parameters())
    device = acc.device
    model.to(device)
    ema = EMA(trainable, config.ema_decay)  # a float32 copy, before any wrapping
    wrapped, opt = acc.prepare(model, opt)
    # DistributedDataParallel has just given every process the main process's weights
    # (an adapter initialised from each process's own random state, say): start the
    # EMA from those
    ema.model.load_state_dict(trainable.state_dict())
    result = TrainResult()
    state = LoopState(
        trainable, ema, opt, gen, result, enabled=isinstance(acc, OneProcess)
    )
    first = state.restore(
        config.steps
    )  # 0, or where an interrupted resumable run stopped
    trainable.train()
    show = progress and acc.is_main_process
    counter = compute.StepCounter(desc, config.steps, acc.num_processes)

    def loss_of(net, part, batch):  # the loss of this process's rows of part `part`
        x0, kwargs, t, eps = batch
        rows = _scale.my_rows(acc, part, micro)
        return diffusion_loss(
            net,
            schedule,
            x0[rows].to(device),
            {k: v[rows].to(device) for k, v in kwargs.items()},
            config.prediction_type,
            config.loss_weighting,
            t=t[rows].to(device),
            eps=eps[rows].to(device),
        )

    def backward_on_the_side(batch):  # the step's passes, for the count (compute.py)
        for part in range(accum):
            loss_of(model, part, batch).backward()

    for step in (bar := progress_bar(range(first, config.steps), show, desc)):
        x0, kwargs = next_batch(gen)
        t, eps = draw_noise(schedule, x0, gen)  # the whole batch's
        batch = (x0, kwargs, t, eps)
        counter.count(partial(backward_on_the_side, batch), trainable.parameters())
        config.set_lr(opt, step)
        step_loss = torch.zeros((), device=device)
        for part in range(accum):
            with acc.accumulate(wrapped):
                loss = loss_of(wrapped, part, batch)
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(trainable.parameters(), config.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            step_loss += loss.detach() / accum
        ema.update(trainable)
        result.losses.append(acc.reduce(step_loss, reduction="mean").item())
        if step % 50 == 0:
            recent = result.losses[-50:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
        if callback is not None and callback_every and (step + 1) % callback_every == 0:
            if acc.is_main_process:  # callbacks write files or measure
                value = callback(step + 1, ema.model)
                if value is not None:
                    result.records.append((step + 1, value))
            acc.wait_for_everyone()
        state.after(step)
    result.seconds, result.ema = state.seconds(), ema
    result.flops_per_step = counter.record.flops_per_step
    trainable.eval()
    return result


def check_training_inputs(images, context, null_context, conditions) -> None:
    """ValueError unless context comes with its null row and every condition has one
    value per image and a null shaped like one of them (or None)."""
    if context is not None and (
        null_context is None or null_context.shape != context.shape[1:]
    ):
        raise ValueError(
            "with context [N, L, D], pass null_context [L, D] (the states of the empty "
            "caption) for caption dropout"
        )
    for name, condition in (conditions or {}).items():
        if len(condition) not in (2, 3) or (
            len(condition) == 3 and not 0.0 <= condition[2] <= 1.0
        ):
            raise ValueError(
                f"condition {name!r}: expected (values, null) or (values, null, p) "
                "with p a probability"
            )
        values, null = condition[:2]
        if values.shape[0] != images.shape[0] or (
            null is not None and null.shape != values.shape[1:]
        ):
            raise ValueError(
                f"condition {name!r}: values must be [N = {images.shape[0]}, ...] and "
                f"null one row of them; got {tuple(values.shape)} and "
                f"{tuple(null.shape)}"
            )


def draw_batch(
    model, images, labels, cfg, gen, context=None, null_context=None, conditions=None
) -> tuple[torch.Tensor, dict]:
    """One training batch, on the CPU: x0 [B, ...] (B = cfg.batch_size rows drawn from
    images with `gen`) and the model's keyword arguments, each with its rows dropped to
    the null (p = cfg.p_uncond) for classifier-free guidance. A condition given as
    (values, null, p) is dropped with its own probability p; conditions with the same
    probability are dropped on the same rows (a caption's embedding, token states and
    mask together), each probability with a draw of its own (unCLIP's decoder: the
    image embedding 10% of the time, the caption 50%, independently)."""
    idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen)
    kwargs = {}
    if labels is not None:
        null = model.null_labels(cfg.batch_size)
        kwargs["labels"] = drop_labels(labels[idx], null, cfg.p_uncond, gen)
    if context is not None:
        kwargs["context"] = drop_labels(
            context[idx], null_context[None], cfg.p_uncond, gen
        )
    draws = {}  # one draw per row for each dropout probability
    for name, (values, null, *p) in (conditions or {}).items():
        p = p[0] if p else cfg.p_uncond
        if p not in draws:
            draws[p] = torch.rand(cfg.batch_size, generator=gen)
        kwargs[name] = (
            values[idx]
            if null is None  # never dropped (e.g. an inpainting mask)
            else drop_labels(values[idx], null[None], p, u=draws[p])
        )
    return images[idx], kwargs


def save_checkpoint(
    path: str | Path, model, manifest: dict, dtype=torch.float16, accelerator=None
) -> dict:
    """Write `path` (.safetensors, weights cast to `dtype`) and `path` with .json (the
    manifest + sha256). `model`: a module, or a dict of tensors (e.g. an adapter).
    accelerator: the 🤗 Accelerator it was trained under, if any: every process then
    hashes its weights (recorded under "distributed"; they must agree) and the main
    process alone writes, while the others wait for the file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end in .safetensors, got {path.name}")
    state = {
        k: v.detach()
        .to("cpu", dtype if v.is_floating_point() else v.dtype)
        .contiguous()
        for k, v in (model if isinstance(model, dict) else model.state_dict()).items()
    }
    if accelerator is not None:  # data-parallel training
        hashes = _scale.gather_hashes(state)  # every process, before anyone writes
        manifest = {
            **manifest,
            "distributed": {
                **_scale.describe(accelerator),
                "weights_sha256_per_process": hashes,
            },
        }
        if not accelerator.is_main_process:  # the main process alone writes
            accelerator.wait_for_everyone()  # ... and the others wait for the file
            return read_manifest(path.with_suffix(".json"), manifest.get("recipe"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    manifest = {
        **manifest,
        "file": path.name,
        "dtype": str(dtype).replace("torch.", ""),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }
    manifest["manifest_sha256"] = manifest_hash(manifest)
    write_manifest(path, manifest)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return manifest


def write_manifest(path: str | Path, manifest: dict) -> None:
    """Write the manifest of checkpoint `path` (NAME.safetensors) to NAME.json; the
    weights are not touched, so the sha256 inside stays valid (under data-parallel
    training, only the main process calls it)."""
    Path(path).with_suffix(".json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    )


def loss_summary(losses: list, every: int = 100) -> dict:
    """The manifest's "final_loss" (mean of the last `every` steps) and "loss_curve"
    (the mean of each block of `every` steps)."""
    blocks = [losses[i : i + every] for i in range(0, len(losses), every)]
    return {
        "final_loss": sum(losses[-every:]) / len(losses[-every:]),
        "loss_curve": [sum(b) / len(b) for b in blocks],
    }


# ---------------------------------------------------------------------------------
# The diffusion models whose batches are not (x0, labels or a caption): each differs
# from train_diffusion only in how a batch is drawn (its next_batch), as
# improved-diffusion's super-resolution script feeds its one TrainLoop.


@dataclass
class UpsamplerTrainConfig(TrainConfig):
    crop: int = 32  # random crops of the high-resolution image (the paper's App. C)
    factor: int = 2  # low-res side = high-res side / factor
    blur_prob: float = 0.5  # how often the conditioning image is blurred
    blur_sigma: tuple = (0.2, 0.8)  # its blur sigma ~ U(lo, hi), in low-res pixels


def train_upsampler(
    model: UnCLIPUpsampler,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    config: UpsamplerTrainConfig | None = None,
    progress: bool = True,
    accelerator=None,
    callback=None,
    callback_every: int = 0,
) -> TrainResult:
    """Train on high-resolution images [N, 3, H, W]: each batch downsamples them,
    corrupts the low-res copy, enlarges it, and crops both at the same place (the loop
    is train.fit; callback as train_diffusion's)."""
    cfg = config or UpsamplerTrainConfig()

    def next_batch(gen):  # [B, 3, crop, crop] targets and enlarged low-res inputs
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen)
        high = images[idx]
        low = corrupt(downsample(high, cfg.factor), cfg, gen)
        high, cond = random_crops(high, enlarge(low, high.shape[-1]), cfg.crop, gen)
        return high, {"low_res": cond}

    return fit(
        model,
        next_batch,
        schedule,
        cfg,
        accelerator,
        progress=progress,
        callback=callback,
        callback_every=callback_every,
        desc="upsampler",
    )


CONTROL_TRAIN = TrainConfig(
    steps=3000, batch_size=64, lr=5e-4, warmup=100, ema_decay=0.999, p_uncond=0.5
)


def train_controlnet(
    unet: UNet,
    schedule,
    latents,
    context,
    null_context,
    control,
    config: TrainConfig = CONTROL_TRAIN,
    prediction_type="eps",
    callback=None,
    callback_every: int = 0,
    accelerator=None,
    hint_widths: tuple | None = None,
):
    """Train a ControlNet for the frozen `unet` on latents [N, C, h, w], text states
    [N, L, D] (replaced by null_context [L, D] with probability p_uncond) and control
    images [N, c, H, W] (never dropped), with train.fit (weight decay 0);
    callback(step, ema ControlNet) every `callback_every` steps, e.g. to watch for the
    paper's "sudden convergence". hint_widths: see controlnet.ControlNet.
    Returns (EMA ControlNet, TrainResult)."""
    n = latents.shape[0]
    if context.shape[0] != n or control.shape[0] != n:
        raise ValueError(
            f"latents, context and control need the same N = {n}, got "
            f"{context.shape[0]} and {control.shape[0]}"
        )
    unet.requires_grad_(False).eval()
    net = ControlNet(unet, control.shape[1], hint_widths=hint_widths)
    net = net.to(latents.device)
    model = ControlledUNet(unet, net)

    def next_batch(gen):  # latents, and the caption (dropped to null) and control
        idx = torch.randint(0, n, (config.batch_size,), generator=gen)
        drop = torch.rand(config.batch_size, generator=gen) < config.p_uncond
        drop = drop.to(context.device)[:, None, None]
        ctx = torch.where(drop, null_context[None].to(context.device), context[idx])
        return latents[idx], {"context": ctx, "control": control[idx]}

    cfg = replace(
        config, weight_decay=0.0, prediction_type=prediction_type, loss_weighting="none"
    )
    result = fit(
        model,
        next_batch,
        schedule,
        cfg,
        accelerator,
        trainable=net,
        progress=False,
        callback=callback,
        callback_every=callback_every,
        desc="controlnet",
    )
    return result.ema.model.eval(), result
