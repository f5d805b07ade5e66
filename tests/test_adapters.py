"""LoRA from scratch (and beside peft), textual inversion, the new-concept data and the
adapter loaders (chapter 11), on tiny models."""

import copy

import pytest
import torch
from test_behaviour import check_recipe

from diffusion_lib import data, finetune, loaders
from diffusion_lib.adapters import (
    LoRALinear,
    add_lora,
    add_words,
    count_trainable,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    merge_lora,
    peft_lora,
    remove_lora,
    set_lora_scale,
    unmerge_lora,
)
from diffusion_lib.clip import CLIP, CLIPConfig, UnknownWordError, scene_tokenizer
from diffusion_lib.judge import SceneJudge, scene_accuracy
from diffusion_lib.recipes import PART_IV
from diffusion_lib.unet import UNet, UNetConfig


def _unet(seed=0):
    torch.manual_seed(seed)
    cfg = UNetConfig(
        in_channels=4,
        out_channels=4,
        base_channels=16,
        channel_mults=(1, 2),
        attention_levels=(0, 1),
        heads=2,
        groups=8,
        context_dim=8,
    )
    model = UNet(cfg)
    for p in model.parameters():  # no zero inits: every layer reaches the output
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 4, 8, 8, generator=g),
        torch.tensor([3, 500]),
        torch.randn(2, 5, 8, generator=g),
    )


def _randomise(model):
    g = torch.Generator().manual_seed(2)
    for m in lora_layers(model).values():
        m.lora_B.weight.data = 0.1 * torch.randn(m.lora_B.weight.shape, generator=g)


def test_lora_starts_as_the_base_layer_and_learns_a_low_rank_update():
    base = torch.nn.Linear(6, 5)
    layer = LoRALinear(copy.deepcopy(base), r=2, alpha=4.0)
    x = torch.randn(3, 6)
    assert torch.equal(layer(x), base(x))  # B = 0
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == [
        "lora_A.weight",
        "lora_B.weight",
    ]
    layer.lora_B.weight.data.normal_()
    delta = layer.delta_weight()
    assert torch.linalg.matrix_rank(delta) == 2 and layer.scaling == 2.0
    torch.testing.assert_close(layer(x), base(x) + x @ delta.T)
    with pytest.raises(ValueError, match="rank r must be in"):
        LoRALinear(torch.nn.Linear(6, 5), r=6)
    with pytest.raises(ValueError, match="nn.Linear"):
        LoRALinear(torch.nn.Conv2d(3, 3, 1))


def test_add_lora_wraps_every_attention_projection_and_freezes_the_rest():
    model = _unet()
    names = add_lora(model, r=2, alpha=2.0)
    blocks = [n for n, _ in model.named_modules() if n.endswith((".attn1", ".attn2"))]
    assert len(names) == 4 * len(blocks) > 0
    assert all(n.endswith(("to_q", "to_k", "to_v", "to_out.0")) for n in names)
    trainable, total = count_trainable(model)
    assert trainable == sum(p.numel() for p in lora_state_dict(model).values())
    assert 0 < trainable < 0.1 * total
    with pytest.raises(ValueError, match="no nn.Linear"):
        add_lora(_unet(), targets=("to_nothing",))


def test_the_adapters_initial_weights_come_from_its_generator():
    """A is drawn from the generator it is given, whatever torch's global generator
    has drawn before (the LoRA recipe gives it the seed stream "adapter init")."""

    def initial_a(global_seed, generator):
        model = _unet()
        torch.manual_seed(global_seed)  # what ran before
        add_lora(model, r=2, generator=generator)
        return torch.cat(
            [m.lora_A.weight.flatten() for m in lora_layers(model).values()]
        )

    seeded = lambda: torch.Generator().manual_seed(9900)  # noqa: E731
    assert torch.equal(initial_a(1, seeded()), initial_a(2, seeded()))
    assert not torch.equal(initial_a(1, None), initial_a(2, None))  # the global one


