"""What every recipe shares: the `Recipe` record, the stage dispatch, named seed
streams and the manifest fields every checkpoint carries.

A recipe is two functions and a description. `train(out_dir, *, quick, seed, device,
accelerator)` trains, writes NAME.safetensors + NAME.json and returns the manifest;
`measure(out_dir, *, quick, seed, device)`, where the recipe has a measurement stage
apart from training, re-measures the saved checkpoint and rewrites the manifest's
"metrics" (the weights are not touched). `run` below is the only place that decides
which of the two a `--stage` runs. It also counts the training's FLOPs (compute.py)
into the manifest's "training_compute"; stage "count" does only that, for a saved
checkpoint, by running one training step.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from .. import compute, pretrained
from ..checkpoints import read_manifest
from ..resume import resumable
from ..setup import hardware
from ..train import loss_summary, save_checkpoint, write_manifest
from ..unet import count_parameters

STAGES = ("all", "train", "measure", "count")


@dataclass(frozen=True)
class Recipe:
    """One shipped checkpoint and how it is made.

    name: the checkpoint's name (pretrained/NAME.safetensors).
    builds: what it is, in a few words (the CLI's help).
    chapter: where the course builds it.
    train: trains and writes the checkpoint; returns its manifest.
    measure: re-measures the saved checkpoint (stage "measure"); None where the
        recipe measures only inside its training run (the numbers then come from
        the model as it trains: a PSNR curve, a before-and-after).
    measure_after_train: stage "all" runs `measure` after `train` (False where
        `train` measures already).
    devices: the --device values it takes (under `accelerate launch` the
        accelerator's device replaces it).
    needs: the checkpoints it reads from the same folder.
    """

    name: str
    builds: str
    chapter: int
    train: Callable[..., dict]
    measure: Callable[..., dict] | None = None
    measure_after_train: bool = True
    devices: tuple[str, ...] = ("cpu",)
    needs: tuple[str, ...] = ()

    @property
    def measures_apart(self) -> bool:
        """Whether measuring is a stage of its own, after training."""
        return self.measure is not None and self.measure_after_train

    @property
    def stages(self) -> tuple[str, ...]:
        """The --stage values it accepts: "train" alone only where measuring is a
        separate step, "measure" only where there is a measure function; "count"
        (the training's FLOPs, for a saved checkpoint) always."""
        if self.measures_apart:
            return STAGES
        return ("all", "count") if self.measure is None else ("all", "measure", "count")

    def check(self, stage: str = "all", device: str = "cpu") -> None:
        """Refuse a stage or device this recipe does not have, before anything runs
        (a stage it ignored would retrain from scratch and overwrite a checkpoint)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        if stage not in self.stages:
            raise ValueError(
                f"{self.name} has no stage {stage!r}; its stages: "
                f"{', '.join(self.stages)}"
            )
        kind = str(device).split(":")[0]
        if kind not in self.devices:
            raise ValueError(
                f"{self.name} runs on {', '.join(self.devices)} only, not {device!r}"
            )

    def run(
        self,
        out_dir=None,
        *,
        quick: bool = False,
        seed: int = 0,
        stage: str = "all",
        device: str = "cpu",
        accelerator=None,
    ) -> dict:
        """Train and/or measure (or count) as `stage` says; returns the manifest."""
        self.check(stage, device)
        train = dict(quick=quick, seed=seed, device=device, accelerator=accelerator)
        if stage == "count":
            return self.count(out_dir, **train)
        if stage in ("all", "train"):
            # an interrupted training continues where it stopped (resume.py; one
            # process only): its state is saved beside the checkpoint meanwhile
            folder = pretrained.checkpoint_path(self.name, out_dir).parent
            key = {"recipe": self.name, "quick": quick, "seed": seed}
            saving = resumable(folder, self.name, key=key)
            with saving if accelerator is None else contextlib.nullcontext():
                with compute.tally() as loops:  # every training loop's FLOPs
                    info = self.train(out_dir, **train)
            if loops and (accelerator is None or accelerator.is_main_process):
                info = self._record_compute(out_dir, loops, info)
            if stage == "train" or not self.measures_apart:
                return info
        return self.measure(out_dir, quick=quick, seed=seed, device=device)

    def count(self, out_dir=None, **train) -> dict:
        """Stage "count": the training's FLOPs for the saved checkpoint, without
        training it: the recipe runs up to its first training step, which is counted
        (compute.only_count); the manifest's "training_compute" is rewritten (the
        weights and the sealed fields are not touched). Counts the recipe's first
        training loop (every recipe trains one), and the decay that ends it where the
        manifest has one (budget_cooldown_steps)."""
        path = pretrained.checkpoint_path(self.name, out_dir)
        manifest = read_manifest(path.with_suffix(".json"), self.name)
        with compute.only_count():
            try:
                self.train(out_dir, **train)
            except compute.CountedOnly as counted:
                record = counted.record
            else:
                raise RuntimeError(f"{self.name} ran no counted training step")
        steps = manifest.get("train", {}).get("steps")
        if steps is not None and steps != record.steps:
            raise ValueError(
                f"{path.with_suffix('.json')} was trained for {steps} steps, the "
                f"recipe now trains {record.steps}: retrain it rather than count it"
            )
        loops = [record]
        decays = manifest.get("budget_cooldown_steps")
        if decays:  # the run's last decay (cool_down): the same network and batch
            loops.append(
                compute.LoopCompute(record.loop, record.flops_per_step, decays[-1])
            )
        return self._record_compute(out_dir, loops, manifest)

    def _record_compute(self, out_dir, loops, info: dict) -> dict:
        """Write the loops' FLOPs into the checkpoint's manifest ("training_compute",
        not sealed: the manifest's hash stays valid)."""
        path = pretrained.checkpoint_path(self.name, out_dir)
        manifest = json.loads(path.with_suffix(".json").read_text())
        manifest["training_compute"] = compute.summary(loops)
        write_manifest(path, manifest)
        return {**info, "training_compute": manifest["training_compute"]}

    # a recipe is called like the function it used to be: recipe(out_dir, quick=True)
    __call__ = run


# Every random draw of a recipe has its own stream: the run's seed plus the stream's
# offset (plus k for the k-th group of a measurement). The offsets are the ones the
# shipped checkpoints were made and measured with; a new purpose gets a new name.
SEED_STREAMS = {
    "training data": 0,  # the training set, and torch's global seed for the weights
    "preservation scenes": 1,  # usual scenes mixed into the LoRA's batches
    "shapes prompts": 7,  # the labels a shapes model is measured on
    "shapes real images": 500,  # real images of those labels (FID)
    "shapes real images, again": 900,  # a second real set (real vs real)
    "evaluator test images": 1000,
    "concept pictures": 1100,  # the new concept's training pictures (chapter 11)
    "held-out captions": 7000,  # scenes whose captions a model never saw
    "real scenes, again": 7100,  # a second drawing of those scenes
    "vae probe scenes": 7200,  # chapter 11: can the frozen VAE redraw a concept
    "vae test scenes": 7000,  # the VAE's reconstruction test (its own recipe)
    "vae curve scenes": 7500,  # the VAE's PSNR during training
    "upsampler test scenes": 8000,
    "edit scenes": 8000,  # chapter 12's inpainting task
    "zero-shot scenes": 8000,  # CLIP's zero-shot test
    "retrieval scenes": 8100,
    "binding scenes": 8200,
    "img2img scenes": 8500,
    "control watch scenes": 8800,  # the IoU watched while ControlNet trains
    "control scenes": 8900,
    "prompts": 9000,  # the measured prompts of a text-to-image pipeline, per group
    "real scenes": 9100,  # real scenes of those prompts (FID)
    "real scenes, second": 9200,  # a second drawing of them (real vs real)
    "sweep prompts": 9300,  # the guidance sweep's prompts
    "sweep real scenes": 9400,
    "embedding sources": 9500,  # the scenes whose true embeddings the ablation uses
    "variation prompts": 9600,
    "variation sources": 9700,
    "binding prompts": 9800,
    "adapter init": 9900,  # the LoRA's A matrices (B starts at zero)
    "upsampler x0 noise": 10000,  # the noise of the upsampler's x0-by-t test
    "inpaint latents": 10100,  # the masked latents drawn from the VAE's posterior
}


def seed_of(seed: int, stream: str, k: int = 0) -> int:
    """The seed of `stream` (SEED_STREAMS) in a run with seed `seed`, for its k-th
    group."""
    if stream not in SEED_STREAMS:
        raise ValueError(
            f"unknown seed stream {stream!r}; known: {', '.join(SEED_STREAMS)}"
        )
    return seed + SEED_STREAMS[stream] + k


def where(device, accelerator=None) -> torch.device:
    """Where a recipe ran: the accelerator's device under `accelerate launch`, else
    `device`."""
    return accelerator.device if accelerator is not None else torch.device(device)


def training_fields(
    name, cfg, model, result, *, seed, quick, device, accelerator=None
) -> dict:
    """The manifest fields of every trained checkpoint: the recipe, its training
    config, seed, time, hardware, size and losses. A recipe adds its own."""
    return {
        "recipe": name,
        "train": asdict(cfg),
        "seed": seed,
        "quick": quick,
        "training_seconds": round(result.seconds, 1),
        "hardware": hardware(where(device, accelerator)),
        "parameters": count_parameters(model),
        **loss_summary(result.losses),
    }


def run_fields(name: str, cfg, seed: int, quick: bool, static: dict) -> dict:
    """What a checkpoint kept along a run records (budget_snapshots): the recipe, its
    training config, seed and mode, and `static`, the fields that load and sample it
    (config, schedule, prediction type, guidance...), as the final manifest has them."""
    return {
        "recipe": name,
        "train": asdict(cfg),
        "seed": seed,
        "quick": quick,
        **static,
    }


# chapter 10's training budgets: checkpoints kept at these fractions of each run
BUDGET_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1)


def budget_steps(total: int) -> tuple[int, ...]:
    """The steps at which a run of `total` steps keeps its budget checkpoints
    (BUDGET_FRACTIONS of it); each must be a distinct positive step."""
    steps = tuple(round(total * f) for f in BUDGET_FRACTIONS)
    if len(set(steps)) != len(steps) or min(steps) < 1:
        raise ValueError(
            f"a run of {total} steps is too short for {len(BUDGET_FRACTIONS)} "
            f"distinct budget checkpoints at fractions {BUDGET_FRACTIONS}"
        )
    return steps


def train_twin(
    name: str, out_dir, twin: str, fields: dict, cfg, model, train, *, device=None
) -> dict:
    """A second training beside a recipe's network with one thing changed (`twin`
    names it), started from the same initial weights and drawing the same batches
    (the recipe builds `model` and `train` as for its network; train_budgets), for
    fewer steps (cfg.steps): an ablation at one budget, ended by its decay as every
    budget is. Its FLOPs are counted apart (its own tally, not the checkpoint's) and
    its EMA is saved as budgets/NAME-TWIN-STEPS with `fields`, its training and
    compute. Returns what the main manifest records of it (steps, the decay's steps,
    FLOPs, seconds)."""
    with compute.tally() as loops:
        constant, last, (steps,), (decay,) = train_budgets(
            name,
            out_dir,
            cfg,
            fields,
            model,
            train,
            device=device,
            twin=twin,
            budgets=(cfg.steps,),
        )
    count = compute.summary(loops)
    manifest = {
        **fields,
        "twin": twin,
        "budget_step": steps,
        "cooldown_steps": decay,
        **decay_fields(cfg, constant, last),
        "training_compute": count,
        **loss_summary(constant.losses),
    }
    path = pretrained.checkpoint_path(name, out_dir, steps, twin)
    save_checkpoint(path, last.ema.model, manifest)
    return {
        "steps": steps,
        "cooldown_steps": decay,
        "flops": count["flops"],
        "training_seconds": manifest["training_seconds"],
    }


def budget_snapshots(
    name: str, out_dir, steps: tuple[int, ...], fields: dict, twin: str | None = None
):
    """(callback, every) for train_diffusion: the EMA weights after each of `steps`
    steps, saved as budgets/NAME-STEP.safetensors, or NAME-TWIN-STEP with `twin`
    (+ manifest: `fields`, the step and the run's planned steps). Along a
    constant-rate run (lr_schedule "constant") each is exactly the model a run of that
    many steps gives (train.lr_at), so one run yields a model per training budget
    (chapter 10); cool_down then ends each with its own decay."""
    if not steps or any(s < 1 for s in steps):
        raise ValueError(f"budget steps must be positive, got {steps}")
    if fields.get("train", {}).get("lr_schedule") != "constant":
        raise ValueError(
            "checkpoints along a run stand for shorter runs only under a constant "
            'learning rate: train with lr_schedule="constant"'
        )

    def save(step, ema_model):
        if step in steps:
            path = pretrained.checkpoint_path(name, out_dir, step, twin)
            save_checkpoint(path, ema_model, {**fields, "budget_step": step})

    return save, math.gcd(*steps)


# Chapter 10's budget points each end with a cooldown. A constant learning rate leaves
# the weights jumping around the minimum that a decaying rate would settle into (the
# 6,000-step mini SD: two-object prompt accuracy 0.650 at the constant rate, 0.725
# after a 10% decay), and a point without that decay understates what a run of its
# length gives, most of all at the small budgets. So the constant run keeps its EMA at
# each budget step S (twin CONSTANT) and every S gets a decay of its own, 20% of S
# (a constant rate with a cooldown, Hagele et al. 2024; the 20% is the course's
# choice): a complete run of 1.2 S steps, counted whole. The last budget's is the
# shipped model.
CONSTANT = "constant"  # the twin name of the constant-rate run's snapshots
COOLDOWN_FRACTION = 0.2
COOLDOWN_EMA_DECAY = 0.99  # the run's slow EMA would average in the pre-decay weights


def cooldown_steps(step: int) -> int:
    """The steps of the decay that ends a budget of `step` constant-rate steps."""
    if step < 1:
        raise ValueError(f"a budget is a positive number of steps, got {step}")
    return max(1, round(COOLDOWN_FRACTION * step))


def cooldown_config(cfg, step: int):
    """The training config of the decay after `step` constant-rate steps of `cfg`:
    cooldown_steps(step) steps, no warm-up, the rate decaying from cfg.lr along
    lr_at's cosine to 10% of it, the EMA at COOLDOWN_EMA_DECAY; the same batch size,
    data, seed and loss. It starts from the constant run's EMA weights, with a fresh
    AdamW."""
    if cfg.lr_schedule != "constant":
        raise ValueError(
            "a cooldown ends a constant-rate run; this one's schedule is "
            f"{cfg.lr_schedule!r}"
        )
    return replace(
        cfg,
        steps=cooldown_steps(step),
        warmup=0,
        lr_schedule="cosine",
        ema_decay=COOLDOWN_EMA_DECAY,
    )


def cool_down(name: str, out_dir, budgets, fields: dict, cool, twin=None) -> tuple:
    """Every budget point's decay (see COOLDOWN_FRACTION). For each step S of
    `budgets`, cool(S) trains the decay, from the constant run's EMA at S (saved by
    budget_snapshots with twin CONSTANT), and returns its TrainResult; its EMA is saved
    as budgets/NAME-S (NAME-TWIN-S for a twin) with `fields`, the budget, the decay's
    steps and its own FLOPs.
    The decays of the smaller budgets are not the checkpoint's training
    (compute.aside); the last one is, and its result is returned to be saved as the
    checkpoint: (last result, [the decays' steps, one per budget])."""
    extra, last = [], None
    for step in budgets:
        final = step == budgets[-1]
        with contextlib.nullcontext() if final else compute.aside():
            with compute.tally() as loops:
                result = cool(step)
        if final:
            compute.count_in_enclosing(loops)
        path = pretrained.checkpoint_path(name, out_dir, step, twin)
        save_checkpoint(
            path,
            result.ema.model,
            {
                **fields,
                "budget_step": step,
                "cooldown_steps": len(result.losses),
                "training_seconds": round(result.seconds, 1),
                "cooldown_compute": compute.summary(loops),
            },
        )
        extra.append(len(result.losses))
        if final:
            last = result
    return last, extra


def constant_twin(twin: str | None) -> str:
    """The twin name of a constant-rate run's snapshots (of a twin's run too)."""
    return CONSTANT if twin is None else f"{twin}-{CONSTANT}"


def train_budgets(
    name: str,
    out_dir,
    cfg,
    fields: dict,
    model,
    train,
    *,
    device=None,
    accelerator=None,
    twin: str | None = None,
    budgets: tuple[int, ...] | None = None,
) -> tuple:
    """A recipe's training with chapter 10's budgets. `train(model, cfg, **kw)` runs
    the recipe's loop on its data (kw: train_diffusion's callback and
    callback_every). First the constant-rate run of `model`, its EMA kept at every
    budget step (budget_steps(cfg.steps); budget_snapshots, twin CONSTANT, with
    `fields`); then every budget's decay from its snapshot (cool_down), the last one
    the checkpoint. A twin (train_twin) keeps its files under its name, and `budgets`
    its own (its whole run). Returns (the constant run's TrainResult, the last
    decay's, the budgets, the decays' steps)."""
    budgets = budget_steps(cfg.steps) if budgets is None else tuple(budgets)
    if budgets[-1] != cfg.steps:
        raise ValueError(
            f"the last budget is the whole run ({cfg.steps} steps), got {budgets}"
        )
    kept = constant_twin(twin)
    save, every = budget_snapshots(name, out_dir, budgets, fields, kept)
    constant = train(model, cfg, callback=save, callback_every=every)
    if accelerator is not None:  # every process reads the snapshots the run wrote
        accelerator.wait_for_everyone()

    def cool(step):
        snapshot, _ = pretrained.load_pretrained(name, device, out_dir, step, kept)
        return train(snapshot.train().requires_grad_(True), cooldown_config(cfg, step))

    last, decays = cool_down(name, out_dir, budgets, fields, cool, twin)
    return constant, last, budgets, decays


def decay_fields(cfg, constant, decay) -> dict:
    """The manifest fields of a checkpoint that is a constant-rate run (`constant`,
    its TrainResult) ended by a decay (`decay`): the seconds of both, and under
    "cooldown" the decay's config, start and losses (training_fields gives the run's
    own)."""
    return {
        "training_seconds": round(constant.seconds + decay.seconds, 1),
        "cooldown": {
            "train": asdict(cooldown_config(cfg, cfg.steps)),
            "from": "the constant-rate run's EMA weights, a fresh AdamW",
            "training_seconds": round(decay.seconds, 1),
            **loss_summary(decay.losses),
        },
    }


class MeasureMemo:
    """A measure stage that survives being stopped: each named piece of it is computed
    once and kept in NAME.measure-partial.json beside the checkpoint, with the sha256
    of every checkpoint it measures (`names`, read from their manifests in out_dir)
    and the quick flag. Run again on the same weights, the stage reuses the pieces it
    kept and computes only the rest; on other weights it starts over. `finish()`
    removes the file once the manifest holds the figures. The pieces round-trip
    through JSON, as the manifest's figures do."""

    def __init__(self, name: str, out_dir, names: tuple[str, ...], quick: bool):
        checkpoint = pretrained.checkpoint_path(name, out_dir)
        self.path = checkpoint.with_name(f"{name}.measure-partial.json")
        self.key = {
            "quick": quick,
            **{n: pretrained.manifest(n, out_dir)["sha256"] for n in names},
        }
        self.pieces: dict = {}
        if self.path.exists():
            kept = json.loads(self.path.read_text())
            if kept.get("weights") == self.key:
                self.pieces = kept["pieces"]

    def __call__(self, label: str, compute_piece: Callable[[], object]):
        if label in self.pieces:
            print(f"{label}: kept from an earlier, stopped run", flush=True)
            return self.pieces[label]
        value = json.loads(json.dumps(compute_piece()))  # as the manifest will hold it
        self.pieces[label] = value
        partial = self.path.with_name(self.path.name + ".tmp")
        partial.write_text(json.dumps({"weights": self.key, "pieces": self.pieces}))
        partial.replace(self.path)
        return value

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)

    @staticmethod
    def none(label: str, compute_piece: Callable[[], object]):
        """No memo: compute the piece."""
        return compute_piece()
