"""Which stored generator models ganray loads: MLflow ``pytorch`` models in the ``pt2`` format only,
carrying no code, with their data inside their own folder.

A registered version is untrusted input (whoever can register one must not run code where it loads):

- MLflow's pytorch flavor loads ``data/model.pth`` with pickle (``torch.load``) whenever that file is
  there, and a pickle can run any code as it loads. A ``pt2`` model (``torch.export``) is a graph and
  tensors.
- A ``code`` entry in the MLmodel makes MLflow put that folder first on ``sys.path``, where a planted
  ``json.py`` or ``sympy.py`` runs at the next import of that name; a version with a ``code`` entry
  (anywhere in its MLmodel) or a ``code/`` folder is refused.
- ``model_data`` is joined to the model folder as it stands: ``..``, an absolute path or a symlink
  would load a file from elsewhere on the node. It must resolve inside the model folder.

This check reads only files (the ``MLmodel`` and the model's folder), so ``generate`` and the server
refuse such a version before anything of it is deserialised or imported. MLflow itself checks that a
``pt2`` archive carries no pickle record beyond what torch's ``weights_only`` loader accepts, as long
as pickle loading is not allowed in its environment (``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``);
loaders keep it disallowed while they load (:func:`pickle_refused`).

A StyleGAN2 version's exported parts (``trainers.exports``: two more pt2 archives and an ``.npz`` of
noise maps, named by its metadata's ``exports``) get the same checks in :func:`load_exports`: each
file inside the model folder, each archive through the caller's pickle-free check before
``torch.export`` reads it (the one MLflow runs on ``model.pt2``), the maps read with
``allow_pickle=False``, bounded, and of the shapes the metadata states.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from trainers.errors import GanrayError

PT2_FILE = "model.pt2"
MAX_NOISE_BYTES = 256 << 20  # a noise.npz larger than this is no ganray export (1024x1024 maps take ~90 MB)
PICKLE_FILES = ("model.pth", "pickle_module_info.txt")
PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
CODE_KEY = "code"  # MLflow's key (FLAVOR_CONFIG_CODE) for a folder it puts on sys.path at load


class UnsafeModelError(GanrayError, ValueError):
    """A stored model ganray refuses to load (not a pt2 pytorch model); the message names it."""


def check_pt2_model(model_dir: str | Path, where: str) -> Path:
    """The pt2 archive of a downloaded MLflow model folder; UnsafeModelError naming where (the model URI)
    and the reason unless it is a pytorch model stored in the pt2 format, with no pickle file beside it,
    no code (no ``code`` entry in its MLmodel, no ``code/`` folder) and its data inside the folder."""
    model_dir = Path(model_dir)
    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UnsafeModelError(f"{where}: its MLmodel file cannot be read ({type(err).__name__})") from None
    flavors = mlmodel.get("flavors") if isinstance(mlmodel, dict) else None
    flavor = flavors.get("pytorch") if isinstance(flavors, dict) else None
    if not isinstance(flavor, dict):
        raise UnsafeModelError(f"{where} is not a pytorch model (flavors: {', '.join(flavors or {}) or 'none'})")
    _check_no_code(model_dir, mlmodel, where)
    data = _inside(model_dir, flavor.get("model_data", "data"), "pytorch flavor's model_data", where)
    pickled = [name for name in PICKLE_FILES if os.path.lexists(data / name)]
    if pickled or not (data / PT2_FILE).is_file():
        found = ", ".join(pickled) or "no model.pt2"
        raise UnsafeModelError(
            f"{where} is not stored in the pt2 format (serialization_format pickle: {found}); ganray loads only "
            "pt2 generators, since loading a pickle could run code. Register it again from its checkpoint")
    return _inside(model_dir, str((data / PT2_FILE).relative_to(model_dir)), "archive", where)


def _check_no_code(model_dir: Path, mlmodel: dict, where: str) -> None:
    """UnsafeModelError unless the model carries no code: no ``code`` entry at the MLmodel's top or in any
    of its flavors (MLflow honours the loading flavor's), and no ``code/`` folder."""
    entries = [] if not mlmodel.get(CODE_KEY) else [f"MLmodel entry code: {mlmodel[CODE_KEY]!r}"]
    entries += [f"MLmodel entry flavors.{name}.code: {conf[CODE_KEY]!r}"
                for name, conf in mlmodel["flavors"].items() if isinstance(conf, dict) and conf.get(CODE_KEY)]
    if os.path.lexists(model_dir / CODE_KEY):
        entries.append("a code/ folder")
    if entries:
        raise UnsafeModelError(
            f"{where} carries code ({'; '.join(entries)}): MLflow puts a model's code/ first on Python's import "
            "path, where it could run as the model loads or later; ganray loads only pt2 generators without "
            "code. Register it again from its checkpoint")


def _inside(model_dir: Path, relative: Any, what: str, where: str) -> Path:
    """model_dir / relative once it resolves (symlinks followed) inside model_dir; UnsafeModelError naming
    what (the MLmodel entry or file) otherwise: not a string, absolute, ``..`` or a symlink out."""
    if not isinstance(relative, str) or not relative:
        raise UnsafeModelError(f"{where}: its {what} {relative!r} is not a path inside the model folder")
    path = model_dir / relative
    if Path(relative).is_absolute() or not path.resolve().is_relative_to(model_dir.resolve()):
        raise UnsafeModelError(
            f"{where}: its {what} {relative!r} lies outside the model folder (an absolute path, '..' or a "
            "symlink out); ganray loads only a model's own files")
    return path


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
    refused while it loads and sys.path as it was after; in eval mode. UnsafeModelError as check_pt2_model
    says; load's own errors pass through."""
    check_pt2_model(model_dir, where)
    import_path = list(sys.path)
    try:
        with pickle_refused():
            generator = load(str(model_dir))
    finally:  # nothing of a model stays on the import path (a checked model adds nothing anyway)
        sys.path[:] = import_path
    try:
        generator.eval()
    except NotImplementedError:  # an exported (pt2) generator is traced in eval mode already
        pass
    return generator


def load_exports(model_dir: str | Path, exports: dict[str, Any], where: str,
                 load_archive: Callable[[Path], Any]) -> tuple[Any, Any, tuple]:
    """(mapping, synthesis, noise maps) of a checked model folder's exported parts, as ``exports`` (read
    by ``trainers.generator_metadata.read_exports``) names them: each file must lie inside the folder;
    load_archive (the caller's: MLflow's pickle-free check of a pt2 archive, then ``torch.export.load``)
    reads each archive with pickle refused and sys.path kept; the noise maps must be float32 arrays of
    the stated shapes, read without pickle. UnsafeModelError naming the part otherwise."""
    model_dir = Path(model_dir)
    parts = {}
    for part in ("mapping", "synthesis"):
        path = _inside(model_dir, exports[part], f"exported {part}", where)
        if not path.is_file():
            raise UnsafeModelError(f"{where}: its exported {part} {exports[part]!r} is not in the model folder")
        import_path = list(sys.path)
        try:
            with pickle_refused():
                parts[part] = load_archive(path)
        except Exception as err:  # noqa: BLE001 - MLflow's check and torch.export raise several kinds
            raise UnsafeModelError(f"{where}: its exported {part} {exports[part]!r} cannot be loaded safely "
                                   f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from None
        finally:
            sys.path[:] = import_path
    return parts["mapping"], parts["synthesis"], _noise_maps(model_dir, exports, where)


def _noise_maps(model_dir: Path, exports: dict[str, Any], where: str) -> tuple:
    """The fixed noise maps of an ``exports``' npz as float32 torch tensors, in order; UnsafeModelError
    for a file outside the folder, over MAX_NOISE_BYTES, with pickled entries, or of other names, types
    or shapes than the metadata states."""
    import zipfile

    import numpy as np
    import torch

    path = _inside(model_dir, exports["noise"], "exported noise", where)
    if not path.is_file() or path.stat().st_size > MAX_NOISE_BYTES:
        raise UnsafeModelError(f"{where}: its exported noise {exports['noise']!r} is missing or over "
                               f"{MAX_NOISE_BYTES >> 20} MiB")
    shapes = [tuple(s) for s in exports["noise_shapes"]]
    names = [f"noise_{i}" for i in range(len(shapes))]
    try:
        with np.load(path, allow_pickle=False) as npz:
            if sorted(npz.files) != sorted(names):
                raise ValueError(f"entries {sorted(npz.files)[:10]}, expected {names}")
            maps = [npz[name] for name in names]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UnsafeModelError(f"{where}: its exported noise {exports['noise']!r} cannot be read as maps "
                               f"({type(err).__name__}: {str(err)[:300]})") from None
    wrong = [f"{name} {m.dtype} {m.shape}" for name, m, shape in zip(names, maps, shapes)
             if m.dtype != np.float32 or m.shape != shape]
    if wrong:
        raise UnsafeModelError(f"{where}: its exported noise maps are not the float32 maps its metadata states "
                               f"({', '.join(wrong[:5])}; expected {shapes})")
    return tuple(torch.from_numpy(np.ascontiguousarray(m)) for m in maps)
