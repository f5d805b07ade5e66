"""Recipes under `accelerate launch` (diffusion_lib.scale): the data-parallel loop
computes what the plain loop computes, several CPU processes hold the same weights, and
only the main process writes."""

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusion_lib import pretrained, recipes, scale, train_parts
from diffusion_lib.schedules import NoiseSchedule
from diffusion_lib.train import TrainConfig, train_diffusion
from diffusion_lib.unet import UNet

ACCELERATE = Path(sys.executable).parent / "accelerate"


@pytest.fixture
def accelerator_factory():
    """Single-process Accelerators on the CPU; accelerate's global state is reset
    afterwards so that no other test sees it."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    def make(**kwargs):
        AcceleratorState._reset_state(True)
        return Accelerator(cpu=True, **kwargs)

    yield make
    AcceleratorState._reset_state(True)


def _train(tiny_text_unet, accelerator=None, steps=6):
    torch.manual_seed(0)
    latents = torch.randn(40, 4, 8, 8)
    context, null = torch.randn(40, 5, 8), torch.zeros(5, 8)
    model = tiny_text_unet()
    cfg = TrainConfig(steps=steps, batch_size=8, lr=1e-3, warmup=2, seed=3)
    schedule = NoiseSchedule.make("cosine", 100)
    result = train_diffusion(
        model,
        schedule,
        latents,
        None,
        cfg,
        progress=False,
        context=context,
        null_context=null,
        accelerator=accelerator,  # None: the plain loop
    )
    return result, model


def _max_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


def test_one_process_accelerated_loop_is_the_plain_loop(
    tiny_text_unet, accelerator_factory
):
    plain, plain_model = _train(tiny_text_unet)
    acc, acc_model = _train(tiny_text_unet, accelerator_factory())
    assert acc.losses == plain.losses  # the same batches, timesteps and noise
    assert _max_diff(acc_model, plain_model) == 0.0
    assert _max_diff(acc.ema.model, plain.ema.model) == 0.0
    untrained = tiny_text_unet()
    assert _max_diff(acc_model, untrained) > 1e-4  # it trained


def test_gradient_accumulation_computes_the_same_steps(
    tiny_text_unet, accelerator_factory
):
    """Two micro-batches of 4 then one optimizer step: the gradient of the batch of 8,
    up to float summation order."""
    plain, plain_model = _train(tiny_text_unet)
    acc, acc_model = _train(
        tiny_text_unet, accelerator_factory(gradient_accumulation_steps=2)
    )
    assert acc.losses == pytest.approx(plain.losses, rel=1e-4)
    assert _max_diff(acc_model, plain_model) < 1e-4


def test_bf16_autocast_trains_float32_weights(tiny_text_unet, accelerator_factory):
    plain, plain_model = _train(tiny_text_unet)
    acc, acc_model = _train(tiny_text_unet, accelerator_factory(mixed_precision="bf16"))
    assert all(p.dtype == torch.float32 for p in acc_model.parameters())
    assert all(torch.isfinite(torch.tensor(acc.losses)))
    # bf16 keeps 8 bits of mantissa: the losses follow the float32 run, not exactly
    assert acc.losses == pytest.approx(plain.losses, rel=0.05)
    assert 0 < _max_diff(acc_model, plain_model) < 0.05


def _both(run, accelerator):
    """run() plainly and run(accelerator) under a one-process Accelerator, from the
    same seed."""
    torch.manual_seed(0)
    plain = run()
    torch.manual_seed(0)
    accelerated = run(accelerator)
    return plain, accelerated


def test_the_upsampler_loop_scales_out_unchanged(accelerator_factory):
    from diffusion_lib.train import UpsamplerTrainConfig
    from diffusion_lib.unclip import UnCLIPUpsampler
    from diffusion_lib.unet import UNetConfig

    images = (
        torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    )
    cfg = UpsamplerTrainConfig(steps=3, batch_size=4, warmup=1, crop=8, factor=2)
    config = UNetConfig(
        in_channels=6,
        out_channels=3,
        base_channels=8,
        channel_mults=(1, 2),
        attention_levels=(),
        mid_attention=False,
    )

    def run(accelerator=None):
        model = UnCLIPUpsampler(config)
        from diffusion_lib.train import train_upsampler

        result = train_upsampler(
            model,
            NoiseSchedule.make("cosine", 100),
            images,
            cfg,
            progress=False,
            accelerator=accelerator,
        )
        return result, model

    (plain, plain_model), (acc, acc_model) = _both(run, accelerator_factory())
    assert acc.losses == plain.losses
    assert _max_diff(acc_model, plain_model) == 0.0
    assert _max_diff(acc.ema.model, plain.ema.model) == 0.0


def test_the_controlnet_loop_scales_out_unchanged(tiny_text_unet, accelerator_factory):
    from diffusion_lib.train import train_controlnet

    g = torch.Generator().manual_seed(2)
    latents, context = torch.randn(8, 4, 8, 8, generator=g), torch.randn(8, 5, 8)
    control = (torch.rand(8, 1, 64, 64, generator=g) > 0.5).float()
    cfg = TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup=1, ema_decay=0.5)

    def run(accelerator=None):
        unet = tiny_text_unet()
        schedule = NoiseSchedule.make("linear", 100)
        net, result = train_controlnet(
            unet,
            schedule,
            latents,
            context,
            torch.zeros(5, 8),
            control,
            cfg,
            accelerator=accelerator,
        )
        return result, net

    (plain, plain_net), (acc, acc_net) = _both(run, accelerator_factory())
    assert acc.losses == plain.losses
    assert _max_diff(acc_net, plain_net) == 0.0  # the EMA ControlNets
    assert any(z.weight.abs().sum() > 0 for z in acc_net.zero_convs)  # it trained


# the loops around scale.backward: the evaluator's, VAE's, CLIP's, textual inversion's


def _evaluator_run(accelerator=None):
    from diffusion_lib import data, metrics

    shapes = data.make_shapes(48, 32, seed=0, split="all")
    model = metrics.Evaluator(metrics.EvaluatorConfig(width=8, num_features=16))
    TRAINED_FROM["evaluator"] = copy.deepcopy(model)
    losses = train_parts.train_evaluator(
        model,
        shapes.images,
        shapes.labels,
        steps=3,
        batch_size=8,
        progress=False,
        accelerator=accelerator,
    )
    return losses, model


def _vae_run(accelerator=None):
    from diffusion_lib import vae

    images = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model = vae.AutoencoderKL(vae.VAEConfig(channels=(8, 16), groups=4))
    TRAINED_FROM["vae"] = copy.deepcopy(model)
    cfg = train_parts.VAETrainConfig(steps=3, batch_size=8, warmup=1)
    result = train_parts.train_vae(
        model, images * 2 - 1, cfg, progress=False, accelerator=accelerator
    )
    return result.losses + result.kl, model


def _clip_run(accelerator=None):
    from diffusion_lib import clip, data

    tokenizer = clip.scene_tokenizer()
    scenes = data.make_scenes(24, 64, seed=0, split="train")
    model = clip.CLIP(
        clip.CLIPConfig(
            vocab_size=tokenizer.vocab_size,
            context_length=tokenizer.context_length,
            text_width=16,
            text_layers=1,
            text_heads=2,
            patch_size=16,
            vision_width=16,
            vision_layers=1,
            vision_heads=2,
            embed_dim=8,
        )
    )
    TRAINED_FROM["clip"] = copy.deepcopy(model)
    cfg = train_parts.CLIPTrainConfig(steps=3, batch_size=8, warmup=1)
    result = train_parts.train_clip(
        model,
        scenes.images,
        tokenizer(scenes.captions),
        cfg,
        progress=False,
        accelerator=accelerator,
    )
    return result.losses + result.temperatures, model


def _inversion_run(directory, accelerator=None):
    from diffusion_lib import finetune, loaders
    from diffusion_lib.pipelines import MiniStableDiffusion
    from diffusion_lib.train import TrainConfig

    pipe = MiniStableDiffusion.from_pretrained(directory=directory)
    table = loaders.teach_word(pipe)
    concept = finetune.concept_scenes(8, 5, finetune.CONCEPT, 64)
    cfg = TrainConfig(steps=3, batch_size=4, lr=0.05, warmup=1)
    TRAINED_FROM["inversion"] = copy.deepcopy(table)
    result = finetune.train_textual_inversion(pipe, concept, cfg, accelerator)
    return result.losses, table


TRAINED_FROM = {}  # each run's model before training
LOOPS = {"evaluator": _evaluator_run, "vae": _vae_run, "clip": _clip_run}


@pytest.mark.parametrize("name", [*LOOPS, "inversion"])
def test_the_other_loops_run_unchanged_under_one_accelerator(
    name, accelerator_factory, tiny_sd_dir
):
    run = LOOPS.get(name) or (lambda acc=None: _inversion_run(tiny_sd_dir, acc))
    (plain, plain_model), (acc, acc_model) = _both(run, accelerator_factory())
    assert acc == plain  # the same losses (and KL terms, temperatures)
    assert _max_diff(acc_model, plain_model) == 0.0
    assert _max_diff(acc_model, TRAINED_FROM[name]) > 1e-4  # and it trained


@pytest.mark.parametrize("name", ["evaluator", "vae"])
def test_the_other_loops_accumulate_gradients(name, accelerator_factory):
    """Two micro-batches of 4, then one step: the batch of 8's gradient, up to the
    order of float sums."""
    (plain, plain_model), (acc, acc_model) = _both(
        LOOPS[name], accelerator_factory(gradient_accumulation_steps=2)
    )
    assert acc == pytest.approx(plain, rel=1e-4)  # a misplaced row would show here
    # Adam's first steps move each weight by about lr * sign(gradient): where a
    # gradient is ~1e-8, float summation order (1e-7) can flip it
    assert _max_diff(acc_model, plain_model) < 2e-3


def test_backward_in_micro_batches_gives_the_whole_batchs_gradient(
    accelerator_factory,
):
    from diffusion_lib import data, metrics

    shapes = data.make_shapes(8, 32, seed=0, split="all")
    torch.manual_seed(0)
    model = metrics.Evaluator(metrics.EvaluatorConfig(width=8, num_features=16))

    def loss_of(rows):
        logits = model(rows["x"])
        return sum(
            torch.nn.functional.cross_entropy(z, rows["labels"][:, i])
            for i, z in enumerate(logits)
        )

    batch = {"x": shapes.images, "labels": shapes.labels}
    grads = []
    for accelerator in (None, accelerator_factory(gradient_accumulation_steps=4)):
        model.zero_grad()
        loss = scale.backward(accelerator, loss_of, batch, model.parameters())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert loss.item() == pytest.approx(loss_of(batch).item(), rel=1e-6)
    assert (grads[0] - grads[1]).abs().max() < 1e-5 * grads[0].abs().max()
    assert grads[0].abs().max() > 0.1


def test_clip_refuses_accumulation_and_fp16_is_refused(accelerator_factory):
    with pytest.raises(ValueError, match="contrastive loss needs the whole batch"):
        _both(_clip_run, accelerator_factory(gradient_accumulation_steps=2))

    class HalfPrecision:  # what an fp16 launch looks like to the loop
        gradient_accumulation_steps, num_processes, process_index = 1, 1, 0
        mixed_precision, is_main_process = "fp16", True
        device = torch.device("cpu")

    with pytest.raises(ValueError, match="fp16 would need loss scaling"):
        _evaluator_run(HalfPrecision())


def test_a_batch_that_does_not_split_is_refused(tiny_text_unet, accelerator_factory):
    acc = accelerator_factory(gradient_accumulation_steps=3)
    with pytest.raises(ValueError, match="batch size 8 does not split into 1 proc"):
        _train(tiny_text_unet, acc)


def test_every_recipe_takes_the_accelerator_and_a_bad_stage_is_refused_first():
    """run_recipe hands each recipe's training function the Accelerator (so the loops
    need no module global to find it), and refuses a stage the recipe lacks before an
    Accelerator is made."""
    import inspect

    for name, recipe in recipes.RECIPES.items():
        params = inspect.signature(recipe.train).parameters
        assert {"quick", "seed", "device", "accelerator"} <= set(params), name
    with pytest.raises(ValueError, match="scenes-clip has no stage 'measure'"):
        scale.run_recipe(recipes.RECIPES["scenes-clip"], None, stage="measure")


def test_grad_accum_outside_accelerate_is_refused(capsys):
    with pytest.raises(SystemExit):
        recipes.main(["shapes-ddpm", "--quick", "--grad-accum", "2"])
    assert "works under `accelerate launch` only" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, out, *extra, recipe=("shapes-ddpm", "--stage", "train")):
    """accelerate's launcher with 2 processes on the CPU (torchrun underneath; without
    a GPU the recipe's Accelerator takes gloo), one thread each; extra: two launcher
    arguments, then the recipe's (one or several recipes: a launch of several trains
    them one after the other with one Accelerator)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DIFFUSION_MODE", None)
    cmd = [
        str(ACCELERATE),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",
        "--main_process_port",
        str(_free_port()),
        *extra[:2],
        "-m",
        "diffusion_lib.recipes",
        *recipe,
        "--quick",
        "--out",
        str(out),
        *extra[2:],
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env
    )


