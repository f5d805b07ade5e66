"""A checkpoint is verified whole: its weights (sha256) and the manifest's fields that
change behaviour (manifest_sha256); a file that is not safetensors, or whose tensors do
not fit the manifest's config, fails with the same clear message."""

import json
import shutil

import pytest

from diffusion_lib import pretrained
from diffusion_lib.checkpoints import UNSEALED, manifest_hash, sha256_file

ALL = pretrained.available()


def copy_checkpoints(tmp_path, *names):
    for name in names:
        for suffix in (".safetensors", ".json"):
            source = pretrained.checkpoint_path(name).with_suffix(suffix)
            shutil.copy(source, tmp_path / source.name)
    return tmp_path


def edit(tmp_path, name, change):
    path = tmp_path / f"{name}.json"
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info, indent=2, sort_keys=True))


@pytest.mark.parametrize("name", ALL)
def test_every_shipped_manifest_is_sealed(name):
    info = pretrained.manifest(name)
    assert info["manifest_sha256"] == manifest_hash(info), name
    assert "config" in info or name in pretrained.ADAPTERS
    assert not {"config", "schedule", "prediction_type", "guidance_scale"} & UNSEALED


@pytest.mark.parametrize(
    "what, change",
    [
        ("schedule kind", lambda i: i["schedule"].update(kind="linear")),
        ("prediction type", lambda i: i.update(prediction_type="v")),
        ("number of heads", lambda i: i["config"].update(heads=1)),
        ("guidance scale", lambda i: i.update(guidance_scale=9.0)),
        ("a new field", lambda i: i.update(clip_sample=False)),
    ],
)
def test_editing_a_setting_of_the_manifest_fails_to_load(tmp_path, what, change):
    copy_checkpoints(tmp_path, "shapes-ddpm")
    info = json.loads((tmp_path / "shapes-ddpm.json").read_text())
    if what == "number of heads":
        assert "heads" in info["config"]
    edit(tmp_path, "shapes-ddpm", change)
    with pytest.raises(ValueError, match="changed after it was written.*rebuild it"):
        pretrained.load_pretrained("shapes-ddpm", directory=tmp_path)


def test_the_measurements_may_be_rewritten(tmp_path):
    copy_checkpoints(tmp_path, "shapes-ddpm")
    edit(tmp_path, "shapes-ddpm", lambda i: i.update(metrics={"fid": 1.0}))
    model, info = pretrained.load_pretrained("shapes-ddpm", directory=tmp_path)
    assert info["metrics"] == {"fid": 1.0}


def test_a_rehashed_truncated_file_is_reported_corrupt(tmp_path):
    copy_checkpoints(tmp_path, "shapes-evaluator")
    path = tmp_path / "shapes-evaluator.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    edit(tmp_path, "shapes-evaluator", lambda i: i.update(sha256=sha256_file(path)))
    with pytest.raises(ValueError, match="not a valid safetensors file.*rebuild it"):
        pretrained.load_pretrained("shapes-evaluator", directory=tmp_path)


def test_another_models_weights_are_reported_as_a_mismatch(tmp_path):
    copy_checkpoints(tmp_path, "scenes-ldm", "shapes-ddpm")
    shutil.copy(
        tmp_path / "shapes-ddpm.safetensors", tmp_path / "scenes-ldm.safetensors"
    )
    new = sha256_file(tmp_path / "scenes-ldm.safetensors")
    edit(tmp_path, "scenes-ldm", lambda i: i.update(sha256=new))
    with pytest.raises(ValueError, match="does not fit its manifest's config.*rebuild"):
        pretrained.load_pretrained("scenes-ldm", directory=tmp_path)


def test_an_unsealed_manifest_is_refused(tmp_path):
    copy_checkpoints(tmp_path, "shapes-evaluator")
    edit(tmp_path, "shapes-evaluator", lambda i: i.pop("manifest_sha256"))
    with pytest.raises(ValueError, match="has no manifest_sha256"):
        pretrained.load_pretrained("shapes-evaluator", directory=tmp_path)


def test_adapters_are_verified_whole_too(tmp_path):
    from diffusion_lib.pipelines import MiniStableDiffusion

    copy_checkpoints(tmp_path, "scenes-ldm", "scenes-vae", "scenes-clip", "scenes-lora")
    edit(tmp_path, "scenes-lora", lambda i: i.update(rank=i["rank"] * 2))
    pipe = MiniStableDiffusion.from_pretrained("cpu", tmp_path)
    with pytest.raises(ValueError, match="changed after it was written"):
        pipe.load_lora_weights(directory=tmp_path)
