"""Checkpoints as the course ships them: NAME.safetensors (the weights) beside
NAME.json (the manifest: recipe, config, seed, training time and hardware, metrics, and
two hashes, sha256 of the weights file and manifest_sha256 of the manifest's settings).

This module reads and checks them (what inference needs); training writes them
(train.save_checkpoint). Every failure says which command rebuilds the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors.torch import load_file


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# manifest fields that describe the run or its measurements, not the model: every other
# field (config, schedule, prediction type, guidance scale, word, rank ...) is sealed by
# manifest_sha256, so that editing it makes loading fail instead of drawing noise
UNSEALED = frozenset(
    {
        "metrics",
        "sha256",
        "manifest_sha256",
        "training_seconds",
        "training_compute",
        "hardware",
        "loss_curve",
        "final_loss",
        "encode_seconds",
        "previous_recipe",  # an earlier model's measurement, kept for a comparison
    }
)


def manifest_hash(manifest: dict) -> str:
    """sha256 of a manifest's sealed fields (all but UNSEALED), as JSON with sorted
    keys: what the model is and how it must be used."""
    plain = json.loads(json.dumps(manifest))  # tuples as lists, as read back
    sealed = {k: v for k, v in plain.items() if k not in UNSEALED}
    text = json.dumps(sealed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def rebuild_command(recipe: str | None) -> str:
    """The command that rebuilds a checkpoint, for error messages."""
    return f"python -m diffusion_lib.recipes {recipe or 'NAME'}"


def read_manifest(path: str | Path, recipe: str | None = None) -> dict:
    """The JSON manifest at `path`; FileNotFoundError / ValueError with the command that
    rebuilds it when it is missing, not valid JSON, or has no sha256."""
    path = Path(path)
    hint = f"rebuild it with `{rebuild_command(recipe)}`"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint manifest {path} is missing; {hint}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"checkpoint manifest {path} is not valid JSON ({err}); {hint}"
        ) from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), str):
        raise ValueError(
            f"checkpoint manifest {path} has no sha256 (it must be a JSON object with "
            f'a "sha256" string, as save_checkpoint writes); {hint}'
        )
    return manifest


def load_checkpoint(
    path: str | Path, verify: bool = True, recipe: str | None = None
) -> tuple[dict, dict]:
    """Read (state_dict in float32, manifest) from `path`, checking the sha256 in its
    manifest. `recipe` names the recipe that rebuilds the file, for error messages."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint file {path} is missing; rebuild it with "
            f"`{rebuild_command(recipe)}`"
        )
    manifest_path = path.with_suffix(".json")
    manifest = read_manifest(manifest_path, recipe)
    recipe = recipe or manifest.get("recipe")
    rebuild = f"rebuild it with `{rebuild_command(recipe)}`"
    if verify and sha256_file(path) != manifest["sha256"]:
        raise ValueError(
            f"checkpoint {path} is corrupt: its sha256 does not match "
            f"{manifest_path.name}; {rebuild}"
        )
    if verify and manifest.get("manifest_sha256") != manifest_hash(manifest):
        what = (
            "has no manifest_sha256"
            if "manifest_sha256" not in manifest
            else (
                "was changed after it was written: its settings (config, schedule, "
                "prediction type, guidance scale ...) no longer match its "
                "manifest_sha256"
            )
        )
        raise ValueError(
            f"checkpoint manifest {manifest_path} is corrupt: it {what}; {rebuild}"
        )
    try:
        tensors = load_file(str(path))
    except Exception as err:  # a truncated or foreign file, even if re-hashed
        raise ValueError(
            f"checkpoint {path} is corrupt: not a valid safetensors file "
            f"({type(err).__name__}: {str(err)[:200]}); {rebuild}"
        ) from err
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    return state, manifest


def load_into(module, state: dict, path, recipe: str | None = None, strict=True):
    """module.load_state_dict(state), failing with the "corrupt/mismatch, rebuild"
    message when the tensors do not fit the module built from the manifest's config."""
    try:
        return module.load_state_dict(state, strict=strict)
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:300]
        raise ValueError(
            f"checkpoint {path} does not fit its manifest's config ({detail}): the "
            f"weights and the manifest are from different models; rebuild it with "
            f"`{rebuild_command(recipe)}`"
        ) from err