def _trained_on_two(run, out, name):
    """What every recipe of a launch must give: success, one writer, and a manifest
    saying that 2 processes held the same weights. Returns the manifest."""
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count(f"wrote {name}.safetensors") == 1  # the main process
    info = pretrained.manifest(name, out)
    dist = info["distributed"]
    assert dist["processes"] == 2 and dist["distributed_type"] == "MULTI_CPU"
    hashes = dist["weights_sha256_per_process"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    return info


PART_IV = ("scenes-lora", "scenes-inpaint", "scenes-controlnet", "scenes-inversion")
# three launches of several recipes each (a launch costs ~10 s of start-up on 2 cores):
# those whose measurement is a separate stage, trained only; those that measure in
# their run; and Part IV's, onto a copy of the tiny mini SD (in a folder of their own:
# the quick CLIP would replace the tiny mini SD's text encoder)
LAUNCHES = {
    "train": (("shapes-ddpm", "scenes-upsampler"), "train"),
    "all": (("shapes-evaluator", "scenes-clip"), "all"),
    "part4": (PART_IV, "all"),
}


@pytest.fixture(scope="module")
def launches(tmp_path_factory, tiny_sd_dir):
    """{recipe: (the launch's completed process, its output folder)}."""
    import shutil

    tmp = tmp_path_factory.mktemp("launches")
    shutil.copytree(tiny_sd_dir, tmp / "part4")
    done = {}
    for folder, (names, stage) in LAUNCHES.items():
        args = ("--mixed_precision", "no")
        run = _launch(tmp, tmp / folder, *args, recipe=(*names, "--stage", stage))
        done.update({name: (run, tmp / folder) for name in names})
    return done


def _file_diff(a, b) -> float:
    """Largest difference between the weights of two .safetensors files."""
    a, b = load_file(str(a)), load_file(str(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_cpu_processes_train_the_same_weights_and_the_result_loads(
    tmp_path, monkeypatch, launches
):
    run, out = launches["shapes-ddpm"]
    info = _trained_on_two(run, out, "shapes-ddpm")
    model, loaded = pretrained.load_pretrained("shapes-ddpm", directory=out)
    assert loaded["sha256"] == info["sha256"]
    x = torch.randn(2, 3, 32, 32)
    assert torch.isfinite(model(x, torch.tensor([5, 500]))).all()
    # the same recipe in one plain process: the same global batches, so the same
    # weights up to the order in which the two halves' gradients are summed
    monkeypatch.chdir(tmp_path)
    recipes.RECIPES["shapes-ddpm"].run(tmp_path / "one", quick=True, stage="train")
    assert (
        _file_diff(
            tmp_path / "one" / "shapes-ddpm.safetensors",
            out / "shapes-ddpm.safetensors",
        )
        < 1e-3
    )
    two = load_file(str(out / "shapes-ddpm.safetensors"))
    torch.manual_seed(0)
    init = UNet(recipes.SHAPES_UNET).state_dict()
    moved = max((init[k] - two[k].float()).abs().max().item() for k in init)
    assert moved > 1e-3  # and it did train


def test_two_cpu_processes_with_bf16_and_accumulation(tmp_path):
    """The diffusion loop (train.fit) under bf16 autocast with two micro-batches per
    process, through the upsampler's recipe (the smallest quick run that trains with
    fit: bf16 is slow on CPUs without bf16 units; test_bench trains every model in
    bf16 in one process)."""
    out = tmp_path / "bf16"
    args = ("--mixed_precision", "bf16", "--grad-accum", "2")
    recipe = ("scenes-upsampler", "--stage", "train")
    run = _launch(tmp_path, out, *args, recipe=recipe)
    info = _trained_on_two(run, out, "scenes-upsampler")
    dist = info["distributed"]
    assert dist["mixed_precision"] == "bf16"
    assert dist["gradient_accumulation_steps"] == 2
    assert 0 < info["final_loss"] < 1.2


@pytest.mark.parametrize("name", PART_IV)
def test_recipes_measured_in_their_run_train_on_two_processes(name, launches):
    """Part IV's recipes measure inside their run: both processes train and measure,
    one writes; the result loads onto the tiny mini SD."""
    from diffusion_lib import loaders
    from diffusion_lib.pipelines import MiniStableDiffusion

    run, out = launches[name]
    info = _trained_on_two(run, out, name)
    assert info["metrics"]
    pipe = MiniStableDiffusion.from_pretrained(directory=out)
    if name == "scenes-lora":
        pipe.load_lora_weights(directory=out)
        assert pipe(["a red diamond"], num_steps=2).shape == (1, 3, 64, 64)
    elif name == "scenes-controlnet":
        loaded = pipe.load_controlnet(directory=out)
        assert loaded["sha256"] == info["sha256"] and info["iou_curve"]
    elif name == "scenes-inversion":
        loaded = pipe.load_textual_inversion(directory=out)
        assert loaded["sha256"] == info["sha256"]
        assert pipe(["a red diamond"], num_steps=2).shape == (1, 3, 64, 64)
    else:
        model, loaded = loaders.load_inpainting(out)
        assert loaded["sha256"] == info["sha256"]
        assert json.loads(json.dumps(model.unet.config.to_dict())) == info["config"]
        assert model.unet.config.in_channels == 9  # latents, mask, masked latents


def test_upsampler_trains_on_two_processes(launches):
    run, out = launches["scenes-upsampler"]
    _trained_on_two(run, out, "scenes-upsampler")
    model, _ = pretrained.load_pretrained("scenes-upsampler", directory=out)
    x = torch.randn(1, 3, 64, 64)
    assert model(x, torch.tensor([10]), low_res=x).shape == x.shape


@pytest.mark.parametrize("name", ["shapes-evaluator", "scenes-clip"])
def test_two_cpu_processes_train_what_one_plain_process_trains(
    name, tmp_path, monkeypatch, launches
):
    """The evaluator (an all-reduce of plain gradients) and CLIP (whose contrastive
    loss needs every process's embeddings as negatives: with each process's own rows
    alone the first loss is about ln 16 instead of ln 32, and the weights differ by
    5e-3) on 2 processes: the same losses and weights as one plain process. They ran
    in one launch, after each other and before Part IV's recipes: each recipe of a
    launch trains as it would alone."""
    run, out = launches[name]
    two = _trained_on_two(run, out, name)
    monkeypatch.chdir(tmp_path)
    one = recipes.RECIPES[name](tmp_path / "one", quick=True)
    if name == "scenes-clip":
        assert [r["loss"] for r in two["curve"]] == pytest.approx(
            [r["loss"] for r in one["curve"]], rel=1e-5
        )
    else:
        assert two["train"]["final_loss"] == pytest.approx(
            one["train"]["final_loss"], rel=1e-4
        )
    assert (
        _file_diff(
            tmp_path / "one" / f"{name}.safetensors", out / f"{name}.safetensors"
        )
        < 1e-3
    )
