"""pretrained.manifest and load_pretrained fail clearly, naming the command that
rebuilds the checkpoint. (Kept apart from test_pretrained.py, which checks the shipped
files.)"""

import json
import re
import shutil

import pytest

from diffusion_lib import pretrained

REBUILD = re.escape("python -m diffusion_lib.recipes shapes-ddpm")


def test_a_missing_checkpoint_names_its_recipe(tmp_path):
    with pytest.raises(FileNotFoundError, match=REBUILD):
        pretrained.load_pretrained("shapes-ddpm", directory=tmp_path)
    with pytest.raises(FileNotFoundError, match=REBUILD):
        pretrained.manifest("shapes-ddpm", directory=tmp_path)


@pytest.fixture
def copied(tmp_path):
    """A copy of the shipped shapes-ddpm files, to damage."""
    for suffix in (".safetensors", ".json"):
        src = pretrained.checkpoint_path("shapes-ddpm").with_suffix(suffix)
        shutil.copy(src, tmp_path / src.name)
    return tmp_path


def test_a_manifest_without_sha256_is_rejected(copied):
    path = copied / "shapes-ddpm.json"
    info = json.loads(path.read_text())
    del info["sha256"]
    path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=f"no sha256.*{REBUILD}"):
        pretrained.manifest("shapes-ddpm", directory=copied)
    with pytest.raises(ValueError, match=f"no sha256.*{REBUILD}"):
        pretrained.load_pretrained("shapes-ddpm", directory=copied)


def test_a_manifest_that_is_not_json_is_rejected(copied):
    (copied / "shapes-ddpm.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"not valid JSON.*{REBUILD}"):
        pretrained.manifest("shapes-ddpm", directory=copied)
    with pytest.raises(ValueError, match=f"not valid JSON.*{REBUILD}"):
        pretrained.load_pretrained("shapes-ddpm", directory=copied)


def test_the_copied_checkpoint_loads(copied):
    model, info = pretrained.load_pretrained("shapes-ddpm", directory=copied)
    assert info["recipe"] == "shapes-ddpm" and not model.training
