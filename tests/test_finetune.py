"""Part IV's measured prompts (chapter 11): the captions the recipes rebuild without
images are the scenes' own, and the groups measured on new captions hold no caption
the adapted mini SD was trained on."""

import pytest

from diffusion_lib import data, finetune
from diffusion_lib.recipes import RECIPES


def test_captions_without_images_are_the_scenes_captions():
    for n, seed, split, two in ((50, 3, "train", 0.75), (40, 8, "holdout", 0.5)):
        scenes = data.make_scenes(n, 16, seed, split, two_object_fraction=two)
        assert finetune.scene_captions(n, seed, split, two) == scenes.captions
    concept = data.concept_scenes(48, finetune.CONCEPT_SEED)
    assert finetune.concept_captions(48, finetune.CONCEPT_SEED) == concept.captions


@pytest.fixture(scope="module")
def shipped_training_captions():
    return finetune.training_captions()  # the shipped scenes-lora's (a superset of
    # scenes-inversion's), from the shipped scenes-ldm and scenes-clip manifests


def test_training_captions_hold_what_the_adapters_were_trained_on(
    shipped_training_captions,
):
    seen = shipped_training_captions
    concept = data.concept_scenes(finetune.CONCEPT_IMAGES, finetune.CONCEPT_SEED)
    assert set(concept.captions) <= seen
    regular = data.make_scenes(finetune.PRESERVATION_IMAGES, 16, seed=1)
    assert set(regular.captions) <= seen
    ldm = data.make_scenes(500, 16, seed=0, two_object_fraction=0.75)  # not its first
    assert not set(ldm.captions) <= seen  # 500: a set of another size draws others


def test_measured_new_caption_groups_hold_no_training_caption(
    shipped_training_captions,
):
    """The recipes' own prompts (100 per group, seed 0): the groups named "new" hold
    no training caption, and the one-object group is named for what it is: every one
    of its captions is a training caption."""
    seen = shipped_training_captions
    prompts = finetune.measured_prompts(100, 0, seen)
    assert set(prompts) == {"concept", *finetune.OLD_GROUPS}
    for name, (captions, labels) in prompts.items():
        assert len(captions) == len(labels[0]) == 100
        for caption, *row in zip(captions, *labels):  # the labels follow the filter
            phrasings = [data.scene_caption(*row, template=t) for t in range(12)]
            assert caption in data.with_articles(phrasings), caption
        inside = sum(c in seen for c in captions)
        assert inside == (0 if name in finetune.NEW_CAPTION_GROUPS else 100), name
    assert finetune.caption_counts(100, 0, seen) == {
        name: 0 if name in finetune.NEW_CAPTION_GROUPS else 100 for name in prompts
    }


def test_new_prompts_refuses_when_too_few_are_new():
    everything = set(finetune.concept_prompts(4 * 64, 1)[0])
    for m in (4, 8, 16, 32, 64, 128):
        everything |= set(finetune.concept_prompts(m, 1)[0])
    with pytest.raises(ValueError, match="new"):
        finetune.new_prompts(finetune.concept_prompts, 4, 1, everything)


@pytest.mark.parametrize("name", ["scenes-lora", "scenes-inversion"])
def test_the_measure_stage_rewrites_the_metrics_and_not_the_weights(
    name, tiny_part4_dir, tmp_path
):
    import json
    import shutil

    from diffusion_lib import pretrained

    for f in tiny_part4_dir.iterdir():
        shutil.copy(f, tmp_path)
    before = pretrained.manifest(name, tmp_path)
    weights = (tmp_path / f"{name}.safetensors").read_bytes()
    info = RECIPES[name].run(tmp_path, quick=True, stage="measure")
    after = pretrained.manifest(name, tmp_path)
    assert (tmp_path / f"{name}.safetensors").read_bytes() == weights
    assert after["sha256"] == before["sha256"]
    same = [json.dumps(m["metrics"], sort_keys=True) for m in (after, info)]
    assert same[0] == same[1]  # (NaN != NaN: compared as JSON)
    assert set(after["metrics"]) == set(before["metrics"])
    counts = after["metrics"]["training_captions_measured"]
    assert all(counts[g] == 0 for g in finetune.NEW_CAPTION_GROUPS)
    with pytest.raises(ValueError, match="stage"):
        RECIPES[name].run(tmp_path, quick=True, stage="train")
