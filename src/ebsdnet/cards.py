"""Saved models: safetensors weights beside a JSON card, and nothing executable.

``NAME.safetensors`` holds the weights; ``NAME.json`` holds what is needed to
use them correctly (architecture and its arguments, phase and point group,
master-pattern hash, pattern shape, pattern-centre range, preprocessing) and
how they were made (command, wall time, machine, validation figures). The
card records the weights' SHA-256, checked on every load. No pickle is ever
read from a model path.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ebsdnet.models import create_model

__all__ = [
    "ModelFileError",
    "card_path",
    "load_model",
    "pc_jitter",
    "pretrained_names",
    "save_model",
    "training_seconds",
]

PRETRAINED_DIR = "pretrained"


class ModelFileError(Exception):
    """A model file is missing, unreadable or does not match its card."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(model: nn.Module, path: str | Path, card: dict) -> Path:
    """Write ``path.safetensors`` and ``path.json`` (each via a temporary file and rename)."""
    from safetensors.torch import save_file

    base = Path(path)
    if base.suffix in (".json", ".safetensors"):
        base = base.with_suffix("")
    weights = base.with_suffix(".safetensors")
    tmp = weights.with_name(weights.name + ".partial")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    card = {
        **card,
        "architecture": model.registry_name,
        "architecture_args": model.config,
        "weights_sha256": _sha256(tmp),
    }
    card_file = base.with_suffix(".json")
    tmp_card = card_file.with_name(card_file.name + ".partial")
    tmp_card.write_text(json.dumps(card, indent=2, default=list) + "\n")
    os.replace(tmp, weights)
    os.replace(tmp_card, card_file)
    return card_file


def training_seconds(card: dict) -> float:
    """Wall time that made a model: its own run plus those it was fine-tuned from.

    >>> training_seconds({"wall_time_s": 60.0, "initialised_from": {"wall_time_s": 30.0}})
    90.0
    """
    total = 0.0
    while card:
        total += float(card.get("wall_time_s") or 0.0)
        card = card.get("initialised_from")
    return total


def pc_jitter(card: dict) -> float:
    """Half-width of the pattern-centre range a model was trained on (held-out sets use it).

    >>> round(pc_jitter({"pc_range": [[0.395, 0.455], [0.183, 0.243], [0.471, 0.531]]}), 6)
    0.03
    """
    lo, hi = card["pc_range"][0]
    return (hi - lo) / 2


def pretrained_names() -> list[str]:
    """Names of the models shipped inside the package (e.g. ``ni-60``)."""
    folder = resources.files("ebsdnet") / PRETRAINED_DIR
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def card_path(name_or_path: str | Path) -> Path:
    """The JSON card of a shipped model's name, of a saved model's path, or of a run
    folder (its ``model.json``)."""
    if str(name_or_path) in pretrained_names():
        return Path(str(resources.files("ebsdnet") / PRETRAINED_DIR / f"{name_or_path}.json"))
    path = Path(name_or_path)
    if path.is_dir():
        return path / "model.json"
    if path.suffix in ("", ".safetensors"):
        path = path.with_suffix(".json")
    return path


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu"):
    """Load a shipped model by name or a saved one by path; returns ``(model, card)``.

    Raises
    ------
    ModelFileError
        If the card or weights are missing, unreadable, or the weights' checksum
        differs from the card's.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card_file = card_path(name_or_path)
    weights = card_file.with_suffix(".safetensors")
    if not card_file.is_file() or not weights.is_file():
        known = ", ".join(pretrained_names()) or "none"
        raise ModelFileError(
            f"model {name_or_path!s}: need {card_file.name} and {weights.name} "
            f"(shipped models: {known})"
        )
    try:
        card = json.loads(card_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"model card {card_file} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict) or "weights_sha256" not in card:
        raise ModelFileError(f"model card {card_file} has no weights checksum")
    if _sha256(weights) != card["weights_sha256"]:
        raise ModelFileError(f"{weights} does not match the checksum in {card_file.name}")
    try:
        model = create_model(card["architecture"], **card.get("architecture_args", {}))
        model.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"cannot load {weights}: {exc}") from exc
    return model.to(device).eval(), card
