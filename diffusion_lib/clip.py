"""CLIP from scratch: contrastive language-image pre-training (Radford et al. 2021).

Two encoders map an image and a caption to vectors in one embedding space; training
pulls each image towards its own caption and away from the other captions of the batch
(Radford et al., Fig. 3):

    logits = exp(t) * normalise(E_img(images)) @ normalise(E_txt(captions)).T   [B, B]
    loss   = (CE(logits, arange(B)) + CE(logits.T, arange(B))) / 2

a symmetric InfoNCE loss with a learned temperature (t = log(1 / 0.07) at the start,
exp(t) clipped at 100, as in the paper, Sec. 2.5).

* Tokenizer: real CLIP uses a byte-level BPE (any string has an encoding; the paper
  gives a vocabulary of 49,152, the released tokenizer has 48,894 merges and 49,408
  ids in all), wraps a caption in <|startoftext|> ... <|endoftext|> and pads to 77
  tokens. The course's captions come from a grammar of a few dozen words, so
  `WordTokenizer` maps each word to one id (no merges to learn, every token readable),
  with the same start / end / padding layout; a word outside the vocabulary is an
  error that suggests the nearest known word.
* Text encoder (`TextTransformer`): token + learned position embeddings, pre-LayerNorm
  transformer blocks with a *causal* mask, a final LayerNorm; the caption's embedding
  is the state at the end token ("EOT pooling") times a projection. Its per-token
  states [B, L, width] are what Stable Diffusion's UNet cross-attends to.
* Image encoder (`VisionTransformer`): a ViT (Dosovitskiy et al. 2021) as CLIP's
  ViT-B/32: 8x8-pixel patches -> tokens, a class token, position embeddings,
  transformer blocks, the class token's state times a projection.

Shapes: images [B, 3, H, W] in [-1, 1]; tokens [B, L] long; embeddings [B, embed_dim].
Training: train_parts.train_clip.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config
from .unet import Attention

SPECIAL_TOKENS = ("<pad>", "<start>", "<end>")  # ids 0, 1, 2
MAX_LOGIT_SCALE = 100.0
TIE = 1e-5  # cosine similarities closer than this count as equal


class UnknownWordError(ValueError):
    """A word that the tokenizer's vocabulary does not contain."""


class WordTokenizer:
    """One id per word of a fixed vocabulary: "a red circle" -> [<start>, a, red,
    circle, <end>, <pad>, ...], padded to `context_length`."""

    def __init__(self, vocabulary, context_length: int = 20, added=()):
        words = sorted(set(vocabulary))
        added = list(dict.fromkeys(added))
        if not words or any(not re.fullmatch(r"[a-z]+", w) for w in words + added):
            raise ValueError("vocabulary must be a non-empty list of lower-case words")
        if set(added) & set(words):
            raise ValueError(
                f"added words {sorted(set(added) & set(words))} are "
                "already in the vocabulary"
            )
        # words added later (textual inversion) come after the sorted vocabulary, so
        # that every old word keeps its id
        self.vocabulary, self.added = words + added, added
        self.context_length = context_length
        self.ids = {w: i for i, w in enumerate(SPECIAL_TOKENS + tuple(self.vocabulary))}
        self.pad_id, self.start_id, self.end_id = range(3)

    def with_words(self, words) -> WordTokenizer:
        """A copy that also knows `words` (new ids after every existing one)."""
        return WordTokenizer(
            [w for w in self.vocabulary if w not in self.added],
            self.context_length,
            self.added + list(words),
        )

    @property
    def vocab_size(self) -> int:
        return len(self.ids)

    @staticmethod
    def split(text: str) -> list[str]:
        """Lower-case words; punctuation is dropped, "center" is read as "centre"."""
        return re.findall(r"[a-z]+", text.lower().replace("center", "centre"))

    def encode(self, text: str) -> list[int]:
        """[<start>, word ids..., <end>] (no padding)."""
        words = self.split(text)
        for w in words:
            if w not in self.ids:
                near = difflib.get_close_matches(w, self.vocabulary, n=1, cutoff=0.6)
                hint = (
                    f"did you mean {near[0]!r}?"
                    if near
                    else "the known words are " + ", ".join(self.vocabulary)
                )
                raise UnknownWordError(f"unknown word {w!r} in {text!r}; {hint}")
        if len(words) + 2 > self.context_length:
            raise ValueError(
                f"{text!r} has {len(words)} words; at most {self.context_length - 2} "
                "fit the context"
            )
        return [self.start_id] + [self.ids[w] for w in words] + [self.end_id]

    def __call__(self, texts) -> torch.Tensor:
        """tokens [B, context_length] for a caption or a list of captions."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.full((len(texts), self.context_length), self.pad_id)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, tokens) -> str:
        names = {i: w for w, i in self.ids.items()}
        ids = [int(i) for i in tokens]
        return " ".join(names[i] for i in ids if i >= len(SPECIAL_TOKENS))

    def to_dict(self) -> dict:
        base = [w for w in self.vocabulary if w not in self.added]
        d = {"vocabulary": base, "context_length": self.context_length}
        return {**d, "added": self.added} if self.added else d

    @classmethod
    def from_dict(cls, d: dict) -> WordTokenizer:
        return cls(d["vocabulary"], d["context_length"], d.get("added", ()))


def scene_tokenizer(context_length: int = 20) -> WordTokenizer:
    """The tokenizer of the scenes' caption grammar (data.make_scenes)."""
    from .data.scenes import _SCENE_WORDS

    return WordTokenizer(_SCENE_WORDS, context_length)