def test_merge_unmerge_and_strength():
    model, x = _unet(), _inputs()
    base = copy.deepcopy(model)
    add_lora(model, r=2, alpha=4.0)
    assert torch.equal(model(*x[:2], context=x[2]), base(*x[:2], context=x[2]))
    _randomise(model)
    y = model(*x[:2], context=x[2])
    assert (y - base(*x[:2], context=x[2])).abs().max() > 1e-2  # the adapter acts
    merge_lora(model)
    torch.testing.assert_close(model(*x[:2], context=x[2]), y, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unmerge"):
        set_lora_scale(model, 0.5)
    unmerge_lora(model)
    set_lora_scale(model, 0.0)
    torch.testing.assert_close(
        model(*x[:2], context=x[2]), base(*x[:2], context=x[2]), atol=1e-5, rtol=0
    )
    set_lora_scale(model, 1.0)
    merge_lora(model)
    plain = remove_lora(model)
    assert not lora_layers(plain)
    torch.testing.assert_close(plain(*x[:2], context=x[2]), y, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no LoRA layers"):
        merge_lora(plain)


def test_peft_and_the_from_scratch_lora_agree_on_the_same_weights():
    """The course's gate: max |difference| of outputs <= 1e-5, on a model where the
    adapter changes the output by far more than that."""
    model, x = _unet(), _inputs()
    base = copy.deepcopy(model)
    add_lora(model, r=3, alpha=6.0)
    _randomise(model)
    ours = model(*x[:2], context=x[2])
    theirs = peft_lora(base, r=3, alpha=6.0, state=lora_state_dict(model))
    peft_out = theirs(*x[:2], context=x[2])
    assert (ours - peft_out).abs().max() <= 1e-5
    assert (peft_out - base(*x[:2], context=x[2])).abs().max() > 1e-2
    # the same adapter with another scaling (alpha) no longer agrees
    other = peft_lora(base, r=3, alpha=3.0, state=lora_state_dict(model))
    assert (other(*x[:2], context=x[2]) - ours).abs().max() > 1e-3


def test_an_adapter_of_another_rank_or_model_is_refused():
    model = _unet()
    add_lora(model, r=2)
    other = _unet()
    add_lora(other, r=3)
    with pytest.raises(ValueError, match="shape"):
        load_lora_state_dict(model, lora_state_dict(other))
    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(model, {})


def _clip(tok):
    torch.manual_seed(0)
    return CLIP(
        CLIPConfig(
            vocab_size=tok.vocab_size,
            text_width=16,
            text_layers=1,
            text_heads=2,
            vision_width=16,
            vision_layers=1,
            vision_heads=2,
            embed_dim=8,
        )
    ).eval()


def test_a_new_word_keeps_every_old_prompt_as_it_was():
    tok = scene_tokenizer()
    clip = _clip(tok)
    prompts = ["a red circle to the left of a blue square", "a small green triangle"]
    before = clip.text_states(tok(prompts))
    with pytest.raises(UnknownWordError):
        tok("an orange circle")
    tok2, table = add_words(tok, clip.text, "orange", ["red", "yellow"])
    assert torch.equal(clip.text_states(tok2(prompts)), before)
    assert (
        tok2.ids["orange"] == tok.vocab_size and tok2.vocab_size == tok.vocab_size + 1
    )
    assert all(tok2.ids[w] == i for w, i in tok.ids.items())
    mean = (
        table.base.weight[tok.ids["red"]] + table.base.weight[tok.ids["yellow"]]
    ) / 2
    torch.testing.assert_close(table.new[0], mean)
    again = type(tok2).from_dict(tok2.to_dict())
    assert again.ids == tok2.ids
    with pytest.raises(ValueError, match="already"):
        tok2.with_words(["red"])
    with pytest.raises(ValueError, match="already has added words"):
        add_words(tok2, clip.text, "pink", ["red"])


def test_textual_inversion_trains_only_the_new_row(tiny_sd_dir):
    from diffusion_lib.pipelines import MiniStableDiffusion

    pipe = MiniStableDiffusion.from_pretrained(directory=tiny_sd_dir)
    unet_before = copy.deepcopy(pipe.unet.state_dict())
    with pytest.raises(ValueError, match="teach"):
        finetune.train_textual_inversion(pipe, data.concept_scenes(4, seed=1))
    table = loaders.teach_word(pipe)
    base_rows, row = table.base.weight.clone(), table.new.detach().clone()
    cfg = finetune.TrainConfig(steps=3, batch_size=4, lr=0.1)
    result = finetune.train_textual_inversion(pipe, data.concept_scenes(4, seed=1), cfg)
    assert len(result.losses) == 3 and (table.new - row).abs().max() > 1e-3
    assert torch.equal(table.base.weight, base_rows)
    assert all(
        torch.equal(v, pipe.unet.state_dict()[k]) for k, v in unet_before.items()
    )


def test_concept_scenes_and_only_the_extended_judge_names_them():
    for concept, (i, k) in {"diamond": (0, 3), "orange": (1, 6)}.items():
        s = data.concept_scenes(12, seed=3, concept=concept)
        assert (s.objects[:, 0, i] == k).all(), concept
        assert all(concept in c and "a orange" not in c for c in s.captions)
        labels = (s.objects, s.relation, s.position)
        judged = scene_accuracy(finetune.concept_judge()(s.images), *labels)
        assert judged["joint"] == 1.0, concept
        usual = scene_accuracy(SceneJudge()(s.images), *labels)
        assert usual[["shape", "colour"][i]] == 0.0, concept
    usual = data.make_scenes(40, seed=3)  # the usual scenes: no diamond, no orange
    assert (
        scene_accuracy(
            finetune.concept_judge()(usual.images),
            usual.objects,
            usual.relation,
            usual.position,
        )["joint"]
        == 1.0
    )
    with pytest.raises(ValueError, match="new concept"):
        data.concept_scenes(4, concept="red")


def test_quick_adapter_recipes_load_into_a_pipeline(tiny_part4_dir):
    from diffusion_lib import pretrained
    from diffusion_lib.pipelines import MiniStableDiffusion

    d = tiny_part4_dir
    for name in PART_IV:  # they train as before the redesign (test_behaviour)
        check_recipe(name, d)
    lora = pretrained.manifest("scenes-lora", d)
    inversion = pretrained.manifest("scenes-inversion", d)
    assert lora["trainable_parameters"] < 0.1 * lora["unet_parameters"]
    assert set(lora["metrics"]["strength_sweep"]) == {"0", "0.5", "1", "1.5"}
    pipe = MiniStableDiffusion.from_pretrained(directory=d)
    pipe.load_lora_weights(directory=d)
    assert pipe(["a red diamond"], num_steps=2).shape == (1, 3, 64, 64)
    assert count_trainable(pipe.unet)[0] == lora["trainable_parameters"]
    pipe = MiniStableDiffusion.from_pretrained(directory=d)
    pipe.load_textual_inversion(directory=d)
    assert pipe(["a red diamond"], num_steps=2).shape == (1, 3, 64, 64)
    assert inversion["trainable_parameters"] == pipe.text_encoder.config.text_width
    with pytest.raises(ValueError, match="not a LoRA"):
        pipe.load_lora_weights("scenes-inversion", d)
    with pytest.raises(ValueError, match="adapter, not a model"):
        pretrained.load_pretrained("scenes-lora", directory=d)
