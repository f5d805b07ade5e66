"""Exercises of chapter 11 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import torch

from .base import register

# ch11.lora_forward: x [N, in], the frozen weight [out, in] and bias [out], the adapter
# A [r, in], B [out, r] and alpha -> x W^T + b + (alpha / r) x A^T B^T  [N, out]


def reference_lora_forward(x, weight, bias, A, B, alpha) -> torch.Tensor:
    r = A.shape[0]
    return x @ weight.T + bias + (alpha / r) * (x @ A.T) @ B.T


def _lora_inputs(gen: torch.Generator) -> dict:
    n, d_in, d_out = (int(torch.randint(2, m, (), generator=gen)) for m in (6, 17, 17))
    r = int(torch.randint(1, min(d_in, d_out) + 1, (), generator=gen))
    r = max(r, 2)  # alpha / r differs from alpha
    d_in, d_out = max(d_in, r), max(d_out, r)
    randn = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return {
        "x": randn(n, d_in),
        "weight": randn(d_out, d_in),
        "bias": randn(d_out),
        "A": randn(r, d_in),
        "B": randn(d_out, r),
        "alpha": float(torch.randint(1, 17, (), generator=gen)),
    }


def _mistake_lora_no_scaling(x, weight, bias, A, B, alpha) -> torch.Tensor:
    return x @ weight.T + bias + (x @ A.T) @ B.T


def _mistake_lora_alpha_only(x, weight, bias, A, B, alpha) -> torch.Tensor:
    return x @ weight.T + bias + alpha * (x @ A.T) @ B.T  # alpha, not alpha / r


register(
    "ch11.lora_forward",
    reference_lora_forward,
    _lora_inputs,
    atol=1e-4,
    hint="the frozen part is x @ weight.T + bias; the update goes down to r numbers "
    "and back up: (x @ A.T) @ B.T, scaled by alpha / r with r = A.shape[0].",
    mistakes={
        "forgets the scaling alpha / r": _mistake_lora_no_scaling,
        "scales by alpha instead of alpha / r": _mistake_lora_alpha_only,
    },
)


# ch11.merge_lora: weight [out, in], A [r, in], B [out, r], alpha -> the merged weight
# W + (alpha / r) B A [out, in] (the layer then costs nothing extra at sampling time)


def reference_merge_lora(weight, A, B, alpha) -> torch.Tensor:
    return weight + (alpha / A.shape[0]) * B @ A


def _merge_inputs(gen: torch.Generator) -> dict:
    kw = _lora_inputs(gen)
    return {k: kw[k] for k in ("weight", "A", "B", "alpha")}


def _mistake_merge_transposed(weight, A, B, alpha) -> torch.Tensor:
    delta = (alpha / A.shape[0]) * B @ A
    return weight + (delta.T if delta.T.shape == weight.shape else -delta)


def _mistake_merge_no_scaling(weight, A, B, alpha) -> torch.Tensor:
    return weight + B @ A


register(
    "ch11.merge_lora",
    reference_merge_lora,
    _merge_inputs,
    atol=1e-4,
    hint="the update of the weight is (alpha / r) * B @ A, of shape [out, in] like "
    "the weight (B is [out, r], A is [r, in]).",
    mistakes={
        "adds the update with the wrong orientation or sign": _mistake_merge_transposed,
        "forgets the scaling alpha / r": _mistake_merge_no_scaling,
    },
)


# ch11.add_token_rows: the token-embedding table [V, W], the ids of the words to start
# from (init_ids [m]) and the number of new words k -> the table [V + k, W] with k new
# rows at the end, each the mean of the init rows (textual inversion's start)


def reference_add_token_rows(table, init_ids, k) -> torch.Tensor:
    new = table[init_ids].mean(0, keepdim=True).expand(k, -1)
    return torch.cat([table, new])


def _rows_inputs(gen: torch.Generator) -> dict:
    v, w = (int(torch.randint(4, m, (), generator=gen)) for m in (30, 17))
    m = int(torch.randint(2, 5, (), generator=gen))
    return {
        "table": torch.randn(v, w, generator=gen),
        "init_ids": torch.randperm(v, generator=gen)[:m],
        "k": int(torch.randint(1, 4, (), generator=gen)),
    }


def _mistake_rows_overwrite(table, init_ids, k) -> torch.Tensor:
    out = table.clone()
    out[-k:] = table[init_ids].mean(0)  # overwrites the last words instead of adding
    return out


def _mistake_rows_first_only(table, init_ids, k) -> torch.Tensor:
    return torch.cat([table, table[init_ids[:1]].expand(k, -1)])


register(
    "ch11.add_token_rows",
    reference_add_token_rows,
    _rows_inputs,
    hint="table[init_ids].mean(0, keepdim=True) is one [1, W] row; repeat it k times "
    "and torch.cat it *after* the table, so that every old word keeps its id.",
    mistakes={
        "overwrites the last rows instead of appending": _mistake_rows_overwrite,
        "starts from the first init word only": _mistake_rows_first_only,
    },
)
