"""Checkpoints: config + weights + training state in one file, loaded with weights_only=True.

A checkpoint rebuilds its model alone: `model, ckpt = load_model("runs/x/best.pt")`.
"""

from __future__ import annotations

import warnings

from pathlib import Path
from typing import Any

import torch

from aekit.config import ModelConfig
from aekit.images import atomic_output

CHECKPOINT_FORMAT = "aekit-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt, foreign or of an unknown version."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Save atomically: a temp file in the same folder, then rename over path."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


class WeightsError(RuntimeError):
    """A third-party weights file that is missing, unreadable or not what it should be (one line)."""


def load_state_file(path: str | Path, what: str) -> dict[str, Any]:
    """A third-party state_dict file (e.g. ImageNet weights), loaded with weights_only=True;
    errors name the file and what it should have been (`what`, e.g. "VGG19")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: not a readable {what} state_dict ({_load_failure(e)})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a {what} state_dict")
    return state


def _load_failure(e: Exception) -> str:
    """torch.load's exception -> a short reason without torch's advice to the reader (which points at
    torch's issue tracker or at weights_only=False, neither of which a user of a checkpoint should do)."""
    text = str(e)
    if "zip archive" in text or "central directory" in text:
        return "truncated or corrupt: not a complete torch zip file"
    if "Unpickler error" in text:
        after = [ln.strip() for ln in text.split("Unpickler error:", 1)[1].splitlines() if ln.strip()]
        detail = after[0] if after and not after[0].startswith("Check the documentation") else ""
        return "it holds objects other than tensors and plain values" + (f": {detail}" if detail else "")
    return f"not a torch file ({type(e).__name__})"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable aekit checkpoint ({_load_failure(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an aekit checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {ckpt.get('version')} is not supported (expected {CHECKPOINT_VERSION})"
        )
    for key in ("model_config", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    return ckpt


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint, weights loaded, in eval mode."""
    from aekit.models import build_model

    ckpt = load_checkpoint(path)
    try:
        model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    except (ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: weights do not match the stored config ({e})") from None
    missing = [k for k in missing if not k.startswith("prior.")]  # training-only rate model
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the stored config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval(), ckpt
