"""Adapters and models loaded into a MiniStableDiffusion, as diffusers' loader mixins
load them into its pipelines (`pipe.load_lora_weights(...)`,
`pipe.load_textual_inversion(...)`): the LoRA of chapter 11 (with its word), the learned
word of textual inversion, the ControlNet of chapter 13, and chapter 12's inpainting
UNet. Every file is hash-checked (diffusion_lib.checkpoints); loading needs no training
code.
"""

from __future__ import annotations

import torch

from . import pretrained
from .adapters import TrainableWords, add_lora, add_words, load_lora_state_dict
from .checkpoints import load_checkpoint, load_into
from .controlnet import ControlNet
from .data import COLOURS, NEW_COLOURS, SHAPES
from .editing import InpaintingUNet

CONCEPT = "diamond"  # the word chapter 11 teaches (a shape of data.NEW_SHAPES)


def init_words(word: str) -> tuple:
    """The words a new word's row starts from: the shape words for a shape, the colour
    words for a colour."""
    return tuple(COLOURS) if word in NEW_COLOURS else SHAPES


def teach_word(pipe, word: str = CONCEPT) -> TrainableWords:
    """Add `word` to the pipeline's tokenizer and text encoder (a new row at the mean
    of its kind's words, see init_words); returns the table that holds the new row."""
    pipe.tokenizer, table = add_words(
        pipe.tokenizer, pipe.text_encoder.text, word, init_words(word)
    )
    return table


def load_lora_weights(pipe, name: str = "scenes-lora", directory=None) -> dict:
    """Load a shipped LoRA adapter into a MiniStableDiffusion (hash-checked): its word
    joins the tokenizer with the stored row, the UNet gets the LoRA layers. Returns
    the manifest."""

    state, info = load_checkpoint(
        pretrained.checkpoint_path(name, directory), recipe=name
    )
    if info.get("kind") != "lora":
        raise ValueError(f"{name} is not a LoRA adapter (kind {info.get('kind')!r})")
    word = info["word"]
    _require_tensor(state, f"word.{word}", name, directory)
    table = teach_word(pipe, word)
    with torch.no_grad():
        table.new.copy_(state.pop(f"word.{word}"))
    add_lora(pipe.unet, info["rank"], info["alpha"], info["targets"])
    try:
        load_lora_state_dict(pipe.unet, state)
    except ValueError as err:
        raise ValueError(
            f"checkpoint {pretrained.checkpoint_path(name, directory)} "
            f"does not fit its manifest's config ({err}); rebuild it with "
            f"`python -m diffusion_lib.recipes {name}`"
        ) from err
    return info


def _require_tensor(state: dict, key: str, name: str, directory) -> None:
    if key not in state:
        raise ValueError(
            f"checkpoint {pretrained.checkpoint_path(name, directory)} does not fit "
            f"its manifest's config (no tensor {key!r}): the weights and the manifest "
            f"are from different models; rebuild it with "
            f"`python -m diffusion_lib.recipes {name}`"
        )


def load_textual_inversion(
    pipe, name: str = "scenes-inversion", directory=None
) -> dict:
    """Load a shipped learned word into a MiniStableDiffusion (hash-checked), as
    diffusers' `load_textual_inversion` does for SD. Returns the manifest."""

    state, info = load_checkpoint(
        pretrained.checkpoint_path(name, directory), recipe=name
    )
    if info.get("kind") != "textual inversion":
        raise ValueError(
            f"{name} is not a textual inversion embedding (kind {info.get('kind')!r})"
        )
    word = info["word"]
    _require_tensor(state, word, name, directory)
    table = teach_word(pipe, word)
    with torch.no_grad():
        table.new.copy_(state[word][None])
    return info


def load_inpainting(directory=None, device=None):
    """(InpaintingUNet, manifest) of the shipped scenes-inpaint (hash-checked)."""
    unet, info = pretrained.load_pretrained("scenes-inpaint", device, directory)
    sd_order = info.get("channel_order") == "sd"
    return InpaintingUNet(unet, sd_order).eval(), info


def load_controlnet(pipe, name: str = "scenes-controlnet", directory=None) -> dict:
    """Attach the shipped ControlNet to a MiniStableDiffusion (pipe.controlnet),
    hash-checked; it must have been trained for this pipeline's UNet."""

    state, info = load_checkpoint(
        pretrained.checkpoint_path(name, directory), recipe=name
    )

    if any("lora" in k for k in pipe.unet.state_dict()):
        raise ValueError(
            "load the ControlNet before the LoRA adapter: the ControlNet copies the "
            "UNet as it was trained, without LoRA layers"
        )
    net = ControlNet(pipe.unet, hint_widths=info.get("hint_widths"))
    load_into(net, state, pretrained.checkpoint_path(name, directory), name)
    pipe.controlnet = net.to(pipe.device).eval().requires_grad_(False)
    return info


class StableDiffusionLoaderMixin:
    """The loaders as methods of MiniStableDiffusion (as diffusers' LoraLoaderMixin,
    TextualInversionLoaderMixin): each returns the loaded file's manifest."""

    def load_lora_weights(self, name: str = "scenes-lora", directory=None) -> dict:
        return load_lora_weights(self, name, directory)

    def load_textual_inversion(
        self, name: str = "scenes-inversion", directory=None
    ) -> dict:
        return load_textual_inversion(self, name, directory)

    def load_controlnet(self, name: str = "scenes-controlnet", directory=None) -> dict:
        return load_controlnet(self, name, directory)
