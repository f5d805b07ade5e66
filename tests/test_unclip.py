"""Unit tests of the mini DALL-E 2's parts on tiny random models: the prior, the
decoder's two conditioning paths, the upsampler, and the pipeline's plumbing."""

import copy

import pytest
import torch
import torch.nn.functional as F

from diffusion_lib.clip import CLIP, CLIPConfig, scene_tokenizer
from diffusion_lib.pipelines import MiniDALLE2, slerp
from diffusion_lib.prior import DiffusionPrior, PriorConfig, pick_closest
from diffusion_lib.schedules import NoiseSchedule
from diffusion_lib.train import (
    TrainConfig,
    UpsamplerTrainConfig,
    train_diffusion,
    train_upsampler,
)
from diffusion_lib.unclip import (
    DecoderConfig,
    UnCLIPDecoder,
    UnCLIPUpsampler,
    corrupt,
    downsample,
    enlarge,
    random_crops,
)
from diffusion_lib.unet import UNetConfig

D, L, W = 16, 20, 32


def _prior():
    torch.manual_seed(0)
    return DiffusionPrior(
        PriorConfig(
            embed_dim=D, text_width=W, context_length=L, width=32, layers=2, heads=2
        )
    ).eval()


def _prior_inputs(b=3):
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(b, L, dtype=torch.bool)
    mask[:, :6] = True
    return dict(
        x_t=torch.randn(b, D, generator=g),
        t=torch.tensor([5, 500, 999][:b]),
        text_states=torch.randn(b, L, W, generator=g),
        text_embed=F.normalize(torch.randn(b, D, generator=g), dim=-1),
        text_mask=mask,
    )


def test_prior_predicts_one_embedding_and_ignores_caption_padding():
    prior, x = _prior(), _prior_inputs()
    out = prior(**x)
    assert out.shape == (3, D)
    padded = dict(x, text_states=x["text_states"].clone())
    padded["text_states"][:, 6:] += 5.0  # only the padding changes
    assert torch.allclose(prior(**padded), out, atol=1e-5)
    real = dict(x, text_states=x["text_states"].clone())
    real["text_states"][:, 2] += 5.0  # a real token changes
    assert not torch.allclose(prior(**real), out, atol=1e-3)
    for name in ("x_t", "text_embed"):  # the query sees the noised embedding and text
        moved = dict(x, **{name: x[name] + 1.0})
        assert not torch.allclose(prior(**moved), out, atol=1e-3)


def test_prior_rejects_wrong_shapes():
    prior, x = _prior(), _prior_inputs()
    with pytest.raises(ValueError, match=r"text_embed must have shape \[3, 16\]"):
        prior(**dict(x, text_embed=x["text_embed"][:, :8]))
    with pytest.raises(ValueError, match="text_mask"):
        prior(**dict(x, text_mask=x["text_mask"][:, :5]))


def test_prior_standardisation_round_trips_unit_embeddings():
    prior = _prior()
    e = F.normalize(torch.randn(500, D) + 2.0, dim=-1)
    prior.fit_standardisation(e)
    z = prior.standardise(e)
    assert z.mean(0).abs().max() < 1e-4 and (z.std(0) - 1).abs().max() < 1e-3
    assert torch.allclose(prior.unstandardise(z), e, atol=1e-5)


def test_pick_closest_keeps_the_candidate_nearest_the_text():
    text = F.normalize(torch.randn(4, D), dim=-1)
    far = F.normalize(torch.randn(4, D), dim=-1)
    near = F.normalize(text + 0.1 * torch.randn(4, D), dim=-1)
    order = torch.tensor([0, 1, 0, 1])  # the near one first in rows 0 and 2
    cands = torch.stack(
        [
            torch.where(order[:, None] == 0, near, far),
            torch.where(order[:, None] == 0, far, near),
        ]
    )
    assert torch.equal(pick_closest(cands, text), near)


def _decoder():
    torch.manual_seed(0)
    unet = UNetConfig(
        base_channels=16, channel_mults=(1, 2), attention_levels=(1,), context_dim=16
    )
    return DecoderConfig(unet=unet, embed_dim=D, num_tokens=4, image_size=8)


