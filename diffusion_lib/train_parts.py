"""Training of the parts that are not diffusion models: CLIP (chapter 7), the VAE
(chapter 6) and the evaluator that measures the shapes models (chapter 3).

Each is a plain loop around one call, `scale.backward(accelerator, loss_of, batch,
params)`: loss_of(batch).backward() in one process, its data-parallel share under
`accelerate launch` (see diffusion_lib.scale). The models, their losses and
everything inference needs stay in their own modules (clip, vae, metrics), which import
nothing from here: `python -m diffusion_lib generate` loads no training code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from . import compute, scale
from .clip import CLIP, MAX_LOGIT_SCALE, clip_loss
from .metrics import Evaluator
from .resume import LoopState
from .setup import progress_bar
from .train import EMA, OptimConfig
from .vae import AutoencoderKL, vae_loss


@dataclass
class CLIPTrainConfig(OptimConfig):
    """CLIP's training: the shared optimisation, with CLIP's sizes; the weight decay
    applies to the matrices only (not to biases, norms or the temperature)."""

    steps: int = 3000
    batch_size: int = 256
    weight_decay: float = 0.1


@dataclass
class CLIPTrainResult:
    losses: list = field(default_factory=list)
    temperatures: list = field(default_factory=list)  # 1 / exp(logit_scale) per step
    seconds: float = 0.0
    flops_per_step: int = 0  # the FLOPs of one training step (compute.py)


def train_clip(
    model: CLIP,
    images: torch.Tensor,
    tokens: torch.Tensor,
    config: CLIPTrainConfig | None = None,
    progress: bool = True,
    accelerator=None,
) -> CLIPTrainResult:
    """Contrastive training on pairs (images [N, 3, H, W], tokens [N, L]): each batch
    of B pairs is one B-way classification in each direction. accelerator: an 🤗
    Accelerator for data-parallel training (diffusion_lib.scale), or None."""
    cfg = config or CLIPTrainConfig()
    if images.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"need one caption per image, got {images.shape[0]} images and "
            f"{tokens.shape[0]} captions"
        )
    device, homes = scale.start(accelerator, model)  # launched: its device
    gen = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = cfg.optimizer(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]
    )

    def loss_of(rows):  # the mean loss of some rows against the whole batch
        img = model.encode_image(rows["images"].to(device))
        txt = model.encode_text(rows["tokens"].to(device))
        # every row's negatives are the whole batch's other rows: with several
        # processes, gather theirs (plain: all_img is img and `first` is 0)
        (all_img, first) = scale.gather(accelerator, img)
        (all_txt, _) = scale.gather(accelerator, txt)
        s = model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        per_image = s * img @ all_txt.T  # [rows, batch]: plain, model(images, tokens)
        per_caption = (s * all_img @ txt.T).T  # [rows, batch]: plain, its transpose
        return clip_loss(per_image, per_caption, first)

    result, start = CLIPTrainResult(), time.perf_counter()
    counter = compute.StepCounter("clip", cfg.steps, scale.processes(accelerator))
    params = list(model.parameters())
    model.train()
    for step in (
        bar := progress_bar(
            range(cfg.steps), progress and scale.is_main(accelerator), "clip"
        )
    ):
        idx = torch.randperm(images.shape[0], generator=gen)[: cfg.batch_size]
        cfg.set_lr(opt, step)
        opt.zero_grad(set_to_none=True)
        batch = {"images": images[idx], "tokens": tokens[idx]}
        step_backward = partial(
            scale.backward, accelerator, loss_of, batch, params, contrastive=True
        )
        counter.count(step_backward, params)  # its FLOPs (compute.py)
        loss = step_backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        result.losses.append(loss.item())
        result.temperatures.append(1 / model.logit_scale.exp().clamp(max=100).item())
        if step % 50 == 0:
            recent = result.losses[-50:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    scale.finish(accelerator, homes, model)
    result.seconds = time.perf_counter() - start
    result.flops_per_step = counter.record.flops_per_step
    model.eval()
    return result


@dataclass
class VAETrainConfig(OptimConfig):
    """The VAE's training: the shared optimisation (no weight decay), the KL term's
    weight, the reconstruction loss ("l1" or "l2") and the EMA's decay."""

    steps: int = 4000
    batch_size: int = 32
    kl_weight: float = 1e-6
    reconstruction: str = "l1"
    ema_decay: float = 0.999


@dataclass
class VAETrainResult:
    losses: list = field(default_factory=list)  # total loss per step
    kl: list = field(default_factory=list)  # KL per image value, per step
    seconds: float = 0.0
    ema: EMA | None = None
    records: list = field(default_factory=list)  # (step, what a callback returned)
    flops_per_step: int = 0  # the FLOPs of one training step (compute.py)


