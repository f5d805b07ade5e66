"""Stable Diffusion vs DALL-E 2 (unCLIP), measured (chapter 10).

What each design costs, counted the same way for both:
  * parameters per component;
  * FLOPs per image, counted by PyTorch's FlopCounterMode (deterministic), for every
    network call a sampler makes (classifier-free guidance doubles the batch);
  * wall-clock time as a ratio of two pipelines measured in one run, and peak GPU
    memory (torch.cuda.max_memory_allocated) where a GPU is present.

The mini pipelines are measured directly. The real-size architectures are built from
`diffusers` / `transformers` classes with random weights (the cost of a forward pass
does not depend on the weights):
  * Stable Diffusion 1.5: CLIP ViT-L/14 text encoder, the 860M-parameter UNet at a
    64x64x4 latent, the VAE decoder to 512x512 (Rombach et al. 2022; the v1.5 card);
  * Karlo (Kakao Brain's open unCLIP, the layout of diffusers' UnCLIPPipeline): CLIP
    ViT-L/14 text encoder, the diffusion prior (PriorTransformer), the text projection,
    a 64x64 decoder UNet, and a 64 -> 256 upsampler; configurations as in diffusers'
    conversion script for Karlo. DALL-E 2 itself adds a second upsampler to 1024x1024,
    which Karlo does not have.
Their FLOPs are counted on PyTorch's "meta" device (shapes only, no memory, no time),
so the full-size numbers come out on any machine; time and memory need real tensors,
on a GPU at full size or on a CPU at a scaled-down width (`scale`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .metrics import count_flops
from .unet import count_parameters

# ---------------------------------------------------------------------------------
# The two minis


def mini_components(pipe) -> dict[str, torch.nn.Module]:
    """The networks a mini pipeline runs to draw an image from a prompt, by name (the
    CLIP image encoder is listed for unCLIP: variations need it)."""
    if hasattr(pipe, "vae"):  # MiniStableDiffusion
        return {
            "text encoder": pipe.text_encoder.text,
            "UNet": pipe.unet,
            "VAE decoder": pipe.vae.decoder,
        }
    return {
        "text encoder": pipe.clip.text,
        "prior": pipe.prior,
        "decoder": pipe.decoder,
        "upsampler": pipe.upsampler,
        "image encoder (variations only)": pipe.clip.visual,
    }


def mini_parameters(pipe) -> dict[str, int]:
    return {name: count_parameters(m) for name, m in mini_components(pipe).items()}


def mini_flops(pipe, prompt: str, num_steps: int = 50) -> dict[str, int]:
    """FLOPs to draw one image for `prompt`, per stage, with the pipeline's defaults
    (guidance, the prior's two candidates, the upsampler's steps)."""
    text = count_flops(pipe.encode_prompts, [prompt, ""])
    if hasattr(pipe, "vae"):
        latents = pipe.generate_latents([prompt], num_steps=num_steps).x0
        return {
            "text encoder": text,
            "UNet": count_flops(pipe.generate_latents, [prompt], num_steps=num_steps)
            - text,
            "VAE decoder": count_flops(pipe.decode, latents),
        }
    embed = pipe.prior_embeddings([prompt])
    low = pipe.decoder_images(embed, num_steps=num_steps)
    return {
        "text encoder": text,
        "prior": count_flops(pipe.prior_embeddings, [prompt]) - text,
        "decoder": count_flops(pipe.decoder_images, embed, num_steps=num_steps),
        "upsampler": count_flops(pipe.upsample, low),
    }


# ---------------------------------------------------------------------------------
# Training budgets: the checkpoints each design's recipes kept along their runs

# the networks each design trains (CLIP, shared, and the VAE, given to SD, are not
# part of either budget: counted apart)
DESIGNS = {
    "Stable Diffusion": ("scenes-ldm",),
    "unCLIP": ("scenes-prior", "scenes-decoder", "scenes-upsampler"),
}


def flops_per_step(manifest: dict) -> int:
    """One training step's FLOPs, from a manifest's training_compute (compute.py)."""
    compute = manifest.get("training_compute")
    if not compute:
        raise ValueError(
            f"the {manifest.get('recipe')} manifest has no training_compute: count it "
            f"with `python -m diffusion_lib.recipes {manifest.get('recipe')} --stage "
            "count`"
        )
    per_step = {loop["flops_per_step"] for loop in compute["loops"]}
    if len(per_step) != 1:  # a run and its decay train the same network
        raise ValueError(
            f"the {manifest.get('recipe')} manifest's training loops differ in FLOPs "
            f"per step ({sorted(per_step)}): one network trained, one count each"
        )
    return per_step.pop()


def budget_points(directory=None) -> dict[str, list[dict]]:
    """For each design, its training budgets: the k-th checkpoint each of its
    networks kept (budget_steps in their manifests) make the k-th point; its FLOPs
    are the networks' FLOPs per step times those steps, plus the steps of the decay
    that ends each budget (budget_cooldown_steps; recipes.base.cool_down), where the
    recipe has one. [{"fraction" (of the whole run), "steps" {name: step}, "flops"}]
    per design."""
    from . import pretrained

    out = {}
    for design, names in DESIGNS.items():
        manifests = {n: pretrained.manifest(n, directory) for n in names}
        counts = {len(m.get("budget_steps") or []) for m in manifests.values()}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(
                f"{design}: every network must keep the same number of budget "
                f"checkpoints (budget_steps); got {sorted(counts)}"
            )
        rows = []
        for k in range(counts.pop()):
            steps = {n: m["budget_steps"][k] for n, m in manifests.items()}
            fractions = {steps[n] / m["train"]["steps"] for n, m in manifests.items()}
            if len(fractions) != 1:
                raise ValueError(
                    f"{design}: budget {k} is not the same share of every network's "
                    f"run: {steps}"
                )
            flops = sum(
                flops_per_step(m) * (steps[n] + _cooldown(m, k))
                for n, m in manifests.items()
            )
            rows.append({"fraction": fractions.pop(), "steps": steps, "flops": flops})
        out[design] = rows
    return out


def _cooldown(manifest: dict, k: int) -> int:
    """The steps of the decay that ends a network's k-th budget (0 where its recipe
    has none)."""
    decays = manifest.get("budget_cooldown_steps")
    if decays is None:
        return 0
    if len(decays) != len(manifest["budget_steps"]):
        raise ValueError(
            f"the {manifest.get('recipe')} manifest has {len(decays)} budget "
            f"cooldowns for {len(manifest['budget_steps'])} budgets"
        )
    return decays[k]


# what both designs use and neither trains in its budget: counted apart
SHARED = {
    "CLIP (both designs)": "scenes-clip",
    "VAE (Stable Diffusion's, given)": "scenes-vae",
}


def training_compute_table(directory=None) -> list[dict]:
    """One row per trained network of both designs (DESIGNS), then the parts counted
    apart (SHARED): its design, FLOPs per step, steps, training FLOPs, wall-clock
    seconds and hardware, from the manifests."""
    from . import pretrained

    rows = []
    named = [(d, n) for d, names in DESIGNS.items() for n in names]
    named += [(label, n) for label, n in SHARED.items()]
    twins = []
    for design, name in named:
        m = pretrained.manifest(name, directory)
        per_step = flops_per_step(m)
        steps = sum(loop["steps"] for loop in m["training_compute"]["loops"])
        row = {
            "design": design,
            "network": name,
            "flops_per_step": per_step,
            "steps": steps,
            "flops": per_step * steps,
            "seconds": m.get("training_seconds"),
            "hardware": m.get("hardware"),
        }
        rows.append(row)
        for twin, record in (m.get("twins") or {}).items():  # an ablation's, apart
            twins.append(
                {
                    **row,
                    "design": f"{design}: ablation (apart)",
                    "network": f"{name}, {twin} twin",
                    "steps": record["steps"] + record.get("cooldown_steps", 0),
                    "flops": record["flops"],
                    "seconds": record["training_seconds"],
                }
            )
    return rows + twins


# whose manifest holds each design's measurements (the pipeline's last recipe)
MEASURED_IN = {"Stable Diffusion": "scenes-ldm", "unCLIP": "scenes-decoder"}


def quality_by_budget(directory=None) -> dict[str, list[dict]]:
    """budget_points with each point's measurements (the measure stages' "budgets":
    prompt accuracy and FID per group, binding outcomes), per design."""
    from . import pretrained

    out = {}
    for design, points in budget_points(directory).items():
        name = MEASURED_IN[design]
        metrics = pretrained.manifest(name, directory).get("metrics") or {}
        measured = metrics.get("budgets") or {}
        out[design] = []
        for point in points:
            key = str(point["steps"][name])
            if key not in measured:
                raise ValueError(
                    f"{name}'s manifest has no measurement of the budget at step "
                    f"{key}: run `python -m diffusion_lib.recipes {name} --stage "
                    "measure`"
                )
            row = measured[key]
            out[design].append(
                {**point, "groups": row["groups"], "binding": row["binding"]}
            )
    return out


def budgets_agree(points: dict, tolerance: float = 0.1) -> list[str]:
    """The budgets at which the two designs' training FLOPs differ by more than
    `tolerance` (relative to the larger), as readable lines; [] when they agree."""
    sd, unclip = points["Stable Diffusion"], points["unCLIP"]
    if len(sd) != len(unclip):
        return [f"{len(sd)} Stable Diffusion budgets against {len(unclip)} unCLIP ones"]
    problems = []
    for a, b in zip(sd, unclip):
        gap = abs(a["flops"] - b["flops"]) / max(a["flops"], b["flops"])
        if gap > tolerance:
            problems.append(
                f"fraction {a['fraction']:g}: {a['flops']:.3g} against "
                f"{b['flops']:.3g} FLOPs ({gap:.0%} apart)"
            )
    return problems


def seconds_per_image(
    pipes: dict, prompts: list, num_steps: int = 50, repeats: int = 2
) -> dict[str, float]:
    """Wall-clock seconds per image of each pipeline, measured in turns in one run (so
    that a busy machine slows all of them alike); the minimum over `repeats`."""
    best = {name: float("inf") for name in pipes}
    for _ in range(repeats):
        for name, pipe in pipes.items():
            _sync(pipe.device)
            start = time.perf_counter()
            pipe(prompts, num_steps=num_steps)
            _sync(pipe.device)
            best[name] = min(best[name], (time.perf_counter() - start) / len(prompts))
    return best


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(fn, device) -> int | None:
    """Peak bytes of GPU memory allocated while fn() runs (None on a CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def diversity_at(sweep: dict, accuracy: float) -> float | None:
    """The diversity at a given prompt accuracy, linearly interpolated along a guidance
    sweep {scale: {"joint": ..., "diversity": ...}} (ordered by scale); None if the
    sweep never reaches that accuracy."""
    rows = [r for r in sweep.values() if "joint" in r]
    for a, b in zip(rows, rows[1:]):
        lo, hi = sorted((a["joint"], b["joint"]))
        if lo <= accuracy <= hi:
            if hi == lo:
                return max(a["diversity"], b["diversity"])
            w = (accuracy - a["joint"]) / (b["joint"] - a["joint"])
            return a["diversity"] + w * (b["diversity"] - a["diversity"])
    return None


# ---------------------------------------------------------------------------------
# The real-size architectures, with random weights


@dataclass
class Stage:
    """One network of a pipeline: how to build it, one forward pass's inputs, and how
    often a sampler calls it per image (batch = 2 under classifier-free guidance)."""

    name: str
    build: object  # () -> nn.Module
    inputs: object  # (device, dtype) -> dict of keyword arguments
    calls: int  # forward passes per image
    batch: int


def _clip_text(scale: float):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    width = _width(768, scale, 64)
    cfg = CLIPTextConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_attention_heads=max(1, width // 64),
        num_hidden_layers=12,
        projection_dim=width,
    )
    return CLIPTextModelWithProjection(cfg), width


def _width(channels: int, scale: float, multiple: int) -> int:
    return max(multiple, int(round(channels * scale / multiple)) * multiple)


def _chans(channels: tuple, scale: float) -> tuple:
    return tuple(_width(c, scale, 16) for c in channels)


def sd15_stages(scale: float = 1.0, steps: int = 50, size: int = 512) -> list[Stage]:
    """Stable Diffusion 1.5's three networks (scale < 1 narrows every layer, for a
    CPU); `steps` DDIM steps with guidance; `size` x `size` images (latent / 8)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    text_width = _width(768, scale, 64)
    latent = size // 8
    groups = 32 if scale == 1.0 else 8
    unet_cfg = dict(
        sample_size=latent,
        cross_attention_dim=text_width,
        layers_per_block=2,
        block_out_channels=_chans((320, 640, 1280, 1280), scale),
        attention_head_dim=8,
        norm_num_groups=groups,
    )
    vae_cfg = dict(
        block_out_channels=_chans((128, 256, 512, 512), scale),
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        norm_num_groups=groups,
        sample_size=size,
    )

    def vae_decoder():
        vae = AutoencoderKL(**vae_cfg)
        return _Decode(vae)

    return [
        Stage(
            "text encoder",
            lambda: _clip_text(scale)[0],
            lambda d, t: {"input_ids": torch.zeros(2, 77, dtype=torch.long, device=d)},
            1,
            2,
        ),
        Stage(
            "UNet",
            lambda: UNet2DConditionModel(**unet_cfg),
            lambda d, t: {
                "sample": torch.randn(2, 4, latent, latent, device=d, dtype=t),
                "timestep": torch.tensor(500, device=d),
                "encoder_hidden_states": torch.randn(
                    2, 77, text_width, device=d, dtype=t
                ),
            },
            steps,
            2,
        ),
        Stage(
            "VAE decoder",
            vae_decoder,
            lambda d, t: {"z": torch.randn(1, 4, latent, latent, device=d, dtype=t)},
            1,
            1,
        ),
    ]


class _Decode(torch.nn.Module):
    """The VAE's decoder path only (post-quant conv + decoder), as a module."""

    def __init__(self, vae):
        super().__init__()
        self.post_quant_conv, self.decoder = vae.post_quant_conv, vae.decoder

    def forward(self, z):
        return self.decoder(self.post_quant_conv(z))


class _KarloDecoder(torch.nn.Module):
    """Karlo's decoder: the text projection (image embedding -> time-embedding offset
    and four extra tokens) and the 64x64 UNet."""

    def __init__(self, unet_cfg, embed_dim, time_embed_dim, cross_dim):
        super().__init__()
        from diffusers import UNet2DConditionModel
        from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

        self.text_proj = UnCLIPTextProjModel(
            clip_extra_context_tokens=4,
            clip_embeddings_dim=embed_dim,
            time_embed_dim=time_embed_dim,
            cross_attention_dim=cross_dim,
        )
        self.unet = UNet2DConditionModel(**unet_cfg)

    def forward(
        self, sample, timestep, image_embeddings, prompt_embeds, text_states, text_mask
    ):
        states, class_labels = self.text_proj(
            image_embeddings=image_embeddings,
            prompt_embeds=prompt_embeds,
            text_encoder_hidden_states=text_states,
            do_classifier_free_guidance=False,
        )
        return self.unet(
            sample, timestep, encoder_hidden_states=states, class_labels=class_labels
        ).sample


def karlo_stages(
    scale: float = 1.0,
    prior_steps: int = 25,
    decoder_steps: int = 25,
    upsampler_steps: int = 7,
) -> list[Stage]:
    """Karlo's networks (diffusers' UnCLIPPipeline defaults: 25 prior steps and 25
    decoder steps with guidance, 7 upsampler steps without)."""
    from diffusers import PriorTransformer, UNet2DModel

    width = _width(768, scale, 64)
    heads_dim = 64 if scale == 1.0 else 16
    groups = 32 if scale == 1.0 else 8
    chans = _chans((320, 640, 960, 1280), scale)
    cross = _width(1536, scale, 64)
    decoder_cfg = dict(
        sample_size=64,
        layers_per_block=3,
        down_block_types=("ResnetDownsampleBlock2D",)
        + ("SimpleCrossAttnDownBlock2D",) * 3,
        up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=chans,
        in_channels=3,
        out_channels=6,
        cross_attention_dim=cross,
        class_embed_type="identity",
        attention_head_dim=heads_dim,
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=groups,
    )
    sr_cfg = dict(
        sample_size=256,
        layers_per_block=3,
        down_block_types=("ResnetDownsampleBlock2D",) * 4,
        up_block_types=("ResnetUpsampleBlock2D",) * 4,
        block_out_channels=chans,
        in_channels=6,
        out_channels=3,
        add_attention=False,
        norm_num_groups=groups,
    )
    prior_heads = 32 if scale == 1.0 else max(1, _width(2048, scale, 64) // 64)

    def prior():
        return PriorTransformer(
            num_attention_heads=prior_heads,
            attention_head_dim=64,
            num_layers=20,
            embedding_dim=width,
        )

    def prior_inputs(d, t):
        return {
            "hidden_states": torch.randn(2, width, device=d, dtype=t),
            "timestep": torch.tensor(500, device=d),
            "proj_embedding": torch.randn(2, width, device=d, dtype=t),
            "encoder_hidden_states": torch.randn(2, 77, width, device=d, dtype=t),
            "attention_mask": torch.ones(2, 77, dtype=torch.bool, device=d),
        }

    def decoder_inputs(d, t):
        return {
            "sample": torch.randn(2, 3, 64, 64, device=d, dtype=t),
            "timestep": torch.tensor(500, device=d),
            "image_embeddings": torch.randn(2, width, device=d, dtype=t),
            "prompt_embeds": torch.randn(2, width, device=d, dtype=t),
            "text_states": torch.randn(2, 77, width, device=d, dtype=t),
            "text_mask": torch.ones(2, 77, dtype=torch.bool, device=d),
        }

    return [
        Stage(
            "text encoder",
            lambda: _clip_text(scale)[0],
            lambda d, t: {"input_ids": torch.zeros(2, 77, dtype=torch.long, device=d)},
            1,
            2,
        ),
        Stage("prior", prior, prior_inputs, prior_steps, 2),
        Stage(
            "decoder",
            lambda: _KarloDecoder(decoder_cfg, width, chans[0] * 4, cross),
            decoder_inputs,
            decoder_steps,
            2,
        ),
        Stage(
            "upsampler",
            lambda: UNet2DModel(**sr_cfg),
            lambda d, t: {
                "sample": torch.randn(1, 6, 256, 256, device=d, dtype=t),
                "timestep": torch.tensor(500, device=d),
            },
            upsampler_steps,
            1,
        ),
    ]


def stage_cost(
    stage: Stage, device="meta", dtype=torch.float32, time_it=False, flops=True
) -> dict:
    """Parameters, FLOPs of one forward pass (FlopCounterMode; on "meta" nothing is
    computed; flops=False skips the count and reports None: on a CPU counting is the
    slowest part of timing a scaled-down SD UNet) and, with time_it on a real device,
    seconds per forward pass and peak GPU memory."""
    device = torch.device(device)
    with torch.device(device):
        model = stage.build()
    model = model.to(dtype).eval().requires_grad_(False)
    kwargs = stage.inputs(device, dtype)
    out = {
        "parameters": count_parameters(model),
        "calls": stage.calls,
        "batch": stage.batch,
        "flops": count_flops(model, **kwargs) if flops else None,
        "weight_bytes": count_parameters(model) * dtype.itemsize,
    }
    if time_it and device.type != "meta":
        with torch.no_grad():
            model(**kwargs)  # warm-up
            _sync(device)
            start = time.perf_counter()
            model(**kwargs)
            _sync(device)
            out["seconds"] = time.perf_counter() - start
            # activations and workspace above the weights, during one forward pass
            out["activation_bytes"] = peak_memory(lambda: model(**kwargs), device)
    return out


def pipeline_cost(
    stages: list[Stage], device="meta", dtype=torch.float32, time_it=False, flops=True
) -> dict:
    """stage_cost of every stage, and per-image totals: FLOPs and (when timed) seconds
    = sum over stages of calls x one forward pass; peak GPU memory = every stage's
    weights (a pipeline keeps them all loaded) + the largest stage's activations (the
    stages run one after another)."""
    rows = {s.name: stage_cost(s, device, dtype, time_it, flops) for s in stages}
    total = {
        "parameters": sum(r["parameters"] for r in rows.values()),
        "flops": sum(r["flops"] * r["calls"] for r in rows.values()) if flops else None,
    }
    if time_it and torch.device(device).type != "meta":
        total["seconds"] = sum(r["seconds"] * r["calls"] for r in rows.values())
        acts = [r["activation_bytes"] for r in rows.values()]
        total["peak_bytes"] = (
            sum(r["weight_bytes"] for r in rows.values()) + max(acts)
            if None not in acts
            else None
        )
    return {"stages": rows, "total": total}


def budgets_measured(directory=None) -> bool:
    """Whether the checkpoints in `directory` carry chapter 10's equal-budget points,
    measured (quality_by_budget would answer); checkpoints trained before the
    constant-rate recipes keep no budgets."""
    try:
        quality_by_budget(directory)
    except (ValueError, KeyError):
        return False
    return True