def _perturb(module):
    with torch.no_grad():  # zero-initialised output layers hide every input: wake them
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_decoder_sees_the_embedding_through_both_paths():
    cfg = _decoder()
    dec = UnCLIPDecoder(cfg).eval()
    _perturb(dec)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 900])
    e1, e2 = F.normalize(torch.randn(2, 2, D), dim=-1)
    assert dec(x, t, e1).shape == (2, 3, 8, 8)
    assert dec.tokens(e1).shape == (2, 4, 16)
    base = (dec(x, t, e1) - dec(x, t, e2)).abs().max()
    assert base > 1e-3
    # path (2) alone: without the time-embedding path the output still depends on e
    with torch.no_grad():
        dec.unet.vector_proj.weight.zero_()
    assert (dec(x, t, e1) - dec(x, t, e2)).abs().max() > 1e-4
    # path (1) alone
    dec = UnCLIPDecoder(cfg).eval()
    _perturb(dec)
    with torch.no_grad():
        dec.to_tokens.weight.zero_()
    assert (dec(x, t, e1) - dec(x, t, e2)).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"image_embed must be \[B, 16\]"):
        dec(x, t, e1[:, :8])


def test_decoder_needs_cross_attention():
    unet = UNetConfig(base_channels=16, channel_mults=(1, 2))
    with pytest.raises(ValueError, match="context_dim"):
        UnCLIPDecoder(DecoderConfig(unet=unet, embed_dim=D))


def _upsampler_config():
    return UNetConfig(
        in_channels=6,
        out_channels=3,
        base_channels=16,
        channel_mults=(1, 2),
        attention_levels=(),
        mid_attention=False,
    )


def test_upsampler_has_no_attention_and_takes_either_resolution():
    with pytest.raises(ValueError, match="no attention"):
        UnCLIPUpsampler(
            UNetConfig(in_channels=6, base_channels=16, channel_mults=(1, 2))
        )
    up = UnCLIPUpsampler(_upsampler_config()).eval()
    _perturb(up)
    assert not any("attn" in n for n, _ in up.named_modules())
    x, t, low = (
        torch.randn(2, 3, 16, 16),
        torch.tensor([3, 700]),
        torch.rand(2, 3, 8, 8),
    )
    out = up(x, t, low)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, up(x, t, enlarge(low, 16)))
    # fully convolutional: a bigger image than it was built for runs too
    assert (
        up(torch.randn(1, 3, 32, 32), t[:1], torch.rand(1, 3, 16, 16)).shape[-1] == 32
    )


def test_downsample_enlarge_and_crops():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    low = downsample(x, 2)
    assert low.shape == (2, 3, 4, 4)
    assert torch.allclose(low[0, 0, 0, 0], x[0, 0, :2, :2].mean())
    flat = torch.full((1, 3, 4, 4), 0.3)
    assert torch.allclose(enlarge(flat, 8), torch.full((1, 3, 8, 8), 0.3), atol=1e-6)
    a, b = random_crops(x, x.clone(), 4, torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 4, 4) and torch.equal(a, b)  # the same place in both


def test_corrupt_blurs_only_some_conditioning_images():
    low = torch.zeros(64, 3, 8, 8)
    low[:, :, 4, 4] = 1.0  # a point: blurring lowers its peak
    cfg = UpsamplerTrainConfig(blur_prob=0.5, blur_sigma=(0.5, 0.9))
    out = corrupt(low, cfg, torch.Generator().manual_seed(0))
    blurred = out[:, 0, 4, 4] < 0.99
    assert 16 < int(blurred.sum()) < 48  # about half
    assert torch.equal(out[~blurred], low[~blurred])
    never = corrupt(low, UpsamplerTrainConfig(blur_prob=0.0), torch.Generator())
    assert torch.equal(never, low)


