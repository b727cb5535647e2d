"""Saving and loading model weights, and the shipped default weights."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Union

import torch

from .network import RunTimeModel

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "default.pt"


def save_model(model: RunTimeModel, path: Union[str, Path], meta: Optional[dict] = None) -> None:
    """Writes hyper-parameters, float32 weights and ``meta`` (atomically: a reader never sees
    half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"hparams": model.hparams, "state_dict": state, "meta": meta or {}}, tmp)
    tmp.replace(path)


def load_model(path: Union[str, Path, None] = None) -> RunTimeModel:
    """The model stored at ``path`` (default: the shipped weights), in eval mode.
    Raises ValueError naming ``model`` if the file is missing or not a weights file."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = RunTimeModel(**blob["hparams"])
        model.load_state_dict(blob["state_dict"])
    except FileNotFoundError:
        raise ValueError(f"model weights file {str(path)!r} does not exist") from None
    except Exception as err:  # a corrupt or foreign file: name it
        raise ValueError(f"model {str(path)!r} is not a run-time model weights file: {err}") from None
    model.eval()
    return model


def weights_hash(model: RunTimeModel) -> str:
    """sha256 of the weights (what ranks must agree on), independent of the file's metadata."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
