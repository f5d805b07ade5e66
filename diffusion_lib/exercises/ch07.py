"""Exercises of chapter 7 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import torch

from ..clip import SPECIAL_TOKENS, clip_loss
from . import register

END_ID = SPECIAL_TOKENS.index("<end>")


# ch07.causal_mask: bool [L, L], True where query i may attend to key j (j <= i)


def reference_causal_mask(length: int) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril()


def _mask_inputs(gen: torch.Generator) -> dict:
    return {"length": int(torch.randint(1, 25, (), generator=gen))}


register(
    "ch07.causal_mask",
    reference_causal_mask,
    _mask_inputs,
    hint="entry [i, j] is True when j <= i (the diagonal included: a token sees "
    "itself); torch.tril keeps the lower triangle. Return dtype torch.bool.",
)


# ch07.clip_loss: logits [B, B] (row i: image i against every caption) -> scalar


def reference_clip_loss(logits: torch.Tensor) -> torch.Tensor:
    return clip_loss(logits)


def _loss_inputs(gen: torch.Generator) -> dict:
    b = int(torch.randint(2, 17, (), generator=gen))
    scale = float(torch.rand((), generator=gen)) * 20 + 1
    return {"logits": scale * (2 * torch.rand(b, b, generator=gen) - 1)}


register(
    "ch07.clip_loss",
    reference_clip_loss,
    _loss_inputs,
    hint="the right answer of row i (and of column i) is i: average the cross-entropy "
    "of the rows and that of the columns (F.cross_entropy(logits.T, ...)), each a mean "
    "over the batch.",
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


register(
    "ch07.eot_pool",
    reference_eot_pool,
    _pool_inputs,
    hint="find the position of end_id in each row ((tokens == end_id).long().argmax(1) "
    "gives the first), then index states with (row numbers, those positions).",
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


register(
    "ch07.recall_at_1",
    reference_recall_at_1,
    _recall_inputs,
    hint="compare each row's argmax with its row number (torch.arange(N)) and return "
    "the mean as a Python float (.item()).",
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
    return {"images": torch.randn(b, c, rows * p, cols * p, generator=gen),
            "patch_size": p}  # fmt: skip


register(
    "ch07.patchify",
    reference_patchify,
    _patch_inputs,
    hint="images.unfold(2, p, p).unfold(3, p, p) gives [B, C, H/p, W/p, p, p]; move "
    "the channel axis behind the two patch-grid axes before flattening.",
)