def test_train_upsampler_runs_and_returns_an_ema():
    up = UnCLIPUpsampler(_upsampler_config())
    cfg = UpsamplerTrainConfig(steps=3, batch_size=4, warmup=1, crop=8, factor=2)
    result = train_upsampler(
        up,
        NoiseSchedule.make("cosine", 100),
        torch.rand(6, 3, 16, 16) * 2 - 1,
        cfg,
        progress=False,
    )
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.ema is not None


class _Recorder(torch.nn.Module):
    """A model that records the conditions it is trained with."""

    def __init__(self):
        super().__init__()
        self.w, self.seen = torch.nn.Parameter(torch.zeros(())), []

    def forward(self, x, t, a, b):
        self.seen.append((a.clone(), b.clone()))
        return x * self.w


def test_train_diffusion_drops_all_conditions_of_a_row_together():
    n = 200
    a, b = torch.arange(n).float()[:, None] + 1, torch.ones(n, 2, 3)
    model = _Recorder()
    cfg = TrainConfig(steps=2, batch_size=100, p_uncond=0.3, warmup=1)
    train_diffusion(
        model,
        NoiseSchedule.make("cosine", 10),
        torch.randn(n, 2),
        config=cfg,
        progress=False,
        conditions={"a": (a, torch.zeros(1)), "b": (b, torch.zeros(2, 3))},
    )
    for got_a, got_b in model.seen:
        dropped_a = got_a[:, 0] == 0
        dropped_b = (got_b == 0).flatten(1).all(1)
        assert torch.equal(dropped_a, dropped_b) and 10 < int(dropped_a.sum()) < 50
    with pytest.raises(ValueError, match="condition 'a'"):
        train_diffusion(
            model,
            NoiseSchedule.make("cosine", 10),
            torch.randn(n, 2),
            config=cfg,
            conditions={"a": (a[:5], torch.zeros(1))},
        )


def test_slerp_is_unit_and_hits_both_ends():
    a, b = (
        F.normalize(torch.randn(3, D), dim=-1),
        F.normalize(torch.randn(3, D), dim=-1),
    )
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    assert torch.allclose(slerp(a, b, 0.3).norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_pipeline():
    torch.manual_seed(0)
    clip = CLIP(
        CLIPConfig(
            text_width=32, vision_width=32, embed_dim=D, text_layers=1, vision_layers=1
        )
    ).eval()
    prior = DiffusionPrior(
        PriorConfig(embed_dim=D, text_width=32, width=32, layers=1, heads=2)
    ).eval()
    cfg = _decoder()
    cfg.image_size = 32
    decoder = UnCLIPDecoder(cfg).eval()
    upsampler = UnCLIPUpsampler(_upsampler_config()).eval()
    for m in (prior, decoder, upsampler):
        _perturb(m)
    s = NoiseSchedule.make("cosine", 1000)
    return MiniDALLE2(
        prior=prior,
        decoder=decoder,
        upsampler=upsampler,
        clip_model=clip,
        tokenizer=scene_tokenizer(),
        prior_schedule=s,
        decoder_schedule=s,
        upsampler_schedule=s,
        prior_steps=3,
        upsampler_steps=2,
    )


def test_pipeline_text_to_image_variations_and_interpolation(tiny_pipeline):
    pipe = tiny_pipeline
    prompts = ["a red circle", "a blue square to the left of a green triangle"]
    images = pipe(prompts, num_steps=2, seed=0)
    assert images.shape == (2, 3, 64, 64) and images.abs().max() <= 1.0 + 1e-6
    assert torch.equal(images, pipe(prompts, num_steps=2, seed=0))  # seeded
    assert pipe(prompts, num_steps=2, embedding="text").shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="expected one of"):
        pipe(prompts, embedding="image")
    e = pipe.prior_embeddings(prompts, candidates=3)
    assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    variations = pipe.variations(images, n=3, num_steps=2)
    assert variations.shape == (6, 3, 64, 64)
    path = pipe.interpolate(images[:1], images[1:], steps=3, num_steps=2)
    assert path.shape == (3, 3, 64, 64)
    with pytest.raises(ValueError, match="steps must be >= 2"):
        pipe.interpolate(images[:1], images[1:], steps=1)
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        pipe.prior_embeddings(prompts, candidates=0)


