from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusion_lib.metrics import count_flops
from diffusion_lib.unet import (
    Attention,
    ResBlock,
    UNet,
    UNetConfig,
    count_parameters,
    record_cross_attention,
    timestep_embedding,
)

SMALL = UNetConfig(
    base_channels=16, channel_mults=(1, 2), attention_levels=(1,), heads=2
)


def randomise_zero_inits(model):
    """Zero-initialised layers hide the effect of the inputs at initialisation: give
    them weights."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return model


def test_timestep_embedding_values():
    e = timestep_embedding(torch.tensor([0, 5]), 8)
    assert e.shape == (2, 8)
    torch.testing.assert_close(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert e[1, 0].item() == pytest.approx(
        torch.cos(torch.tensor(5.0)).item(), abs=1e-6
    )  # lowest index: frequency 1
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(torch.tensor([1]), 7)


def test_unet_shapes_and_identity_init():
    model = UNet(SMALL)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([1, 2, 3])
    out = model(x, t)
    assert out.shape == x.shape
    assert (
        torch.count_nonzero(out) == 0
    )  # zero-initialised output layer: starts by predicting 0
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(3, 1, 16, 16), t)


def test_label_conditioning_and_null_labels():
    model = UNet(UNetConfig(**{**SMALL.to_dict(), "label_sizes": (3, 6)}))
    randomise_zero_inits(model)
    assert model.null_labels(2).tolist() == [[3, 6], [3, 6]]
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 10])
    a = model(x, t, labels=torch.tensor([[0, 1], [0, 1]]))
    b = model(x, t, labels=torch.tensor([[2, 5], [2, 5]]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(model(x, t), model(x, t, labels=model.null_labels(2)))
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        model(x, t, labels=torch.zeros(2, 3, dtype=torch.long))


def test_cross_attention_and_lora_target_names():
    model = UNet(UNetConfig(**{**SMALL.to_dict(), "context_dim": 12}))
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    assert {"to_q", "to_k", "to_v", "to_out"} <= names
    randomise_zero_inits(model)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 1])
    a = model(x, t, context=torch.randn(2, 5, 12))
    b = model(x, t, context=torch.randn(2, 5, 12))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="context"):
        model(x, t)


def test_attention_matches_a_manual_computation():
    attn = Attention(8, heads=2, dim_head=4)
    x = torch.randn(1, 5, 8)
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 2.0, dim=-1)
        heads.append(w @ v[..., sl])
    torch.testing.assert_close(
        attn(x), attn.to_out[0](torch.cat(heads, -1)), atol=1e-5, rtol=1e-5
    )


def test_attention_probabilities_are_what_forward_uses():
    attn = Attention(8, context_dim=6, heads=2, dim_head=4)
    x, context = torch.randn(3, 5, 8), torch.randn(3, 7, 6)
    probs = attn.probabilities(x, context)
    assert probs.shape == (3, 2, 5, 7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, 5))
    v = attn.to_v(context).unflatten(-1, (2, 4)).transpose(1, 2)  # [B, heads, L, d]
    merged = (probs @ v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(attn(x, context), attn.to_out[0](merged))


def test_record_cross_attention_sees_every_layer_and_cleans_up():
    cfg = UNetConfig(
        **{**SMALL.to_dict(), "context_dim": 12, "attention_levels": (0, 1)}
    )
    model = randomise_zero_inits(UNet(cfg)).eval()
    x, t, context = torch.randn(2, 3, 8, 8), torch.tensor([3, 3]), torch.randn(2, 5, 12)
    with record_cross_attention(model) as maps:
        out = model(x, t, context=context)
    layers = [m for m in model.modules() if getattr(m, "attn2", None) is not None]
    assert len(maps) == len(layers) >= 3  # down, middle and up blocks
    assert {p.shape[-2] for _, p in maps} == {64, 16}  # 8x8 and 4x4 positions
    for _, probs in maps:
        assert probs.shape[:2] == (2, 2) and probs.shape[-1] == 5
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert all(not layer.attn2._forward_hooks for layer in layers)  # hooks removed
    torch.testing.assert_close(model(x, t, context=context), out)  # unchanged output
    with pytest.raises(ValueError, match="no cross-attention"):
        with record_cross_attention(UNet(SMALL)):
            pass


def test_resblock_uses_the_embedding():
    block = ResBlock(4, 8, emb_dim=6, groups=2)
    torch.nn.init.normal_(block.conv2.weight)
    x = torch.randn(1, 4, 4, 4)
    assert block(x, torch.zeros(1, 6)).shape == (1, 8, 4, 4)
    assert not torch.allclose(block(x, torch.zeros(1, 6)), block(x, torch.ones(1, 6)))


def test_flops_are_deterministic_and_scale_with_resolution():
    model = UNet(SMALL)
    flops = lambda res: count_flops(
        model, torch.randn(1, 3, res, res), torch.tensor([0])
    )
    assert flops(16) == flops(16)
    # convolutions dominate: ~4x the pixels, ~4x the FLOPs (attention grows faster)
    assert 3.5 < flops(32) / flops(16) < 5
    assert count_parameters(model) > 0


def test_attention_flops_are_counted():
    """PyTorch's FlopCounterMode counts its fused CPU attention as 0 FLOPs unless told
    the formula, which diffusion_lib.compute registers; metrics.count_flops runs the
    reference kernel: both count the same two matrix products."""
    import diffusion_lib.compute  # noqa: F401  (registers the fused kernel's formula)

    q = torch.randn(2, 4, 64, 32)  # [B, heads, N, dim_head]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with FlopCounterMode(display=False) as counter:
        sdpa(q, q, q)
    fused = counter.get_total_flops()
    # two matrix products of [N, d] x [d, N] and [N, N] x [N, d] per head
    assert count_flops(sdpa, q, q, q) == 2 * (2 * 2 * 4 * 64 * 64 * 32) == fused


def test_config_round_trip():
    cfg = UNetConfig(label_sizes=(3, 6, 2, 5), attention_levels=(2,))
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(UNetConfig(channel_mults=(1, 2), attention_levels=(2,)))


def test_unet_rejects_sizes_it_cannot_halve():
    model = UNet(SMALL)  # two levels: one halving
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.randn(1, 3, 15, 16), torch.tensor([1]))
    deep = UNet(
        UNetConfig(base_channels=8, channel_mults=(1, 2, 2), attention_levels=())
    )
    with pytest.raises(ValueError, match=r"multiples of 4 .*\(18, 16\)"):
        deep(torch.randn(1, 3, 18, 16), torch.tensor([1]))
    assert deep(torch.randn(1, 3, 20, 12), torch.tensor([1])).shape == (1, 3, 20, 12)


def test_labels_must_be_integer_with_one_column_per_attribute():
    model = UNet(UNetConfig(**{**SMALL.to_dict(), "label_sizes": (3, 6)}))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 10])
    with pytest.raises(ValueError, match="integer"):
        model(x, t, labels=torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\[B, 2\] = \[2, 2\]"):
        model(x, t, labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, 2\] = \[2, 2\]"):
        model(x, t, labels=torch.zeros(3, 2, dtype=torch.long))
    model(x, t, labels=model.null_labels(2))  # the null index stays valid (guidance)


def _renamed_to_old_keys(state: dict) -> dict:
    """A state dict as written before Attention.to_out became a ModuleList."""
    return {k.replace("to_out.0.", "to_out."): v for k, v in state.items()}


def test_old_state_dicts_with_a_plain_to_out_still_load():
    cfg = UNetConfig(**{**SMALL.to_dict(), "context_dim": 12, "label_sizes": (3,)})
    model = randomise_zero_inits(UNet(cfg)).eval()
    old = _renamed_to_old_keys(model.state_dict())
    assert any(k.endswith("to_out.weight") for k in old)
    assert not any("to_out.0" in k for k in old)
    fresh = UNet(cfg).eval()
    fresh.load_state_dict(old)  # strict: every key must map
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    kwargs = {"labels": torch.tensor([[0], [2]]), "context": torch.randn(2, 5, 12)}
    torch.testing.assert_close(
        fresh(x, t, **kwargs), model(x, t, **kwargs), rtol=0, atol=0
    )


def test_the_shipped_checkpoint_uses_the_to_out_0_names():
    """The shipped model was re-exported after to_out became a ModuleList (older
    state dicts still load: see test_old_state_dicts_with_a_plain_to_out_still_load)."""
    from diffusion_lib import pretrained
    from diffusion_lib.checkpoints import load_checkpoint

    state, info = load_checkpoint(pretrained.checkpoint_path("shapes-ddpm"))
    assert any(k.endswith("attn1.to_out.0.weight") for k in state)
    assert not any(k.endswith("to_out.weight") for k in state)
    UNet(UNetConfig.from_dict(info["config"])).load_state_dict(state, strict=True)


def test_peft_lora_wraps_all_four_attention_projections():
    """The usual LoRA targets name "to_out.0": it exists only when to_out is a
    ModuleList (projection, dropout) as in diffusers."""
    import peft
    from peft.tuners.lora import LoraLayer

    model = UNet(UNetConfig(**{**SMALL.to_dict(), "context_dim": 12}))
    n_attention = sum(isinstance(m, Attention) for m in model.modules())
    assert n_attention >= 4  # self- and cross-attention, at one level and the middle
    config = peft.LoraConfig(
        r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
    )
    model = peft.inject_adapter_in_model(config, model)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert len(wrapped) == 4 * n_attention
    assert {n.rsplit(".", 1)[-1] for n in wrapped} == {"to_q", "to_k", "to_v", "0"}
    assert all(n.endswith(("to_q", "to_k", "to_v", "to_out.0")) for n in wrapped)
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([5])
    assert model(x, t, context=torch.randn(1, 3, 12)).shape == x.shape


def test_glide_attention_reads_the_unmasked_context_and_resblocks_resample():
    """GLIDE's block: a masked (padding) token changes nothing, an unmasked one does;
    with glide_attention the levels with attention re-sample with ResBlocks."""
    from diffusion_lib.unet import GlideAttention, ResBlock

    torch.manual_seed(0)
    block = GlideAttention(16, context_dim=8, heads=2, groups=4)
    x, ctx = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    other = ctx.clone()
    other[:, 2] = 5.0  # the padding token
    torch.testing.assert_close(block(x, ctx, mask), block(x, other, mask))
    other[:, 1] = 5.0  # a real token
    assert not torch.allclose(block(x, ctx, mask), block(x, other, mask))
    with pytest.raises(ValueError, match="context_mask must be"):
        block(x, ctx, mask[:, :2])
    up = ResBlock(16, 16, 0, groups=4, resample="up")
    assert up(x).shape == (2, 16, 8, 8)
    assert ResBlock(16, 16, 0, groups=4, resample="down")(x).shape == (2, 16, 2, 2)

    cfg = UNetConfig(
        base_channels=8,
        channel_mults=(1, 2),
        attention_levels=(1,),
        context_dim=8,
        groups=4,
        glide_attention=True,
    )
    model = UNet(cfg)
    assert isinstance(model.up[2], ResBlock) and model.up[2].resample == "up"
    out = model(
        torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), context=ctx, context_mask=mask
    )
    assert out.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="not both"):
        UNet(replace(cfg, spatial_transformer=True))
    with pytest.raises(ValueError, match="context_mask needs glide_attention"):
        UNet(replace(cfg, glide_attention=False))(
            torch.randn(2, 3, 8, 8),
            torch.tensor([1, 2]),
            context=ctx,
            context_mask=mask,
        )
