"""Adapting a trained text-to-image model to a new concept (chapter 11).

- **LoRA** (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
  Eq. 3): a frozen linear layer W x + b gains a trainable low-rank update,

      h = W x + b + (alpha / r) * B A x,      A [r, in], B [out, r], r << min(in, out)

  with B initialised to zero, so that training starts from the unchanged model. The
  update can be merged into W (W <- W + (alpha / r) B A: no extra cost at sampling time)
  and subtracted again. `LoRALinear` names its parts as `peft` does (`base_layer`,
  `lora_A`, `lora_B`), so a state dict of this module's adapters loads into a model that
  peft adapted with the same `LoraConfig` (`peft_lora`) and the two agree.
- **Textual inversion** (Gal et al. 2022, "An Image is Worth One Word"): a new word is
  added to the tokenizer and only its embedding row is trained, with the text encoder
  and the UNet frozen. `TrainableWords` holds the new rows beside the frozen table.

Legend: r = rank, alpha = lora_alpha, scale = a strength multiplier applied at
sampling time (1 = as trained, 0 = the base model).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections


class LoRALinear(nn.Module):
    """base_layer(x) + scale * (alpha / r) * lora_B(lora_A(x)); base_layer frozen.

    x: [..., in_features] -> [..., out_features]. A is initialised as peft does
    (Kaiming-uniform, from `generator`: torch's global one when None), B to zero."""

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int = 4,
        alpha: float = 4.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            kind = type(base_layer).__name__
            raise ValueError(f"LoRA wraps an nn.Linear, got {kind}")
        n_in, n_out = base_layer.in_features, base_layer.out_features
        if not 1 <= r <= min(n_in, n_out):
            raise ValueError(
                f"rank r must be in [1, {min(n_in, n_out)}] for a {n_in} -> {n_out} "
                f"layer, got {r}"
            )
        self.base_layer = base_layer.requires_grad_(False)
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False)
        nn.init.kaiming_uniform_(
            self.lora_A.weight, a=math.sqrt(5), generator=generator
        )
        nn.init.zeros_(self.lora_B.weight)
        self.lora_A.to(base_layer.weight), self.lora_B.to(base_layer.weight)
        self.r, self.alpha, self.scale, self.merged = r, alpha, 1.0, False

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def delta_weight(self) -> torch.Tensor:
        """scale * (alpha / r) * B A: [out, in], what merging adds to W."""
        return self.scale * self.scaling * self.lora_B.weight @ self.lora_A.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged or self.scale == 0:
            return out
        return out + self.scale * self.scaling * self.lora_B(self.lora_A(x))

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_layer.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight -= self.delta_weight()
            self.merged = False


def _is_target(name: str, targets) -> bool:
    """peft's rule: a module is targeted when its name equals a target or ends with
    "." + target."""
    return any(name == t or name.endswith("." + t) for t in targets)


def add_lora(
    model: nn.Module,
    r: int = 4,
    alpha: float = 4.0,
    targets=LORA_TARGETS,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Freeze `model` and wrap every nn.Linear whose name matches `targets` (peft's
    suffix rule) in a LoRALinear, in place, their A matrices drawn in turn from
    `generator` (torch's global one when None). Returns the wrapped names; ValueError
    when nothing matches (rather than silently training nothing)."""
    model.requires_grad_(False)
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and _is_target(n, targets)
    ]
    if not names:
        raise ValueError(
            f"no nn.Linear in the model matches the LoRA targets {tuple(targets)}"
        )
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        layer = LoRALinear(getattr(owner, child), r, alpha, generator)
        setattr(owner, child, layer)
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _layers_or_raise(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers (see add_lora)")
    return layers


def set_lora_scale(model: nn.Module, scale: float) -> None:
    """Adapter strength: 0 = the base model, 1 = as trained (not while merged)."""
    for m in _layers_or_raise(model).values():
        if m.merged:
            raise ValueError("unmerge the LoRA layers before changing their strength")
        m.scale = float(scale)


def merge_lora(model: nn.Module) -> None:
    for m in _layers_or_raise(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in _layers_or_raise(model).values():
        m.unmerge()


def remove_lora(model: nn.Module) -> nn.Module:
    """Put the plain nn.Linear layers back (merged updates stay in their weights)."""
    for name in list(_layers_or_raise(model)):
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, getattr(owner, child).base_layer)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter alone: {"<layer>.lora_A.weight": [r, in], "<layer>.lora_B.weight":
    [out, r]}, the keys of peft's get_peft_model_state_dict."""
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if ".lora_A." in k or ".lora_B." in k
    }


def load_lora_state_dict(model: nn.Module, state: dict) -> None:
    """Load an adapter into a model that add_lora prepared with the same layers and
    rank; ValueError naming what is missing or unexpected."""
    own = lora_state_dict(model)
    missing, extra = set(own) - set(state), set(state) - set(own)
    if missing or extra:
        raise ValueError(
            f"the adapter does not fit this model: missing {sorted(missing)[:4]}, "
            f"unexpected {sorted(extra)[:4]} (same targets and rank as add_lora?)"
        )
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ValueError(
                f"{k}: adapter has shape {tuple(v.shape)}, model "
                f"{tuple(own[k].shape)} (another rank?)"
            )
    model.load_state_dict(state, strict=False)


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(
        p.numel() for p in params
    )


def peft_lora(
    model: nn.Module,
    r: int = 4,
    alpha: float = 4.0,
    targets=LORA_TARGETS,
    state: dict | None = None,
) -> nn.Module:
    """A copy of `model` adapted by peft with LoraConfig(r, lora_alpha, target_modules)
    (the same layers add_lora wraps), optionally loaded with an adapter state dict
    from `lora_state_dict`."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets))
    adapted = inject_adapter_in_model(config, copy.deepcopy(model))
    if state is not None:
        result = set_peft_model_state_dict(adapted, state)
        if result.unexpected_keys:
            raise ValueError(f"peft did not use {result.unexpected_keys[:4]}")
    return adapted


# ----------------------------------------------------------------------------------
# Textual inversion


class TrainableWords(nn.Module):
    """A token-embedding table with k new rows: ids < V look up the frozen `base`
    table [V, W], ids V .. V + k - 1 the trainable `new` rows [k, W]."""

    def __init__(self, base: nn.Embedding, new_rows: torch.Tensor):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.new = nn.Parameter(new_rows.detach().clone().to(base.weight))

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base.weight, self.new])

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings + self.new.shape[0]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight)


def add_words(tokenizer, text_model, words, init_words) -> tuple:
    """(tokenizer with `words` appended after its vocabulary, the TrainableWords that
    now holds the text encoder's token embedding). Each new row starts at the mean of
    the rows of `init_words` (the paper starts from a coarse descriptor word). The
    text model is changed in place (its token_embedding replaced); every old word
    keeps its id, so the model still reads old prompts exactly as before."""
    words = [words] if isinstance(words, str) else list(words)
    table = text_model.token_embedding
    if isinstance(table, TrainableWords):
        raise ValueError("this text encoder already has added words")
    if not init_words:
        raise ValueError("init_words must name at least one known word")
    known = [tokenizer.encode(w)[1] for w in init_words]  # raises for unknown words
    init = table.weight[known].mean(0, keepdim=True).repeat(len(words), 1)
    new_tokenizer = tokenizer.with_words(words)
    text_model.token_embedding = TrainableWords(table, init)
    return new_tokenizer, text_model.token_embedding
