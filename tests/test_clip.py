"""CLIP from scratch: the word tokenizer, the causal text transformer with EOT pooling,
the ViT, the symmetric InfoNCE loss, training, and the measurements (zero-shot,
retrieval, binding) checked on models whose answers are known."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from diffusion_lib import clip, train_parts
from diffusion_lib.data import make_scenes, scene_caption

TOK = clip.scene_tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = clip.CLIPConfig(
        vocab_size=TOK.vocab_size,
        text_width=32,
        vision_width=32,
        text_layers=2,
        vision_layers=2,
        embed_dim=16,
    )
    return clip.CLIP(cfg).eval()


def test_tokenizer_layout_and_round_trip():
    tokens = TOK(["A small red circle, in the Center", "a blue square"])
    assert tokens.shape == (2, TOK.context_length) and tokens.dtype == torch.long
    assert tokens[0, 0] == TOK.start_id and tokens[0, 8] == TOK.end_id
    assert (tokens[0, 9:] == TOK.pad_id).all()
    assert TOK.decode(tokens[0]) == "a small red circle in the centre"
    assert TOK.vocab_size == len(TOK.vocabulary) + 3
    again = clip.WordTokenizer.from_dict(TOK.to_dict())
    assert torch.equal(again(["a blue square"]), tokens[1:])


def test_unknown_words_suggest_the_nearest_known_word():
    with pytest.raises(clip.UnknownWordError, match="did you mean 'circle'"):
        TOK("a red circel")
    with pytest.raises(ValueError, match="the known words are a, above"):
        TOK("a crimson circle")
    with pytest.raises(ValueError, match="fit the context"):
        TOK(" ".join(["red"] * TOK.context_length))
    with pytest.raises(ValueError, match="lower-case words"):
        clip.WordTokenizer(["Red"])


def test_text_encoder_is_causal_and_pools_at_the_end_token(model):
    a = TOK(["a red circle above a blue square"])
    b = a.clone()
    b[0, 4] = TOK.ids["green"]  # change word 4 ("above" -> "green")
    states_a, states_b = model.text_states(a), model.text_states(b)
    torch.testing.assert_close(states_a[:, :4], states_b[:, :4])  # earlier: unchanged
    assert not torch.allclose(states_a[:, 4:], states_b[:, 4:])
    # the embedding is the projected state at <end>: padding after it changes nothing
    end = int((a[0] == TOK.end_id).nonzero())
    padded = a.clone()
    padded[0, end + 1 :] = TOK.ids["red"]
    torch.testing.assert_close(model.encode_text(a), model.encode_text(padded))
    manual = F.normalize(model.text.projection(states_a[0, end]), dim=-1)
    torch.testing.assert_close(model.encode_text(a)[0], manual)
    with pytest.raises(ValueError, match="<end>"):
        model.encode_text(torch.ones(1, 5, dtype=torch.long))


def test_embeddings_logits_and_loss(model):
    scenes = make_scenes(6, seed=0)
    images, tokens = scenes.images, TOK(scenes.captions)
    img, txt = model.encode_image(images), model.encode_text(tokens)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(6))
    logits = model(images, tokens)
    torch.testing.assert_close(logits, model.logit_scale.exp() * img @ txt.T)
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-4)
    target = torch.arange(6)
    manual = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    torch.testing.assert_close(clip.clip_loss(logits), manual)
    perfect = torch.eye(4) * 100
    assert clip.clip_loss(perfect).item() < 1e-6
    # two processes' shares of the batch (rows 0-2 and 3-5, each against all 6): the
    # mean of their losses is the whole batch's
    halves = [
        clip.clip_loss(logits[k : k + 3], logits.T[k : k + 3], first=k) for k in (0, 3)
    ]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, manual)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) > 100: clipped, as in CLIP
        assert model(images[:1], tokens[:1]).abs().max() <= 100 + 1e-4
        model.logit_scale.fill_(torch.tensor(1 / 0.07).log().item())
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        model.encode_image(torch.zeros(1, 3, 32, 32))


def test_training_learns_and_is_seeded():
    scenes = make_scenes(128, seed=1)
    tokens = TOK(scenes.captions)
    cfg = clip.CLIPConfig(
        vocab_size=TOK.vocab_size,
        text_width=32,
        vision_width=32,
        text_layers=1,
        vision_layers=1,
        embed_dim=16,
    )
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = clip.CLIP(cfg)
        train_cfg = train_parts.CLIPTrainConfig(
            steps=40, batch_size=32, lr=2e-3, warmup=5
        )
        runs.append(
            train_parts.train_clip(m, scenes.images, tokens, train_cfg, progress=False)
        )
    assert runs[0].losses == runs[1].losses
    assert sum(runs[0].losses[-5:]) < 0.85 * sum(runs[0].losses[:5]), runs[0].losses
    assert len(runs[0].temperatures) == 40
    with pytest.raises(ValueError, match="one caption per image"):
        train_parts.train_clip(m, scenes.images, tokens[:3], train_cfg, progress=False)


class OracleCLIP(torch.nn.Module):
    """Embeds an image by its true labels and a caption by its parsed labels (one-hot
    per object, order-aware), or with `bag=True` by which shapes, colours and sizes
    occur (not which object has them, and neither relation nor position)."""

    def __init__(self, scenes, bag=False):
        super().__init__()
        self.lookup = {img.sum().item(): i for i, img in enumerate(scenes.images)}
        self.scenes, self.bag = scenes, bag

    def _code(self, objects, relation, position):
        from diffusion_lib.data import COLOURS, POSITIONS, SHAPES, SIZES

        sizes = (len(SHAPES), len(COLOURS), len(SIZES))
        parts = [
            F.one_hot(o.clamp(min=0), n) * (o >= 0)
            for row in objects
            for o, n in zip(row, sizes)
        ]
        if self.bag:  # which words occur, not which object they belong to
            parts = [parts[0] + parts[3], parts[1] + parts[4], parts[2] + parts[5]]
            return torch.cat(parts).float()
        rel = F.one_hot(relation.clamp(min=0), 4) * (relation >= 0)
        pos = F.one_hot(position.clamp(min=0), len(POSITIONS)) * (position >= 0)
        return torch.cat(parts + [rel, pos]).float()

    def encode_image(self, images):
        s = self.scenes
        rows = [self.lookup[img.sum().item()] for img in images]
        codes = [self._code(s.objects[i], s.relation[i], s.position[i]) for i in rows]
        return F.normalize(torch.stack(codes), dim=-1)

    def encode_text(self, tokens):
        from diffusion_lib.data import parse_scene_caption

        codes = [
            self._code(*parse_scene_caption(TOK.decode(t)).values()) for t in tokens
        ]
        return F.normalize(torch.stack(codes), dim=-1)


class BagOfWordsCLIP(torch.nn.Module):
    """A bag of words: a caption's embedding is the sum of one-hot vectors of its
    words, in any order; an image's is the bag of its own caption (template 0), so it
    prefers the right caption wherever the words can tell."""

    def __init__(self, scenes):
        super().__init__()
        self.lookup = {img.sum().item(): i for i, img in enumerate(scenes.images)}
        self.scenes = scenes

    def encode_text(self, tokens):
        words = tokens >= len(clip.SPECIAL_TOKENS)
        counts = (F.one_hot(tokens, TOK.vocab_size) * words[..., None]).sum(1)
        return F.normalize(counts.float(), dim=-1)

    def encode_image(self, images):
        s = self.scenes
        rows = [self.lookup[img.sum().item()] for img in images]
        captions = [scene_caption(s.objects[i], s.relation[i], -1) for i in rows]
        return self.encode_text(TOK(captions))


def test_a_bag_of_words_ties_on_swaps_of_the_same_words_only():
    two = make_scenes(40, seed=3, two_object_fraction=1.0)
    for objects, relation in zip(two.objects, two.relation):
        right = Counter(scene_caption(objects, relation, -1).split())
        for kind, wrong in clip._swapped_captions(objects, relation).items():
            same_words = Counter(wrong.split()) == right
            assert same_words == (kind != "relation reversed"), (kind, wrong)
    bag = clip.binding_test(BagOfWordsCLIP(two), TOK, two)
    assert bag["colours swapped"] == bag["shapes swapped"] == 0.5, bag
    # "left" <-> "right", "above" <-> "below": a changed word, which a bag can see
    assert bag["relation reversed"] == 1.0, bag
    assert bag["relation reversed (scenes)"] == 40


def test_measurements_on_an_oracle_and_a_bag_of_words():
    one = make_scenes(40, seed=2, two_object_fraction=0.0)
    zs = clip.zero_shot_one_object(OracleCLIP(one), TOK, one)
    assert zs["shape"] == zs["colour"] == zs["all"] == 1.0 and zs["images"] == 40
    two = make_scenes(40, seed=3, two_object_fraction=1.0)
    oracle = clip.binding_test(OracleCLIP(two), TOK, two)
    bag = clip.binding_test(OracleCLIP(two, bag=True), TOK, two)
    assert oracle["colours swapped"] == oracle["relation reversed"] == 1.0
    assert bag["colours swapped"] == bag["shapes swapped"] == 0.5, bag
    assert oracle["colours swapped (scenes)"] < 40  # same-colour pairs are skipped
    mixed = make_scenes(30, seed=4)
    r = clip.retrieval(OracleCLIP(mixed), TOK, mixed)
    assert r["text_to_image_labels"] >= 0.9 and r["pool"] == 30, r
    with pytest.raises(ValueError, match="one-object"):
        clip.zero_shot_one_object(OracleCLIP(two), TOK, two)


def _paired(n, dim, seed, shift=0.0):
    # n exchangeable pairs: a shared direction plus independent noise on either side;
    # `shift` adds one common vector to every text embedding
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, dim, generator=g)
    image = common + 0.5 * torch.randn(n, dim, generator=g)
    text = common + 0.5 * torch.randn(n, dim, generator=g)
    return F.normalize(image, dim=-1), text + shift * F.one_hot(torch.tensor(0), dim)


def test_modality_gap_against_its_baseline():
    image, text = _paired(300, 16, seed=0)
    same = clip.modality_gap(image, text, seed=0)
    assert 0.5 * same["baseline"] < same["gap"] < 1.5 * same["baseline"], same
    image, shifted = _paired(300, 16, seed=0, shift=3.0)
    gap = clip.modality_gap(image, shifted, seed=0)
    centres = image.mean(0) - F.normalize(shifted, dim=-1).mean(0)
    assert gap["gap"] == pytest.approx(centres.norm().item(), rel=1e-5)
    assert gap["gap"] > 5 * gap["baseline"] and gap["gap"] > 5 * same["gap"], gap
    assert gap["caption_caption"] > gap["image_image"] and gap["pairs"] == 300
    assert gap["image_own_caption"] > gap["image_other_caption"], gap
    assert clip.modality_gap(image, shifted, seed=0) == gap  # seeded
    with pytest.raises(ValueError, match="one shape"):
        clip.modality_gap(image, shifted[:, :8])
    with pytest.raises(ValueError, match="one shape"):
        clip.modality_gap(image[0], shifted[0])
    with pytest.raises(ValueError, match="at least 2"):
        clip.modality_gap(image[:1], shifted[:1])
