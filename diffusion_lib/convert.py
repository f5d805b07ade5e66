"""The course's modules as Stable Diffusion's: configurations and state-dict key maps.

The mini SD is built block for block like SD (chapter 8 builds each block by hand), so
converting it to 🤗 diffusers' `UNet2DConditionModel` and `AutoencoderKL` and to 🤗
transformers' `CLIPTextModel` is a renaming of state-dict keys, in both directions, as
diffusers' own conversion scripts do for the original LDM checkpoints:

* `unet_config` / `vae_config` / `clip_text_config` give the other library's
  configuration for a course configuration (and refuse one that has no equivalent);
* `unet_key_map` / `vae_key_map` / `clip_key_map` give {course key: diffusers key};
* `to_diffusers_state` renames a course state dict, `from_diffusers_state` renames back,
  and both fail when a key is missing, left over or of the wrong shape.

Two things are more than a renaming, and both are exact:

* token ids. The course's tokenizer puts <pad>, <start>, <end> at ids 0, 1, 2, before
  the words; transformers' CLIP reads an end-of-text id of 2 as a legacy checkpoint
  and then pools the *largest* id of each caption instead of the end token. So the
  exported vocabulary lists the words first and the three special tokens last (as
  real CLIP, whose <|endoftext|> is its largest id): the token-embedding rows are
  permuted accordingly (`hf_token_order`).
* biases the course leaves out. CLIP's query, key and value projections have biases
  and its patch embedding has none; the course's text and image transformers have no
  query/key/value biases (exported as zeros) and a patch-embedding bias (added to the
  patches' position embeddings, which it meets before anything else).
"""

from __future__ import annotations

import math

import torch

from .clip import SPECIAL_TOKENS, CLIPConfig
from .unet import UNetConfig
from .vae import VAEConfig

# ----------------------------------------------------------------------------- UNet


def _check_groups(channels, groups: int, what: str) -> None:
    # the course's GroupNorm takes gcd(groups, channels) groups; diffusers takes
    # norm_num_groups everywhere: equal only when groups divides every width
    bad = sorted({c for c in channels if c % groups})
    if bad:
        raise ValueError(
            f"{what}: groups={groups} must divide every channel count to export "
            f"(diffusers uses norm_num_groups everywhere); {bad} are not multiples"
        )


def unet_config(cfg: UNetConfig, sample_size: int) -> dict:
    """diffusers' UNet2DConditionModel configuration for a mini-SD UNet."""
    problems = []
    if not cfg.spatial_transformer:
        problems.append("spatial_transformer=True (SD's attention blocks)")
    if not cfg.context_dim:
        problems.append("a context_dim (cross-attention to text)")
    if cfg.label_sizes or cfg.vector_dim:
        problems.append("no label_sizes and no vector_dim")
    if not cfg.mid_attention:
        problems.append("mid_attention=True")
    if problems:
        raise ValueError(
            "this UNet has no Stable Diffusion equivalent; it needs "
            + ", ".join(problems)
        )
    return {
        **_condition_unet_common(
            cfg, sample_size, "CrossAttn", "UNetMidBlock2DCrossAttn"
        ),
        # diffusers' historical name: for SD's UNet this is the number of heads
        "attention_head_dim": cfg.heads,
        "use_linear_projection": False,
    }


def _condition_unet_common(cfg: UNetConfig, sample_size, attention, mid) -> dict:
    """What UNet2DConditionModel's configuration of every course UNet shares: sizes,
    the block types (attention: their prefix at the levels with attention, mid: the
    middle block's type), norms, and the [cos, sin] time embedding."""
    widths = [cfg.base_channels * m for m in cfg.channel_mults]
    _check_groups(widths, cfg.groups, "UNet")
    attn = [lvl in cfg.attention_levels for lvl in range(len(widths))]
    return {
        "sample_size": sample_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": [
            f"{attention}DownBlock2D" if a else "DownBlock2D" for a in attn
        ],
        "mid_block_type": mid,
        "up_block_types": [
            f"{attention}UpBlock2D" if a else "UpBlock2D" for a in reversed(attn)
        ],
        "block_out_channels": widths,
        "layers_per_block": cfg.num_res_blocks,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "dropout": cfg.dropout,
        "act_fn": "silu",
        "norm_num_groups": cfg.groups,
        "norm_eps": 1e-5,
        "cross_attention_dim": cfg.context_dim,
        "flip_sin_to_cos": True,  # the course's embedding is [cos, sin]
        "freq_shift": 0,
    }