def train_vae(
    model: AutoencoderKL,
    images: torch.Tensor,
    config: VAETrainConfig | None = None,
    progress: bool = True,
    callback=None,
    callback_every: int = 0,
    accelerator=None,
) -> VAETrainResult:
    """Train the autoencoder on images [N, 3, H, W] in [-1, 1] with AdamW, warm-up +
    cosine learning rate and an EMA of the weights (the loop written out, as
    `train.train_diffusion`). callback(step, ema_model) runs every `callback_every`
    steps. accelerator: an 🤗 Accelerator for data-parallel training
    (diffusion_lib.scale), or None."""
    cfg = config or VAETrainConfig()
    device, homes = scale.start(accelerator, model)  # launched: its device
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = cfg.optimizer(model.parameters())
    ema, result = EMA(model, cfg.ema_decay), VAETrainResult()
    state = LoopState(model, ema, opt, gen, result, enabled=accelerator is None)
    first = state.restore(cfg.steps)  # 0, or where an interrupted resumable run stopped
    f, c = model.config.downsample_factor, model.config.latent_channels
    counter = compute.StepCounter("vae", cfg.steps, scale.processes(accelerator))
    params = list(model.parameters())

    def loss_of(rows):  # the mean loss over some rows of the batch, and its KL term
        x = rows["x"].to(device)
        posterior = model.encode(x)
        z = posterior.sample(noise=rows["e"])  # reparameterised, with the batch's noise
        loss, _, kl = vae_loss(
            model.decode(z), x, posterior, cfg.kl_weight, cfg.reconstruction
        )
        return loss, kl

    model.train()
    for step in (
        bar := progress_bar(
            range(first, cfg.steps), progress and scale.is_main(accelerator), "vae"
        )
    ):
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen)
        x = images[idx]
        e = torch.randn((len(x), c, x.shape[2] // f, x.shape[3] // f), generator=gen)
        cfg.set_lr(opt, step)
        opt.zero_grad(set_to_none=True)
        # loss_of(batch).backward(), or its data-parallel share
        step_backward = partial(
            scale.backward, accelerator, loss_of, {"x": x, "e": e}, params
        )
        counter.count(step_backward, params)  # its FLOPs (compute.py)
        loss, kl = step_backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(model)
        result.losses.append(loss.item())
        result.kl.append(kl.item())
        if step % 50 == 0:
            recent = result.losses[-50:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
        if callback is not None and callback_every and (step + 1) % callback_every == 0:
            value = callback(step + 1, ema.model)
            if value is not None:
                result.records.append((step + 1, value))
        state.after(step)
    scale.finish(accelerator, homes, model, ema.model)
    result.seconds, result.ema = state.seconds(), ema
    result.flops_per_step = counter.record.flops_per_step
    model.eval()
    return result


def train_evaluator(
    evaluator: Evaluator,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    noise_std: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    accelerator=None,
) -> list:
    """Cross-entropy on every attribute head, with Gaussian-noise augmentation (so
    that the evaluator is not thrown by the slight noise left in generated images).
    accelerator: an 🤗 Accelerator for data-parallel training (diffusion_lib.scale),
    or None. Returns the per-step losses."""
    device, homes = scale.start(accelerator, evaluator)  # launched: its device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(evaluator.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)

    def loss_of(rows):  # the mean loss over some rows of the batch
        logits = evaluator(rows["x"].to(device))
        return sum(
            F.cross_entropy(z, rows["labels"][:, i].to(device))
            for i, z in enumerate(logits)
        )

    losses = []
    counter = compute.StepCounter("evaluator", steps, scale.processes(accelerator))
    params = list(evaluator.parameters())
    evaluator.train()
    for _ in progress_bar(
        range(steps), progress and scale.is_main(accelerator), "evaluator"
    ):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        x = images[idx] + noise_std * torch.rand(
            batch_size, 1, 1, 1, generator=gen
        ) * torch.randn(images[idx].shape, generator=gen)
        opt.zero_grad(set_to_none=True)
        # loss_of(batch).backward(), or its data-parallel share
        batch = {"x": x, "labels": labels[idx]}
        step_backward = partial(scale.backward, accelerator, loss_of, batch, params)
        counter.count(step_backward, params)  # its FLOPs (compute.py)
        loss = step_backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    scale.finish(accelerator, homes, evaluator)
    evaluator.eval()
    return losses


# ---------------------------------------------------------------------------------
# Cost