@dataclass
class CLIPConfig(Config):
    vocab_size: int = 32
    context_length: int = 20
    text_width: int = 64
    text_layers: int = 3
    text_heads: int = 4
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    embed_dim: int = 64
    init_temperature: float = 0.07


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(LN(x)), then x + MLP(LN(x)) (4x wide, GELU)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, None, heads, width // heads)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        x = x + self.attn(self.ln_1(x), mask=mask)
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """tokens [B, L] -> (states [B, L, text_width], embedding [B, embed_dim])."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(
            0.01 * torch.randn(cfg.context_length, cfg.text_width)
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.text_width, cfg.text_heads)
            for _ in range(cfg.text_layers)
        )
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.projection = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        causal = torch.ones(cfg.context_length, cfg.context_length).tril().bool()
        self.register_buffer("causal_mask", causal, persistent=False)
        self.end_id = SPECIAL_TOKENS.index("<end>")

    def forward(self, tokens: torch.Tensor):
        b, n = tokens.shape
        if n > self.positional_embedding.shape[0]:
            raise ValueError(
                f"tokens [B, L] must have L <= {self.positional_embedding.shape[0]}, "
                f"got {n}"
            )
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        for block in self.blocks:  # token i sees tokens 0..i only
            x = block(x, self.causal_mask[:n, :n])
        states = self.ln_final(x)
        has_end = (tokens == self.end_id).any(dim=1)
        if not has_end.all():
            raise ValueError("every row of tokens needs an <end> token (id 2)")
        end = (tokens == self.end_id).long().argmax(dim=1)  # first <end> per row
        return states, self.projection(states[torch.arange(b), end])


class VisionTransformer(nn.Module):
    """images [B, 3, H, W] -> embedding [B, embed_dim] (ViT, class-token pooling)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(
                f"image_size {cfg.image_size} must be a multiple of patch_size "
                f"{cfg.patch_size}"
            )
        w, n = cfg.vision_width, (cfg.image_size // cfg.patch_size) ** 2
        self.image_size = cfg.image_size
        self.patch_embed = nn.Conv2d(3, w, cfg.patch_size, stride=cfg.patch_size)
        self.class_embedding = nn.Parameter(0.02 * torch.randn(w))
        self.positional_embedding = nn.Parameter(0.02 * torch.randn(n + 1, w))
        self.ln_pre, self.ln_post = nn.LayerNorm(w), nn.LayerNorm(w)
        self.blocks = nn.ModuleList(
            TransformerBlock(w, cfg.vision_heads) for _ in range(cfg.vision_layers)
        )
        self.projection = nn.Linear(w, cfg.embed_dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if images.ndim != 4 or images.shape[1:] != (3, s, s):
            raise ValueError(
                f"images must be [B, 3, {s}, {s}], got {tuple(images.shape)}"
            )
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, patches, w]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        for block in self.blocks:
            x = block(x)
        return self.projection(self.ln_post(x[:, 0]))


class CLIP(nn.Module):
    """model(images, tokens) -> logits_per_image [B_img, B_txt] (scaled cosines)."""

    config_class = CLIPConfig  # (pretrained builds it from the manifest)

    def __init__(self, config: CLIPConfig | None = None):
        super().__init__()
        self.config = cfg = config or CLIPConfig()
        self.text, self.visual = TextTransformer(cfg), VisionTransformer(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(1 / cfg.init_temperature).log())

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-length caption embeddings [B, embed_dim]."""
        return F.normalize(self.text(tokens)[1], dim=-1)

    def text_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token states [B, L, text_width] (what a UNet cross-attends to)."""
        return self.text(tokens)[0]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length image embeddings [B, embed_dim]."""
        return F.normalize(self.visual(images), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return scale * self.encode_image(images) @ self.encode_text(tokens).T


def clip_loss(
    logits_per_image: torch.Tensor, logits_per_caption=None, first: int = 0
) -> torch.Tensor:
    """Symmetric InfoNCE: row i's (and column i's) right answer is i.

    For a share of the batch (data-parallel training): logits_per_image [rows, B] (these
    images against every caption), logits_per_caption [rows, B] (these captions
    against every image; default logits_per_image.T) and `first`, where the rows
    start in the batch: row r's right answer is first + r."""
    if logits_per_caption is None:
        logits_per_caption = logits_per_image.T
    rows = logits_per_image.shape[0]
    target = first + torch.arange(rows, device=logits_per_image.device)
    return 0.5 * (
        F.cross_entropy(logits_per_image, target)
        + F.cross_entropy(logits_per_caption, target)
    )