def decoder_configs(cfg) -> tuple[dict, dict]:
    """diffusers' configurations of the unCLIP decoder (Karlo's layout, as in
    UnCLIPPipeline): (UNet2DConditionModel, UnCLIPTextProjModel), for a course decoder
    with GLIDE attention and the paper's text conditioning (unclip.DecoderConfig)."""
    unet = cfg.unet
    problems = []
    if not unet.glide_attention:
        problems.append("glide_attention=True (GLIDE's attention blocks)")
    if not cfg.text_conditioning:
        problems.append("text_conditioning=True (the paper's text pathway)")
    if not unet.mid_attention or unet.label_sizes:
        problems.append("mid_attention=True and no label_sizes")
    if problems:
        raise ValueError(
            "this decoder has no diffusers unCLIP equivalent; it needs "
            + ", ".join(problems)
        )
    if cfg.text_width != cfg.embed_dim:
        raise ValueError(
            "diffusers' UnCLIPTextProjModel projects the token states from the "
            f"embedding's width: text_width {cfg.text_width} must be embed_dim "
            f"{cfg.embed_dim}"
        )
    widths = [unet.base_channels * m for m in unet.channel_mults]
    attended = [widths[lvl] for lvl in unet.attention_levels] + [widths[-1]]
    head_dims = {w // unet.heads for w in attended}
    if len(head_dims) != 1:
        # diffusers reads attention_head_dim as every block's head width (and an up
        # block reads the down blocks' entry): one value must fit them all
        raise ValueError(
            f"every attention block needs the same head width; got {sorted(head_dims)}"
        )
    unet_config = {
        **_condition_unet_common(
            unet, cfg.image_size, "SimpleCrossAttn", "UNetMidBlock2DSimpleCrossAttn"
        ),
        "attention_head_dim": head_dims.pop(),  # SimpleCrossAttn: the head's width
        "class_embed_type": "identity",  # the CLIP embeddings, projected outside
        "resnet_time_scale_shift": "default",
        "only_cross_attention": False,
    }
    text_proj_config = {
        "clip_extra_context_tokens": cfg.num_tokens,
        "clip_embeddings_dim": cfg.embed_dim,
        "time_embed_dim": unet.base_channels * 4,
        "cross_attention_dim": unet.context_dim,
    }
    return unet_config, text_proj_config


# the text projection's layers that read an embedding, which the course multiplies by
# sqrt(embed_dim) first (UnCLIPTextProj)
_SCALED_INPUTS = (
    "embedding_proj.weight",
    "clip_image_embeddings_project_to_time_embeddings.weight",
    "clip_extra_context_tokens_proj.weight",
)


def decoder_to_diffusers_state(state: dict, cfg) -> tuple[dict, dict]:
    """A course decoder's state as (UNet2DConditionModel state, UnCLIPTextProjModel
    state). Beyond renaming: the sqrt(embed_dim) by which the course multiplies the
    embeddings goes into the weights that read them, and the learned null embedding
    of diffusers' guidance is zero, the course's null."""
    unet = rename_state(
        {k[5:]: v for k, v in state.items() if k.startswith("unet.")},
        unet_key_map(cfg.unet),
        "decoder UNet",
    )
    proj = {k[10:]: v for k, v in state.items() if k.startswith("text_proj.")}
    for name in _SCALED_INPUTS:
        proj[name] = proj[name] * math.sqrt(cfg.embed_dim)
    weight = proj["embedding_proj.weight"]
    proj["learned_classifier_free_guidance_embeddings"] = weight.new_zeros(
        cfg.embed_dim
    )
    return unet, proj


def _resblock_keys(prefix: str, target: str) -> dict:
    names = {
        "norm1": "norm1",
        "conv1": "conv1",
        "emb_proj": "time_emb_proj",
        "norm2": "norm2",
        "conv2": "conv2",
        "skip": "conv_shortcut",
    }
    return {f"{prefix}.{a}": f"{target}.{b}" for a, b in names.items()}


def unet_key_map(cfg: UNetConfig) -> dict[str, str]:
    """{course module prefix: diffusers module prefix} for a UNet (SpatialTransformer
    blocks keep their inner names, which are diffusers')."""
    out = {
        "time_mlp.0": "time_embedding.linear_1",
        "time_mlp.2": "time_embedding.linear_2",
        "conv_in": "conv_in",
        "norm_out": "conv_norm_out",
        "conv_out": "conv_out",
    }
    last, i = len(cfg.channel_mults) - 1, 0
    for level in range(last + 1):
        for j in range(cfg.num_res_blocks):
            block = f"down_blocks.{level}"
            out.update(_resblock_keys(f"down.{i}.0", f"{block}.resnets.{j}"))
            if level in cfg.attention_levels:
                out[f"down.{i}.1"] = f"{block}.attentions.{j}"
            i += 1
        if level < last:
            resblock = cfg.glide_attention and level in cfg.attention_levels
            target = f"down_blocks.{level}.downsamplers.0"
            if resblock:  # GLIDE's layout: a re-sampling ResBlock
                out.update(_resblock_keys(f"down.{i}", target))
            else:
                out[f"down.{i}"] = f"{target}.conv"
            i += 1
    out.update(_resblock_keys("mid.0", "mid_block.resnets.0"))
    if cfg.mid_attention:
        out["mid.1"] = "mid_block.attentions.0"
    second = "mid.2" if cfg.mid_attention else "mid.1"
    out.update(_resblock_keys(second, "mid_block.resnets.1"))
    i = 0
    for k, level in enumerate(reversed(range(last + 1))):
        for j in range(cfg.num_res_blocks + 1):
            out.update(_resblock_keys(f"up.{i}.0", f"up_blocks.{k}.resnets.{j}"))
            if level in cfg.attention_levels:
                out[f"up.{i}.1"] = f"up_blocks.{k}.attentions.{j}"
            i += 1
        if level > 0:
            target = f"up_blocks.{k}.upsamplers.0"
            if cfg.glide_attention and level in cfg.attention_levels:
                out.update(_resblock_keys(f"up.{i}", target))
            else:
                out[f"up.{i}.1"] = f"{target}.conv"
            i += 1
    return out


def controlnet_config(controlnet, sample_size: int) -> dict:
    """diffusers' ControlNetModel configuration for a course ControlNet whose hint
    encoder has the released layout (hint_widths set)."""
    if controlnet.hint_widths is None:
        raise ValueError(
            "this ControlNet has the course's first hint encoder, which diffusers' "
            "ControlNetModel cannot hold; retrain it with hint_widths set"
        )
    unet = unet_config(controlnet.encoder.config, sample_size)
    drop = ("up_block_types", "out_channels", "sample_size", "dropout")
    return {
        **{k: v for k, v in unet.items() if k not in drop},
        "conditioning_channels": controlnet.control_channels,
        "conditioning_embedding_out_channels": list(controlnet.hint_widths),
    }


def controlnet_key_map(controlnet) -> dict[str, str]:
    """{course prefix: diffusers ControlNetModel prefix}."""
    cfg = controlnet.encoder.config
    unet = unet_key_map(cfg)
    out = {
        f"encoder.{k}": v
        for k, v in unet.items()
        if not k.startswith(("up.", "norm_out", "conv_out"))
    }
    out["hint.conv_in"] = "controlnet_cond_embedding.conv_in"
    out["hint.blocks"] = "controlnet_cond_embedding.blocks"
    out["hint.conv_out"] = "controlnet_cond_embedding.conv_out"
    out["zero_convs"] = "controlnet_down_blocks"
    out["mid_zero"] = "controlnet_mid_block"
    return out


def unet2d_config(cfg: UNetConfig, sample_size: int) -> dict:
    """diffusers' UNet2DModel configuration for a course UNet without attention or
    conditioning other than the timestep (the mini DALL-E 2's upsampler: its input is
    the noisy image and the enlarged low-resolution one, concatenated)."""
    if (
        cfg.attention_levels
        or cfg.mid_attention
        or cfg.label_sizes
        or cfg.vector_dim
        or cfg.context_dim
    ):
        raise ValueError(
            "only a UNet without attention, labels, vector or context maps to this "
            "UNet2DModel layout"
        )
    widths = [cfg.base_channels * m for m in cfg.channel_mults]
    _check_groups(widths, cfg.groups, "UNet")
    n = len(widths)
    return {
        "sample_size": sample_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["DownBlock2D"] * n,
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["UpBlock2D"] * n,
        "block_out_channels": widths,
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": cfg.dropout,
        "act_fn": "silu",
        "norm_num_groups": cfg.groups,
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "default",
        "add_attention": False,
    }


# ---------------------------------------------------------------------------- prior


def prior_config(cfg) -> dict:
    """diffusers' PriorTransformer configuration for the mini DALL-E 2's prior (a
    prior.PriorConfig): [caption tokens, text embedding, timestep, noisy image
    embedding, query] through a causal transformer, the query's output projected to
    the predicted embedding."""
    from .prior import DiffusionPrior

    if cfg.text_width != cfg.embed_dim:
        raise ValueError(
            "PriorTransformer projects the caption's token states with "
            f"Linear(embedding_dim={cfg.embed_dim}, ...): it needs text_width == "
            f"embed_dim, got text_width={cfg.text_width}"
        )
    return {
        "num_attention_heads": cfg.heads,
        "attention_head_dim": cfg.width // cfg.heads,
        "num_layers": cfg.layers,
        "embedding_dim": cfg.embed_dim,
        "num_embeddings": cfg.context_length,
        "additional_embeddings": DiffusionPrior.EXTRA_TOKENS,
        "dropout": 0.0,
        "time_embed_act_fn": "silu",
        "norm_in_type": None,
        "embedding_proj_norm_type": None,
        "encoder_hid_proj_type": "linear",
        "added_emb_type": "prd",  # the final query token
        "time_embed_dim": cfg.width,
        "embedding_proj_dim": cfg.embed_dim,
        "clip_embed_dim": cfg.embed_dim,
    }


def prior_key_map(cfg) -> dict[str, str]:
    """{course prefix: PriorTransformer prefix}."""
    out = {
        "text_proj": "encoder_hidden_states_proj",
        "text_embed_proj": "embedding_proj",
        "time_mlp.0": "time_embedding.linear_1",
        "time_mlp.2": "time_embedding.linear_2",
        "x_proj": "proj_in",
        "query": "prd_embedding",
        "positional_embedding": "positional_embedding",
        "ln_final": "norm_out",
        "out": "proj_to_clip_embeddings",
        "embed_mean": "clip_mean",
        "embed_std": "clip_std",
    }
    for i in range(cfg.layers):
        a, b = f"blocks.{i}", f"transformer_blocks.{i}"
        out.update(
            {
                f"{a}.ln_1": f"{b}.norm1",
                f"{a}.attn": f"{b}.attn1",  # to_q, to_k, to_v, to_out.0 as they are
                f"{a}.ln_2": f"{b}.norm3",
                f"{a}.mlp.0": f"{b}.ff.net.0.proj",
                f"{a}.mlp.2": f"{b}.ff.net.2",
            }
        )
    return out


_PRIOR_SHAPES = {  # PriorTransformer keeps these with leading singleton dimensions
    "positional_embedding": 1,
    "prd_embedding": 2,
    "clip_mean": 1,
    "clip_std": 1,
}


def prior_to_diffusers_state(state: dict, cfg) -> dict:
    """The prior's state dict as PriorTransformer's: renamed, four tensors given
    leading dimensions of size 1, zero query/key/value biases (the course has none)."""
    out = rename_state(dict(state), prior_key_map(cfg), "prior")
    for key, dims in _PRIOR_SHAPES.items():
        out[key] = out[key].reshape((1,) * dims + tuple(out[key].shape))
    for key, value in list(out.items()):
        if key.endswith(("to_q.weight", "to_k.weight", "to_v.weight")):
            out[key[: -len("weight")] + "bias"] = torch.zeros(value.shape[0])
    return out


# ------------------------------------------------------------------------------ VAE


def vae_config(cfg: VAEConfig, sample_size: int) -> dict:
    """diffusers' AutoencoderKL configuration for a course VAE in SD's layout."""
    if not cfg.sd_layout:
        raise ValueError(
            "this VAE was built in the course's first layout (sd_layout=False): its "
            "downsampling pads all four edges, which SD's AutoencoderKL cannot "
            "reproduce; retrain it with sd_layout=True"
        )
    _check_groups(cfg.channels, cfg.groups, "VAE")
    n = len(cfg.channels)
    return {
        "sample_size": sample_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.in_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(cfg.channels),
        "layers_per_block": cfg.blocks_per_level,
        "act_fn": "silu",
        "latent_channels": cfg.latent_channels,
        "norm_num_groups": cfg.groups,
        "scaling_factor": cfg.scaling_factor,
        "force_upcast": False,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
    }


def _middle_keys(prefix: str, target: str) -> dict:
    out = _resblock_keys(f"{prefix}.mid.0", f"{target}.mid_block.resnets.0")
    out.update(_resblock_keys(f"{prefix}.mid.2", f"{target}.mid_block.resnets.1"))
    attn = f"{target}.mid_block.attentions.0"
    out[f"{prefix}.mid.1.norm"] = f"{attn}.group_norm"
    for p in ("to_q", "to_k", "to_v", "to_out.0"):
        out[f"{prefix}.mid.1.attn1.{p}"] = f"{attn}.{p}"
    return out


def vae_key_map(cfg: VAEConfig) -> dict[str, str]:
    """{course module prefix: diffusers module prefix} for a VAE in SD's layout."""
    out = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    n = len(cfg.channels)
    for side, blocks, per in (
        ("encoder", "down_blocks", cfg.blocks_per_level),
        ("decoder", "up_blocks", cfg.blocks_per_level + 1),
    ):
        for a, b in (("conv_in", "conv_in"), ("norm_out", "conv_norm_out")):
            out[f"{side}.{a}"] = f"{side}.{b}"
        out[f"{side}.conv_out"] = f"{side}.conv_out"
        out.update(_middle_keys(side, side))
        for i in range(n):
            for j in range(per):
                out.update(
                    _resblock_keys(
                        f"{side}.levels.{i}.{j}", f"{side}.{blocks}.{i}.resnets.{j}"
                    )
                )
            if i < n - 1:
                if side == "encoder":
                    out[f"encoder.down.{i}"] = (
                        f"encoder.down_blocks.{i}.downsamplers.0.conv"
                    )
                else:
                    out[f"decoder.up.{i}"] = f"decoder.up_blocks.{i}.upsamplers.0.conv"
    return out


# ----------------------------------------------------------------------------- CLIP


def hf_token_order(vocab_size: int) -> torch.Tensor:
    """course id of each exported id: the words (course ids 3...) first, then <pad>,
    <start>, <end> (course ids 0, 1, 2)."""
    specials = len(SPECIAL_TOKENS)
    return torch.cat([torch.arange(specials, vocab_size), torch.arange(specials)])


def hf_token_ids(vocab_size: int) -> dict[str, int]:
    """The exported ids of the special tokens."""
    first = vocab_size - len(SPECIAL_TOKENS)
    return {name: first + i for i, name in enumerate(SPECIAL_TOKENS)}


def clip_text_config(cfg: CLIPConfig, vocab_size: int | None = None) -> dict:
    """transformers' CLIPTextConfig (as keyword arguments) for the course CLIP's text
    transformer; vocab_size overrides cfg's (a tokenizer with added words)."""
    vocab = vocab_size or cfg.vocab_size
    ids = hf_token_ids(vocab)
    return {
        "vocab_size": vocab,
        "hidden_size": cfg.text_width,
        "intermediate_size": 4 * cfg.text_width,
        "num_hidden_layers": cfg.text_layers,
        "num_attention_heads": cfg.text_heads,
        "max_position_embeddings": cfg.context_length,
        "hidden_act": "gelu",  # the course's nn.GELU (exact), not quick_gelu
        "layer_norm_eps": 1e-5,
        "projection_dim": cfg.embed_dim,
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<start>"],
        "eos_token_id": ids["<end>"],
    }


def clip_vision_config(cfg: CLIPConfig) -> dict:
    """transformers' CLIPVisionConfig for the course CLIP's image transformer."""
    return {
        "hidden_size": cfg.vision_width,
        "intermediate_size": 4 * cfg.vision_width,
        "num_hidden_layers": cfg.vision_layers,
        "num_attention_heads": cfg.vision_heads,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "num_channels": 3,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": cfg.embed_dim,
    }


def _layer_keys(prefix: str, target: str) -> dict:
    names = {
        "ln_1": "layer_norm1",
        "attn.to_q": "self_attn.q_proj",
        "attn.to_k": "self_attn.k_proj",
        "attn.to_v": "self_attn.v_proj",
        "attn.to_out.0": "self_attn.out_proj",
        "ln_2": "layer_norm2",
        "mlp.0": "mlp.fc1",
        "mlp.2": "mlp.fc2",
    }
    return {f"{prefix}.{a}": f"{target}.{b}" for a, b in names.items()}


def clip_key_map(cfg: CLIPConfig, vision: bool = True) -> dict[str, str]:
    """{course key or prefix: transformers key or prefix} for a course CLIP (keys of
    transformers' CLIPModel; the text tower alone drops "text_projection")."""
    out = {
        "text.token_embedding": "text_model.embeddings.token_embedding",
        "text.positional_embedding": "text_model.embeddings.position_embedding.weight",
        "text.ln_final": "text_model.final_layer_norm",
        "text.projection": "text_projection",
    }
    for i in range(cfg.text_layers):
        out.update(_layer_keys(f"text.blocks.{i}", f"text_model.encoder.layers.{i}"))
    if vision:
        emb = "vision_model.embeddings"
        out.update(
            {
                "visual.patch_embed.weight": f"{emb}.patch_embedding.weight",
                "visual.class_embedding": f"{emb}.class_embedding",
                "visual.positional_embedding": f"{emb}.position_embedding.weight",
                "visual.ln_pre": "vision_model.pre_layrnorm",  # transformers' spelling
                "visual.ln_post": "vision_model.post_layernorm",
                "visual.projection": "visual_projection",
                "logit_scale": "logit_scale",
            }
        )
        for i in range(cfg.vision_layers):
            out.update(
                _layer_keys(f"visual.blocks.{i}", f"vision_model.encoder.layers.{i}")
            )
    return out


# ------------------------------------------------------------------------- renaming


def _rename(key: str, prefixes: dict[str, str]) -> str | None:
    # the longest prefix of whole dotted components that the map knows
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in prefixes:
            return prefixes[head] + key[len(head) :]
    return None


def rename_state(state: dict, prefixes: dict[str, str], what: str) -> dict:
    """Rename every key of `state` by the longest matching prefix of `prefixes`; a key
    no prefix covers is an error (nothing is dropped silently)."""
    out, unmapped = {}, []
    for key, value in state.items():
        new = _rename(key, prefixes)
        if new is None:
            unmapped.append(key)
        else:
            out[new] = value
    if unmapped:
        raise KeyError(
            f"{what}: no mapping for {len(unmapped)} keys, e.g. {unmapped[:5]}"
        )
    return out


def check_same_keys(state: dict, reference: dict, what: str) -> None:
    """Fail unless `state` has exactly `reference`'s keys with the same shapes."""
    missing = sorted(set(reference) - set(state))
    extra = sorted(set(state) - set(reference))
    shapes = [
        (k, tuple(state[k].shape), tuple(reference[k].shape))
        for k in sorted(set(state) & set(reference))
        if state[k].shape != reference[k].shape
    ]
    if missing or extra or shapes:
        raise ValueError(
            f"{what}: {len(missing)} missing keys {missing[:5]}, {len(extra)} "
            f"unexpected keys {extra[:5]}, {len(shapes)} shape mismatches {shapes[:5]}"
        )


def invert(prefixes: dict[str, str]) -> dict[str, str]:
    out = {b: a for a, b in prefixes.items()}
    if len(out) != len(prefixes):
        raise ValueError("the key map is not one to one")
    return out


def clip_to_hf_state(state: dict, cfg: CLIPConfig, vision: bool = True) -> dict:
    """A course CLIP state dict (or its text tower's, keys "text.*") as transformers'
    CLIPModel keys: renamed, token rows in exported order, zero q/k/v biases, the
    patch bias folded into the position embeddings."""
    state = dict(state)
    vocab = state["text.token_embedding.weight"].shape[0]
    state["text.token_embedding.weight"] = state["text.token_embedding.weight"][
        hf_token_order(vocab)
    ]
    if vision:
        bias = state.pop("visual.patch_embed.bias")
        pos = state["visual.positional_embedding"].clone()
        pos[1:] += bias  # every patch token gets the bias, the class token does not
        state["visual.positional_embedding"] = pos
    keys = clip_key_map(cfg, vision)
    out = rename_state(state, keys, "CLIP")
    for key, value in list(out.items()):
        if key.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            out[key[: -len("weight")] + "bias"] = torch.zeros(value.shape[0])
    return out


def clip_from_hf_state(state: dict, cfg: CLIPConfig, vision: bool = True) -> dict:
    """The inverse of clip_to_hf_state. Refuses a CLIP whose q/k/v biases are not zero
    (the course's attention has none)."""
    state = dict(state)
    for key in [
        k for k in state if k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))
    ]:
        bias = state.pop(key)
        if bias.abs().max() > 0:
            raise ValueError(
                f"{key} is not zero: this CLIP has query/key/value biases, which the "
                "course's attention does not have"
            )
    state.pop("text_model.embeddings.position_ids", None)
    state.pop("vision_model.embeddings.position_ids", None)
    out = rename_state(state, invert(clip_key_map(cfg, vision)), "CLIP")
    vocab = out["text.token_embedding.weight"].shape[0]
    order = hf_token_order(vocab)
    rows = torch.empty_like(out["text.token_embedding.weight"])
    rows[order] = out["text.token_embedding.weight"]
    out["text.token_embedding.weight"] = rows
    if vision:
        pos = out["visual.positional_embedding"]
        # the fold is not undone: the course gets a zero patch bias and the folded
        # position embeddings, which compute the same function
        out["visual.patch_embed.bias"] = torch.zeros(pos.shape[1])
    return out


# ------------------------------------------------------------------------ tokenizer


def hf_tokenizer(tokenizer):
    """The course's WordTokenizer as a transformers fast tokenizer
    (`PreTrainedTokenizerFast` over a `tokenizers` word-level model): the same words,
    the same lower-casing, "center" read as "centre", punctuation dropped, <start>
    ... <end> around every caption and <pad> to the context length, with ids in the
    exported order (words first, hf_token_order). A word outside the vocabulary is
    an error ("Missing [UNK] token": the vocabulary has no <unk>), as in the course."""
    from tokenizers import (
        Regex,
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    words = list(tokenizer.vocabulary)
    vocab = {w: i for i, w in enumerate(words)}
    ids = hf_token_ids(len(words) + len(SPECIAL_TOKENS))
    vocab.update(ids)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace("center", "centre")]
    )
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("[^a-z]+"), behavior="removed")
    backend.post_processor = processors.TemplateProcessing(
        single="<start> $A <end>",
        special_tokens=[("<start>", ids["<start>"]), ("<end>", ids["<end>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<start>",
        eos_token="<end>",
        pad_token="<pad>",
        model_max_length=tokenizer.context_length,
    )
