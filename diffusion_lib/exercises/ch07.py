"""Exercises of chapter 7 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..clip import SPECIAL_TOKENS, clip_loss
from .base import register

END_ID = SPECIAL_TOKENS.index("<end>")


# ch07.causal_mask: bool [L, L], True where query i may attend to key j (j <= i)


def reference_causal_mask(length: int) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril()


def _mask_inputs(gen: torch.Generator) -> dict:
    return {"length": int(torch.randint(1, 25, (), generator=gen))}


def _mistake_causal_mask_no_diagonal(length: int) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril(diagonal=-1)


def _mistake_causal_mask_float(length: int) -> torch.Tensor:
    return torch.ones(length, length).tril()  # 0.0 / 1.0, not False / True


register(
    "ch07.causal_mask",
    reference_causal_mask,
    _mask_inputs,
    hint="entry [i, j] is True when j <= i (the diagonal included: a token sees "
    "itself); torch.tril keeps the lower triangle. Return dtype torch.bool.",
    mistakes={
        "leaves out the diagonal (a token cannot see itself)": (
            _mistake_causal_mask_no_diagonal
        ),
        "returns a float mask of 0s and 1s instead of torch.bool": (
            _mistake_causal_mask_float
        ),
    },
)


# ch07.clip_loss: logits [B, B] (row i: image i against every caption) -> scalar


def reference_clip_loss(logits: torch.Tensor) -> torch.Tensor:
    return clip_loss(logits)


def _loss_inputs(gen: torch.Generator) -> dict:
    b = int(torch.randint(2, 17, (), generator=gen))
    scale = float(torch.rand((), generator=gen)) * 20 + 1
    return {"logits": scale * (2 * torch.rand(b, b, generator=gen) - 1)}


def _mistake_clip_loss_rows_only(logits: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, torch.arange(logits.shape[0]))  # image -> text


def _mistake_clip_loss_sum(logits: torch.Tensor) -> torch.Tensor:
    target = torch.arange(logits.shape[0])
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


register(
    "ch07.clip_loss",
    reference_clip_loss,
    _loss_inputs,
    hint="the right answer of row i (and of column i) is i: average the cross-entropy "
    "of the rows and that of the columns (F.cross_entropy(logits.T, ...)), each a mean "
    "over the batch.",
    mistakes={
        "uses only the rows (image -> text), not the columns": (
            _mistake_clip_loss_rows_only
        ),
        "adds the two cross-entropies instead of averaging them": (
            _mistake_clip_loss_sum
        ),
    },
)


# ch07.eot_pool: states [B, L, D], tokens [B, L], end_id -> the state at the first
# <end> token of each row, [B, D]


def reference_eot_pool(
    states: torch.Tensor, tokens: torch.Tensor, end_id: int
) -> torch.Tensor:
    end = (tokens == end_id).long().argmax(dim=1)
    return states[torch.arange(states.shape[0]), end]


def _pool_inputs(gen: torch.Generator) -> dict:
    b = int(torch.randint(1, 7, (), generator=gen))
    length = int(torch.randint(6, 21, (), generator=gen))
    d = int(torch.randint(2, 9, (), generator=gen))
    tokens = torch.zeros(b, length, dtype=torch.long)  # <pad> = 0
    for i in range(b):
        words = int(torch.randint(1, length - 1, (), generator=gen))
        tokens[i, 0] = 1  # <start>
        tokens[i, 1 : words + 1] = torch.randint(3, 32, (words,), generator=gen)
        tokens[i, words + 1] = END_ID
    return {
        "states": torch.randn(b, length, d, generator=gen),
        "tokens": tokens,
        "end_id": END_ID,
    }


def _mistake_eot_pool_last(states, tokens, end_id: int) -> torch.Tensor:
    return states[:, -1]  # the last position is usually <pad>, not <end>


def _mistake_eot_pool_no_row_index(states, tokens, end_id: int) -> torch.Tensor:
    end = (tokens == end_id).long().argmax(dim=1)
    return states[:, end]  # every row at every row's <end>: [B, B, D]


register(
    "ch07.eot_pool",
    reference_eot_pool,
    _pool_inputs,
    hint="find the position of end_id in each row ((tokens == end_id).long().argmax(1) "
    "gives the first), then index states with (row numbers, those positions).",
    mistakes={
        "takes the state at the last position instead of at the end token": (
            _mistake_eot_pool_last
        ),
        "indexes states[:, end] without the row numbers, giving [B, B, D]": (
            _mistake_eot_pool_no_row_index
        ),
    },
)


# ch07.recall_at_1: similarity [N, N] (row i: query i against every candidate; the
# right candidate of query i is i) -> the fraction of rows whose largest entry is on
# the diagonal, a Python float


def reference_recall_at_1(similarity: torch.Tensor) -> float:
    n = similarity.shape[0]
    return (similarity.argmax(dim=1) == torch.arange(n)).float().mean().item()


def _recall_inputs(gen: torch.Generator) -> dict:
    n = int(torch.randint(3, 41, (), generator=gen))
    signal = float(torch.rand((), generator=gen)) * 2  # how often the diagonal wins
    sim = torch.randn(n, n, generator=gen) + signal * torch.eye(n)
    return {"similarity": sim}


def _mistake_recall_at_1_columns(similarity: torch.Tensor) -> float:
    n = similarity.shape[0]
    return (similarity.argmax(dim=0) == torch.arange(n)).float().mean().item()


def _mistake_recall_at_1_count(similarity: torch.Tensor) -> float:
    n = similarity.shape[0]
    return (similarity.argmax(dim=1) == torch.arange(n)).sum().item()  # not mean


register(
    "ch07.recall_at_1",
    reference_recall_at_1,
    _recall_inputs,
    hint="compare each row's argmax with its row number (torch.arange(N)) and return "
    "the mean as a Python float (.item()).",
    mistakes={
        "takes the argmax over the columns (dim 0) instead of the rows": (
            _mistake_recall_at_1_columns
        ),
        "returns the number of hits instead of the fraction": (
            _mistake_recall_at_1_count
        ),
    },
)


# ch07.patchify: images [B, C, H, W] -> patches [B, (H/p) * (W/p), C * p * p], the
# patches in row-major order, each flattened in (channel, row, column) order: the
# layout in which a Conv2d(C, width, p, stride=p) reads them


def reference_patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    b, c, h, w = images.shape
    p = patch_size
    x = images.unfold(2, p, p).unfold(3, p, p)  # [B, C, H/p, W/p, p, p]
    return x.permute(0, 2, 3, 1, 4, 5).reshape(b, (h // p) * (w // p), c * p * p)


def _patch_inputs(gen: torch.Generator) -> dict:
    p = int(torch.randint(2, 5, (), generator=gen))
    rows, cols = (int(v) for v in torch.randint(1, 5, (2,), generator=gen))
    b, c = int(torch.randint(1, 4, (), generator=gen)), 3
    return {
        "images": torch.randn(b, c, rows * p, cols * p, generator=gen),
        "patch_size": p,
    }


def _mistake_patchify_plain_reshape(images: torch.Tensor, patch_size: int):
    b, c, h, w = images.shape
    p = patch_size
    return images.reshape(b, (h // p) * (w // p), c * p * p)  # rows, not patches


def _mistake_patchify_channel_last(images: torch.Tensor, patch_size: int):
    b, c, h, w = images.shape
    p = patch_size
    x = images.unfold(2, p, p).unfold(3, p, p)  # [B, C, H/p, W/p, p, p]
    # each patch flattened in (row, column, channel) order
    return x.permute(0, 2, 3, 4, 5, 1).reshape(b, (h // p) * (w // p), c * p * p)


register(
    "ch07.patchify",
    reference_patchify,
    _patch_inputs,
    hint="images.unfold(2, p, p).unfold(3, p, p) gives [B, C, H/p, W/p, p, p]; move "
    "the channel axis behind the two patch-grid axes before flattening.",
    mistakes={
        "reshapes the image straight to [B, N, C p p] without cutting patches": (
            _mistake_patchify_plain_reshape
        ),
        "flattens each patch in (row, column, channel) order": (
            _mistake_patchify_channel_last
        ),
    },
)