def test_the_stages_run_alone_give_the_pipelines_images(tiny_pipeline):
    """The pipeline is its three numbered stages, each drawing its noise from its own
    named generator (pipelines.stage_generator): run one by one with those, they give
    the pipeline's images exactly; with another stage's generator, other images."""
    from diffusion_lib.pipelines import stage_generator

    pipe, prompts, seed = tiny_pipeline, ["a red circle", "a blue square"], 5
    whole = pipe(prompts, num_steps=2, seed=seed)
    e = pipe.prior_embeddings(prompts, generator=stage_generator(seed, "prior"))
    low = pipe.decoder_images(
        e, num_steps=2, generator=stage_generator(seed, "decoder")
    )
    up = pipe.upsample(low, generator=stage_generator(seed, "upsampler"))
    assert torch.equal(up, whole)
    wrong = pipe.decoder_images(
        e, num_steps=2, generator=stage_generator(seed, "upsampler")
    )
    assert not torch.equal(wrong, low)
    with pytest.raises(ValueError, match="unknown stage 'decode'"):
        stage_generator(seed, "decode")
    with pytest.raises(TypeError):  # components are keyword-only
        MiniDALLE2(pipe.prior, pipe.decoder)


def test_a_decoder_that_reads_the_caption_gets_it_from_the_pipeline(tiny_pipeline):
    """The paper's decoder (text conditioning): the pipeline passes the prompt's CLIP
    embedding, token states and mask beside the image embedding (null: the empty
    caption's), so the same embedding under two captions gives two images; variations
    read the empty caption."""
    from dataclasses import replace

    base = _decoder()
    cfg = replace(
        base,
        unet=replace(base.unet, glide_attention=True),
        image_size=32,
        text_conditioning=True,
        text_width=32,
    )
    torch.manual_seed(1)
    decoder = UnCLIPDecoder(cfg).eval()
    _perturb(decoder)
    pipe = copy.copy(tiny_pipeline)
    pipe.decoder = decoder
    e = F.normalize(torch.randn(2, D), dim=-1)
    red = pipe.decoder_images(e, captions=["a red circle"] * 2, num_steps=2)
    blue = pipe.decoder_images(e, captions=["a blue square"] * 2, num_steps=2)
    assert red.shape == (2, 3, 32, 32) and (red - blue).abs().max() > 1e-3
    cond, null = pipe.decoder_conditions(e, None)
    assert torch.equal(cond["text_states"], null["text_states"])  # the empty caption
    assert null["image_embed"].abs().max() == 0
    with pytest.raises(ValueError, match="one caption per embedding"):
        pipe.decoder_images(e, captions=["a red circle"], num_steps=2)
    assert pipe(["a red circle"], num_steps=2).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="reads the caption too"):
        decoder(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), e)


def test_the_decoder_is_sampled_with_its_own_prediction_type(tiny_pipeline):
    """decoder_images reads the network's output as the pipeline's
    decoder_prediction says (the retrained decoder predicts v): the same as the
    library's DDIM set up for it, and other images when read as the other type."""
    from diffusion_lib.pipelines import stage_generator
    from diffusion_lib.samplers import DDIMSampler, sample

    pipe = tiny_pipeline
    e = torch.nn.functional.normalize(torch.randn(2, D), dim=-1)
    cond, null = pipe.decoder_conditions(e)
    images = {}
    try:
        for kind in ("eps", "v"):
            pipe.decoder_prediction = kind
            images[kind] = pipe.decoder_images(e, num_steps=2, seed=3)
            by_hand = sample(
                pipe.decoder,
                DDIMSampler(pipe.decoder_schedule, prediction_type=kind),
                images[kind].shape,
                num_steps=2,
                model_kwargs=cond,
                uncond_kwargs=null,
                guidance_scale=pipe.guidance_scale,
                generator=stage_generator(3, "decoder"),
            ).x0
            assert torch.allclose(images[kind], by_hand, atol=1e-6), kind
    finally:
        pipe.decoder_prediction = "eps"
    assert (images["eps"] - images["v"]).abs().max() > 1e-2
