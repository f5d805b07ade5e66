import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from diffusion_lib import data

# sha256 of make_shapes(64, 16, seed=3).images, computed before the scenes were added
PART_ONE_HASH = "3896e70b24a991f23e707ea7ecfedfa327b1860a40233cd6e0afc97c968bea32"
COLOUR_NAMES = tuple(data.COLOURS)


@pytest.fixture(scope="module")
def scenes():
    return data.make_scenes(2000, seed=11, split="all")


def test_part_one_shapes_unchanged():
    images = data.make_shapes(64, 16, seed=3).images
    assert hashlib.sha256(images.numpy().tobytes()).hexdigest() == PART_ONE_HASH


def test_scenes_are_deterministic_and_shaped():
    a, b = data.make_scenes(64, seed=5), data.make_scenes(64, seed=5)
    for name in ("images", "objects", "relation", "position", "centres", "radii"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.equal(x.nan_to_num(-9), y.nan_to_num(-9)), name
    assert a.captions == b.captions
    c = data.make_scenes(64, seed=6)
    assert not torch.equal(a.images, c.images) and a.captions != c.captions
    assert a.images.shape == (64, 3, 64, 64) and a.images.dtype == torch.float32
    assert a.objects.shape == (64, 2, 3) and a.objects.dtype == torch.long
    assert a.relation.shape == a.position.shape == (64,)
    assert a.centres.shape == (64, 2, 2) and a.radii.shape == (64, 2)
    assert a.images.min() >= -1 and a.images.max() <= 1 and len(a.captions) == 64
    assert data.make_scenes(4, image_size=32).images.shape == (4, 3, 32, 32)
    image, caption = a[0]
    assert image.shape == (3, 64, 64) and caption == a.captions[0] and len(a) == 64


def test_label_encoding_is_consistent(scenes):
    two = scenes.num_objects == 2
    assert ((scenes.objects[two] >= 0).all()) and (scenes.objects[~two, 1] == -1).all()
    assert (scenes.relation[two] >= 0).all() and (scenes.relation[~two] == -1).all()
    assert (scenes.position[~two] >= 0).all() and (scenes.position[two] == -1).all()
    assert scenes.centres[~two, 1].isnan().all() and scenes.radii[~two, 1].isnan().all()
    assert (
        not scenes.centres[two].isnan().any() and not scenes.centres[:, 0].isnan().any()
    )
    assert set(scenes.relation[two].tolist()) == set(range(len(data.RELATIONS)))
    assert set(scenes.position[~two].tolist()) == set(range(len(data.POSITIONS)))


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_two_object_fraction(fraction):
    d = data.make_scenes(200, seed=2, two_object_fraction=fraction)
    assert (d.num_objects == 2).sum() == round(200 * fraction)


def test_invalid_arguments_name_the_options():
    with pytest.raises(ValueError, match="expected one of"):
        data.make_scenes(4, split="validation")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.make_scenes(4, two_object_fraction=1.5)
    with pytest.raises(ValueError, match="image_size >= 16"):
        data.make_scenes(4, image_size=8)


def bounding_boxes(masks):
    """(row min, row max, column min, column max) of each mask's covered pixels."""
    rows, cols = masks.amax(-1) > 0, masks.amax(-2) > 0
    idx = torch.arange(masks.shape[-1])
    first = lambda m: torch.where(m, idx, 10**6).amin(-1)
    last = lambda m: torch.where(m, idx, -1).amax(-1)
    return first(rows), last(rows), first(cols), last(cols)


def test_objects_inside_apart_and_where_the_labels_say(scenes):
    masks = data.scene_masks(scenes.objects, scenes.centres, scenes.radii)
    present = scenes.objects[..., 0] >= 0
    assert (masks.amax((-2, -1)) == 1).eq(present).all(), "every object is drawn"
    ring = masks.clone()
    ring[..., 1:-1, 1:-1] = 0
    assert ring.max() == 0, "no object touches the edge"
    grown = F.max_pool2d(masks[:, 0], 3, stride=1, padding=1)
    assert not ((grown > 0) & (masks[:, 1] > 0)).any(), "a blank pixel between objects"
    # the centres label is the centroid of what was drawn
    grid = (torch.arange(64) + 0.5) / 64
    area = masks.sum((-2, -1))
    rows = (masks.sum(-1) * grid).sum(-1) / area
    cols = (masks.sum(-2) * grid).sum(-1) / area
    centroid = torch.stack([rows, cols], -1)[present]
    assert (centroid - scenes.centres[present]).abs().max() < 0.3 / 64
    # the colour at each centre is the object's colour (+-0.04 jitter)
    palette = torch.tensor(list(data.COLOURS.values()))
    for i, k in zip(*torch.nonzero(present, as_tuple=True)):
        r, c = (scenes.centres[i, k] * 64).long().tolist()
        pixel = (scenes.images[i, :, r, c] + 1) / 2
        expected = palette[scenes.objects[i, k, 1]]
        assert (pixel - expected).abs().max() <= 0.04 + 1e-5


def test_relation_is_unambiguous(scenes):
    two = scenes.num_objects == 2
    masks = data.scene_masks(scenes.objects, scenes.centres, scenes.radii)[two]
    rmin, rmax, cmin, cmax = bounding_boxes(masks)  # each [M, 2 objects]
    blank = {  # pixels strictly between the two boxes along the relation's axis
        0: cmin[:, 1] - cmax[:, 0] - 1,  # object 0 to the left of object 1
        1: cmin[:, 0] - cmax[:, 1] - 1,
        2: rmin[:, 1] - rmax[:, 0] - 1,  # object 0 above object 1
        3: rmin[:, 0] - rmax[:, 1] - 1,
    }
    relation, centres = scenes.relation[two], scenes.centres[two]
    extents = torch.tensor([1.0, 0.85 * math.sqrt(2), 1.15])[scenes.objects[two, :, 0]]
    extents = extents * scenes.radii[two]  # circumradius of each shape [M, 2]
    for rel, gap in blank.items():
        chosen = relation == rel
        assert chosen.sum() > 100
        assert (gap[chosen] >= 3).all(), f"{data.RELATIONS[rel]}: >= 3 blank pixels"
        main, cross = (1, 0) if rel < 2 else (0, 1)
        offset = centres[chosen, 1] - centres[chosen, 0]  # object 1 - object 0
        sign = 1 if rel in (0, 2) else -1
        apart = sign * offset[:, main] - extents[chosen].sum(1)
        assert apart.min() >= data.SCENE_GAP - 1e-6 and data.SCENE_GAP * 64 >= 4
        assert (offset[:, cross].abs() <= 0.25 * offset[:, main].abs()).all()
    # every shape's circumscribed circle stays SCENE_BORDER (2 px) inside the image
    present = scenes.objects[..., 0] >= 0
    reach = torch.tensor([1.0, 0.85 * math.sqrt(2), 1.15])[scenes.objects[..., 0]]
    reach = (reach * scenes.radii)[present][:, None]
    inner = scenes.centres[present]
    assert (inner - reach).min() >= data.SCENE_BORDER - 1e-6
    assert (inner + reach).max() <= 1 - data.SCENE_BORDER + 1e-6
    assert data.SCENE_BORDER * 64 >= 2


def test_two_large_squares_fit_side_by_side():
    n = 400  # the widest pair (a square reaches 0.85 * sqrt(2) r from its centre)
    objects = torch.tensor([[1, 0, 1], [1, 2, 1]]).repeat(n, 1, 1)
    relation = torch.arange(n) % len(data.RELATIONS)
    _, centres, radii = data.render_scenes(objects, relation, torch.full((n,), -1))
    masks = data.scene_masks(objects, centres, radii)
    rmin, rmax, cmin, cmax = bounding_boxes(masks)
    assert rmin.min() >= 2 and cmin.min() >= 2 and rmax.max() <= 61 and cmax.max() <= 61
    between = torch.stack(
        [cmin[:, 1] - cmax[:, 0], cmin[:, 0] - cmax[:, 1]]
        + [rmin[:, 1] - rmax[:, 0], rmin[:, 0] - rmax[:, 1]],
        1,
    )[torch.arange(n), relation]
    assert between.min() - 1 >= 3


def test_train_split_avoids_held_out_pairs_and_pairings():
    train = data.make_scenes(3000, seed=0, split="train")
    pair, pairing = data.scene_held_out(train.objects)
    assert not pair.any() and not pairing.any()
    two = train.num_objects == 2
    colours = {tuple(sorted(p)) for p in train.objects[two][:, :, 1].tolist()}
    held = {
        tuple(sorted(COLOUR_NAMES.index(c) for c in p)) for p in data.HELD_OUT_PAIRINGS
    }
    assert colours.isdisjoint(held)
    seen = {(s, c) for s, c, _ in train.objects[two].view(-1, 3).tolist()}
    assert len(seen) == len(data.SHAPES) * len(COLOUR_NAMES) - len(data.HELD_OUT)
    holdout = data.make_scenes(1000, seed=0, split="holdout")
    pair, pairing = data.scene_held_out(holdout.objects)
    assert (pair | pairing).all() and pairing.any() and (pairing & ~pair).any()
    assert pair[holdout.num_objects == 1].all()
    found = {tuple(sorted(p)) for p in holdout.objects[pairing][:, :, 1].tolist()}
    assert found == held
    everything = data.make_scenes(1000, seed=0, split="all")
    assert (~torch.stack(data.scene_held_out(everything.objects)).any(0)).any()
    assert torch.stack(data.scene_held_out(everything.objects)).any(0).any()


def test_scene_held_out_by_hand():
    objects = torch.tensor(
        [
            [[2, 2, 0], [-1, -1, -1]],  # a blue triangle: held-out pair
            [[0, 0, 0], [1, 1, 1]],  # red circle + green square: held-out pairing
            [[0, 1, 0], [1, 1, 1]],  # green + green: neither
            [[0, 0, 0], [-1, -1, -1]],  # a red circle alone: neither
        ]
    )
    pair, pairing = data.scene_held_out(objects)
    assert pair.tolist() == [True, False, False, False]
    assert pairing.tolist() == [False, True, False, False]


def agrees(parsed, objects, relation, position, omit=(False,) * 3):
    """The parse gives the labels back, with -1 exactly where the caption left a size
    or a lone object's position out."""
    want = objects.clone()
    present = want[:, 0] >= 0
    want[:, 2] = torch.where(torch.tensor(omit[:2]) & present, -1, want[:, 2])
    lone = objects[1, 0] < 0
    return (
        torch.equal(parsed["objects"], want)
        and parsed["relation"] == relation
        and parsed["position"] == (-1 if lone and omit[2] else position)
    )


@pytest.mark.parametrize(
    "omit", [(False,) * 3, (True, False, False), (False, True, True), (True,) * 3]
)
def test_every_phrasing_round_trips_through_the_parser(omit):
    objects, relation, position = data.sample_scene_labels(
        1000, seed=3, split="all", two_object_fraction=0.5
    )
    captions = set()
    for template in range(
        max(len(data.shapes._TEMPLATES), len(data.scenes._PAIR_TEMPLATES))
    ):
        for labels in zip(objects, relation, position):
            caption = data.scene_caption(*labels, template, omit)
            captions.add(caption)
            assert agrees(data.parse_scene_caption(caption), *labels, omit), caption
    assert len(captions) > 1000  # thousands of distinct captions


def test_captions_of_a_data_set_parse_back_to_its_labels():
    d = data.make_scenes(400, seed=1)
    assert len({c.split()[0] for c in d.captions}) > 2, "several phrasings"
    parsed = [data.parse_scene_caption(c) for c in d.captions]
    sizes_left_out = sum(
        int(((p["objects"][:, 2] == -1) & (p["objects"][:, 0] >= 0)).sum())
        for p in parsed
    )
    named = int((d.objects[:, :, 0] >= 0).sum())
    print(f"{sizes_left_out} of {named} sizes left out")
    assert 0.15 < sizes_left_out / named < 0.35  # SCENE_OMIT = 0.25
    for i, (caption, p) in enumerate(zip(d.captions, parsed)):
        omit = (p["objects"][:, 2] == -1) & (d.objects[i, :, 0] >= 0)
        lone_unplaced = bool(d.objects[i, 1, 0] < 0 and p["position"] == -1)
        omit = (*omit.tolist(), lone_unplaced)
        assert agrees(p, d.objects[i], d.relation[i], d.position[i], omit), caption


def test_parser_reads_both_orders_of_mention():
    a = data.parse_scene_caption(
        "A small red circle to the left of a large blue square"
    )
    b = data.parse_scene_caption(
        "a large blue square with a small red circle to its left"
    )
    for parsed in (a, b):
        assert parsed["objects"].tolist() == [[0, 0, 0], [1, 2, 1]]
        assert parsed["relation"] == 0 and parsed["position"] == -1
    c = data.parse_scene_caption("a large red circle in the top left")
    assert c["objects"].tolist() == [[0, 0, 1], [-1, -1, -1]]
    assert c["relation"] == -1 and c["position"] == 0
    d = data.parse_scene_caption("a green triangle above a yellow circle")
    assert d["objects"].tolist() == [[2, 1, -1], [0, 3, -1]] and d["relation"] == 2
    e = data.parse_scene_caption("there is a red square")
    assert e["objects"].tolist() == [[1, 0, -1], [-1, -1, -1]] and e["position"] == -1


@pytest.mark.parametrize(
    "caption, message",
    [
        ("a small red hexagon to the left of a large blue square", "unknown words"),
        ("a small crimson circle in the centre", "unknown words"),
        ("a small red circle to the left of a blue blue square", "exactly one colour"),
        ("a small circle above a large blue square", "exactly one colour"),
        ("a small red circle a large blue square", "exactly one of"),
        ("a small red circle above a large blue square below", "exactly one of"),
        ("a small red circle in the centre in the top left", "more than one position"),
        ("a small red circle in the top left above", "cannot have a relation"),
        ("a small red circle above a large blue square in the centre", "position"),
        ("a small red circle to the left of", "cannot have a relation"),
        ("a small red circle to the left of a large square circle", "one or two"),
        ("a small red circle with a large blue square to the left of", "object 0"),
        ("a large blue square to its left a small red circle", "with"),
        ("a small red large circle above a blue square", "more than one size"),
    ],
)
def test_parser_rejects_bad_captions(caption, message):
    with pytest.raises(ValueError, match=message):
        data.parse_scene_caption(caption)


def test_generation_speed():
    import time

    start = time.perf_counter()
    data.make_scenes(2000, seed=0)
    assert time.perf_counter() - start < 10, "2,000 scenes should take a few seconds"


def test_scene_labels_are_a_named_record_that_still_unpacks():
    from diffusion_lib.data import SceneLabels, make_scenes, sample_scene_labels

    labels = sample_scene_labels(6, seed=3, split="train", two_object_fraction=0.5)
    assert isinstance(labels, SceneLabels) and labels.num_scenes == 6
    objects, relation, position = labels  # the old triple
    assert objects is labels.objects and relation is labels.relation
    assert labels.num_objects.tolist().count(2) == 3
    # one-object scenes have a position and no relation; two-object scenes the reverse
    assert ((labels.relation >= 0) == (labels.num_objects == 2)).all()
    assert ((labels.position >= 0) == (labels.num_objects == 1)).all()
    two = labels.select(labels.num_objects == 2)
    assert two.num_scenes == 3 and (two.relation >= 0).all()
    twice = labels.repeat_interleave(2)
    assert torch.equal(twice.objects[0], twice.objects[1])
    assert torch.equal(twice.position[::2], labels.position)
    assert torch.equal(labels.roll(1).relation, labels.relation.roll(1))
    back = SceneLabels.cat([labels.select(slice(0, 2)), labels.select(slice(2, 6))])
    assert all(torch.equal(a, b) for a, b in zip(back, labels))
    scenes = make_scenes(4, seed=8)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            scenes.labels, (scenes.objects, scenes.relation, scenes.position)
        )
    )
