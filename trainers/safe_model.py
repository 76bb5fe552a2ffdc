"""Which stored generator models ganray loads: MLflow ``pytorch`` models in the ``pt2`` format only.

MLflow's pytorch flavor loads ``data/model.pth`` with pickle (``torch.load``) whenever that file is
there, and a pickle can run any code as it loads. A ``pt2`` model (``torch.export``) is a graph and
tensors. This check reads only files (the ``MLmodel`` and the model's data folder), so ``generate``
and the server refuse a pickle-format model before anything of it is deserialised. MLflow itself
checks that a ``pt2`` archive carries no pickle as long as pickle loading is not allowed in its
environment (``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``); loaders keep it disallowed while they load.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from trainers.errors import GanrayError

PT2_FILE = "model.pt2"
PICKLE_FILES = ("model.pth", "pickle_module_info.txt")
PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


class UnsafeModelError(GanrayError, ValueError):
    """A stored model ganray refuses to load (not a pt2 pytorch model); the message names it."""


def check_pt2_model(model_dir: str | Path, where: str) -> Path:
    """The pt2 archive of a downloaded MLflow model folder; UnsafeModelError naming where (the model URI)
    unless it is a pytorch model stored in the pt2 format, with no pickle file beside it."""
    model_dir = Path(model_dir)
    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UnsafeModelError(f"{where}: its MLmodel file cannot be read ({type(err).__name__})") from None
    flavors = mlmodel.get("flavors") if isinstance(mlmodel, dict) else None
    flavor = flavors.get("pytorch") if isinstance(flavors, dict) else None
    if not isinstance(flavor, dict):
        raise UnsafeModelError(f"{where} is not a pytorch model (flavors: {', '.join(flavors or {}) or 'none'})")
    data = model_dir / str(flavor.get("model_data") or "data")
    pickled = [name for name in PICKLE_FILES if (data / name).exists()]
    if pickled or not (data / PT2_FILE).is_file():
        found = ", ".join(pickled) or "no model.pt2"
        raise UnsafeModelError(
            f"{where} is not stored in the pt2 format (serialization_format pickle: {found}); ganray loads only "
            "pt2 generators, since loading a pickle could run code. Register it again from its checkpoint")
    return data / PT2_FILE


@contextlib.contextmanager
def pickle_refused() -> Iterator[None]:
    """MLflow refuses pickle payloads (and checks a pt2 archive for them) while this is open, whatever
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION says outside it."""
    saved = os.environ.get(PICKLE_ENV)
    os.environ[PICKLE_ENV] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(PICKLE_ENV, None)
        else:
            os.environ[PICKLE_ENV] = saved


def load_checked(model_dir: str | Path, where: str, load: Callable[[str], Any]) -> Any:
    """The generator in a downloaded MLflow model folder, loaded by `load` (the caller's MLflow loader:
    trainers/ never imports MLflow) only once the folder passed :func:`check_pt2_model`, with pickle
    refused while it loads; in eval mode. UnsafeModelError as check_pt2_model says; load's own errors
    pass through."""
    check_pt2_model(model_dir, where)
    with pickle_refused():
        generator = load(str(model_dir))
    try:
        generator.eval()
    except NotImplementedError:  # an exported (pt2) generator is traced in eval mode already
        pass
    return generator