def _device(model) -> torch.device:
    return next(model.parameters(), torch.zeros(())).device


@torch.no_grad()
def embed_images(model: CLIP, images: torch.Tensor, batch_size: int = 500):
    """Unit image embeddings [N, embed_dim] on the CPU (computed on the model's
    device)."""
    device = _device(model)
    return torch.cat(
        [
            model.encode_image(images[i : i + batch_size].to(device)).cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
    )


@torch.no_grad()
def embed_texts(model: CLIP, tokenizer: WordTokenizer, texts, batch_size: int = 500):
    """Unit caption embeddings [N, embed_dim] on the CPU."""
    texts, device = list(texts), _device(model)
    return torch.cat(
        [
            model.encode_text(tokenizer(texts[i : i + batch_size]).to(device)).cpu()
            for i in range(0, len(texts), batch_size)
        ]
    )


def _mean_off_diagonal(a: torch.Tensor, b: torch.Tensor) -> float:
    sim = a @ b.T
    n = sim.shape[0]
    return ((sim.sum() - sim.diagonal().sum()) / (n * (n - 1))).item()


@torch.no_grad()
def modality_gap(
    image_emb: torch.Tensor, text_emb: torch.Tensor, seed: int = 0, shuffles: int = 20
) -> dict:
    """The modality gap as Liang et al. (2022) define it: the distance between the
    centre of the image embeddings and the centre of the text embeddings (each
    normalised to unit length first), for N paired embeddings image_emb, text_emb
    [N, D] (row i: an image and its caption).

    Returned beside its baseline: the same distance when each pair's two embeddings are
    put on the two sides at random (what the gap is when the two modalities are
    exchangeable; it is not 0 on a finite sample). Also the mean cosines: an image with
    its own caption, with another caption, with another image, and a caption with
    another caption."""
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(
            "expected paired embeddings [N, D] of one shape, got "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    if image_emb.shape[0] < 2:
        raise ValueError("the modality gap needs at least 2 pairs")
    image_emb = F.normalize(image_emb.float().cpu(), dim=-1)
    text_emb = F.normalize(text_emb.float().cpu(), dim=-1)
    generator = torch.Generator().manual_seed(seed)
    baseline = []
    for _ in range(shuffles):
        flip = torch.rand(len(image_emb), 1, generator=generator) < 0.5
        side_a = torch.where(flip, text_emb, image_emb)
        side_b = torch.where(flip, image_emb, text_emb)
        baseline.append((side_a.mean(0) - side_b.mean(0)).norm().item())
    return {
        "gap": (image_emb.mean(0) - text_emb.mean(0)).norm().item(),
        "baseline": sum(baseline) / len(baseline),
        "image_own_caption": F.cosine_similarity(image_emb, text_emb).mean().item(),
        "image_other_caption": _mean_off_diagonal(image_emb, text_emb),
        "image_image": _mean_off_diagonal(image_emb, image_emb),
        "caption_caption": _mean_off_diagonal(text_emb, text_emb),
        "pairs": len(image_emb),
    }


# ---------------------------------------------------------------------------------
# Measuring a CLIP on scenes: zero-shot classification, retrieval, binding


def tokenizer_from_manifest(info: dict) -> WordTokenizer:
    """The tokenizer a CLIP checkpoint was trained with (stored in its manifest)."""
    return WordTokenizer.from_dict(info["tokenizer"])


def one_object_prompts() -> tuple[list[str], torch.Tensor]:
    """Every full one-object caption "a {size} {colour} {shape} in the {position}" and
    its labels [K, 4] (shape, colour, size, position), K = 3 * 6 * 2 * 5 = 180."""
    from .data import LABEL_SIZES, caption_from_labels

    labels = torch.cartesian_prod(*(torch.arange(n) for n in LABEL_SIZES))
    return [caption_from_labels(row) for row in labels], labels


@torch.no_grad()
def zero_shot_one_object(model: CLIP, tokenizer: WordTokenizer, scenes) -> dict:
    """Zero-shot classification of one-object scenes (data.ScenesData): each image
    takes the label of its most similar caption among `one_object_prompts()`; accuracy
    of each attribute read off that caption."""
    from .data import ATTRIBUTES

    lone = scenes.objects[:, 1, 0] < 0
    if not lone.any():
        raise ValueError("zero-shot classification needs one-object scenes")
    prompts, labels = one_object_prompts()
    best = (
        embed_images(model, scenes.images[lone])
        @ embed_texts(model, tokenizer, prompts).T
    ).argmax(1)
    truth = torch.cat([scenes.objects[lone, 0], scenes.position[lone, None]], dim=1)
    right = labels[best] == truth
    out = {a: right[:, i].float().mean().item() for i, a in enumerate(ATTRIBUTES)}
    out["all"] = right.all(1).float().mean().item()
    out["images"] = int(lone.sum())
    return out


def scene_keys(scenes) -> list[tuple]:
    """A hashable key per scene: its structured labels (two scenes with the same key
    show the same thing, up to jitter)."""
    return [
        (tuple(o.flatten().tolist()), int(r), int(p))
        for o, r, p in zip(scenes.objects, scenes.relation, scenes.position)
    ]


@torch.no_grad()
def retrieval(model: CLIP, tokenizer: WordTokenizer, scenes) -> dict:
    """Recall@1 among the N scenes and their captions, both directions. "exact": the
    top hit is the query's own pair; "labels": the top hit shows the same labels (the
    grammar repeats itself, so an equally right image can outrank the paired one)."""
    sim = (
        embed_images(model, scenes.images)
        @ embed_texts(model, tokenizer, scenes.captions).T
    )
    keys = scene_keys(scenes)
    ids = {k: i for i, k in enumerate(sorted(set(keys)))}
    key = torch.tensor([ids[k] for k in keys])
    n = torch.arange(len(keys))
    t2i, i2t = sim.argmax(0), sim.argmax(1)  # best image per caption, caption per image
    return {
        "text_to_image_exact": (t2i == n).float().mean().item(),
        "image_to_text_exact": (i2t == n).float().mean().item(),
        "text_to_image_labels": (key[t2i] == key).float().mean().item(),
        "image_to_text_labels": (key[i2t] == key).float().mean().item(),
        "pool": len(keys),
    }


def _swapped_captions(objects, relation) -> dict[str, str]:
    """The three wrong captions of the binding test (template 0) for one two-object
    scene (objects [2, 3], relation). "colours swapped" and "shapes swapped" use
    exactly the words of the right caption, in another order; "relation reversed"
    changes one word ("left" <-> "right", "above" <-> "below")."""
    from .data import scene_caption

    o = objects.clone()
    variants = {}
    colours, shapes = o.clone(), o.clone()
    colours[:, 1] = o[:, 1].flip(0)
    shapes[:, 0] = o[:, 0].flip(0)
    variants["colours swapped"] = scene_caption(colours, relation, -1)
    variants["shapes swapped"] = scene_caption(shapes, relation, -1)
    opposite = int(relation) ^ 1  # left <-> right, above <-> below
    variants["relation reversed"] = scene_caption(o, opposite, -1)
    return variants


@torch.no_grad()
def binding_test(model: CLIP, tokenizer: WordTokenizer, scenes) -> dict:
    """For each two-object scene: does the image prefer its caption to a wrong one
    (colours swapped between the objects, shapes swapped, relation reversed; see
    `_swapped_captions`)? A tie counts one half. A bag of words cannot tell a swap of
    colours or shapes from the right caption (the same words) and scores 0.5 there; the
    reversed relation changes a word, so a bag of words can win on it. Scenes whose
    swap changes nothing (two objects of one colour) are skipped for that swap."""
    from .data import scene_caption

    two = torch.nonzero(scenes.objects[:, 1, 0] >= 0).flatten()
    if len(two) == 0:
        raise ValueError("the binding test needs two-object scenes")
    image = embed_images(model, scenes.images[two])
    right = [scene_caption(scenes.objects[i], scenes.relation[i], -1) for i in two]
    score_right = (image * embed_texts(model, tokenizer, right)).sum(1)
    out = {}
    variants = [_swapped_captions(scenes.objects[i], scenes.relation[i]) for i in two]
    for name in variants[0]:
        wrong = [v[name] for v in variants]
        differs = torch.tensor([w != r for w, r in zip(wrong, right)])
        score_wrong = (image * embed_texts(model, tokenizer, wrong)).sum(1)
        margin = (score_right - score_wrong)[differs]
        # a tie (what a bag of words gives) counts half: chance level is 0.5
        wins = (margin > TIE).float() + 0.5 * (margin.abs() <= TIE).float()
        out[name] = wins.mean().item()
        out[f"{name} (scenes)"] = int(differs.sum())
    return out
