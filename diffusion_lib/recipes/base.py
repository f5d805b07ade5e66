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
from dataclasses import asdict, dataclass

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
        training loop (every recipe trains one)."""
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
        return self._record_compute(out_dir, [record], manifest)

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


def train_twin(name: str, out_dir, twin: str, fields: dict, train) -> dict:
    """A second training beside a recipe's network with one thing changed (`twin`
    names it), started from the same initial weights and drawing the same batches
    (train() sets both up as the recipe does), for fewer steps: an ablation at one
    budget. Its FLOPs are counted apart (its own tally, not the checkpoint's) and its
    EMA is saved as budgets/NAME-TWIN-STEPS with `fields`, its training and compute.
    Returns what the main manifest records of it (steps, FLOPs, seconds)."""
    with compute.tally() as loops:
        result = train()
    steps = len(result.losses)
    count = compute.summary(loops)
    manifest = {
        **fields,
        "twin": twin,
        "budget_step": steps,
        "training_seconds": round(result.seconds, 1),
        "training_compute": count,
        **loss_summary(result.losses),
    }
    path = pretrained.checkpoint_path(name, out_dir, steps, twin)
    save_checkpoint(path, result.ema.model, manifest)
    return {
        "steps": steps,
        "flops": count["flops"],
        "training_seconds": manifest["training_seconds"],
    }


def budget_snapshots(name: str, out_dir, steps: tuple[int, ...], fields: dict):
    """(callback, every) for train_diffusion: the EMA weights after each of `steps`
    steps, saved as budgets/NAME-STEP.safetensors (+ manifest: `fields`, the step and
    the run's planned steps). Along a constant-rate run (lr_schedule "constant") each
    is exactly the model a run of that many steps gives (train.lr_at), so one run
    yields a model per training budget (chapter 10)."""
    if not steps or any(s < 1 for s in steps):
        raise ValueError(f"budget steps must be positive, got {steps}")
    if fields.get("train", {}).get("lr_schedule") != "constant":
        raise ValueError(
            "checkpoints along a run stand for shorter runs only under a constant "
            'learning rate: train with lr_schedule="constant"'
        )

    def save(step, ema_model):
        if step in steps:
            path = pretrained.checkpoint_path(name, out_dir, step)
            save_checkpoint(path, ema_model, {**fields, "budget_step": step})

    return save, math.gcd(*steps)


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
