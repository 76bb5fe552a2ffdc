"""The latent file ``ganray project`` writes and ``ganray generate --latent`` reads back, and the redraw.

An ``.npz`` without pickles, with the keys:

- ``space``: ``"z"`` or ``"w+"``; ``latent``: (1, z_dim) or (1, num_ws, w_dim) float32;
- ``noise_0`` .. ``noise_K``: the fitted noise maps, one per synthesis noise input (w+ only);
- ``model``: the URI of the version it was fitted to (``models:/NAME/V``);
- ``condition``: the condition vector it was fitted under, float32 (c_dim,) ((0,) when unconditional);
- ``reconstruction``: uint8 R x R x 3; ``loss``: the total loss at each step, float32.

A latent file is untrusted input: it is read with ``allow_pickle=False``, bounded in size before any
array is inflated, every key and dtype checked (:func:`read_latent`), and its shapes and model checked
against the model it is redrawn with (:func:`check_fits`) before anything runs.

Redrawing with another condition (:func:`redraw`): in z, the same z with the new c; in W+, the fitted
ws moved by the difference between the average w of the new condition and of the old one (the tag's
direction in W; the same z samples for both averages), with the fitted noise maps.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainers.errors import UsageError
from trainers.grid import to_uint8
from trainers.projection import MAX_STEPS, Projection, packed, run_padded, w_statistics

MAX_FILE_BYTES = 64 << 20
MAX_ARRAY_BYTES = 64 << 20
KEYS = ("space", "latent", "model", "condition", "reconstruction", "loss")
_NOISE = re.compile(r"noise_(\d{1,3})$")


class LatentFileError(UsageError, ValueError):
    """A latent file that cannot be read or does not fit the model; the message names the file and the fault."""


@dataclass(frozen=True)
class LatentFile:
    space: str
    latent: np.ndarray
    noise: tuple[np.ndarray, ...]
    model: str
    condition: np.ndarray
    reconstruction: np.ndarray
    loss: np.ndarray


def write_latent(path: str | Path, projection: Projection, model_uri: str, condition: torch.Tensor | None) -> Path:
    """Writes a projection as a latent file (uncompressed .npz, no pickles); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"space": np.array(projection.space), "latent": projection.latent.numpy().astype(np.float32),
              "model": np.array(model_uri), "reconstruction": projection.reconstruction,
              "condition": (condition.float().reshape(-1).numpy() if condition is not None
                            else np.zeros(0, np.float32)),
              "loss": projection.loss.astype(np.float32)}
    arrays.update({f"noise_{i}": n.numpy().astype(np.float32) for i, n in enumerate(projection.noise)})
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    return path


def read_latent(path: str | Path) -> LatentFile:
    """A latent file, its structure checked (keys, dtypes, sizes, finite numbers); LatentFileError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise LatentFileError(f"latent file {path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise LatentFileError(f"latent file {path} has {path.stat().st_size} bytes, over {MAX_FILE_BYTES}")
    arrays = _arrays(path)
    missing = [k for k in KEYS if k not in arrays]
    unknown = sorted(k for k in arrays if k not in KEYS and not _NOISE.match(k))
    if missing or unknown:
        raise LatentFileError(f"latent file {path} is not one `ganray project` writes: "
                              f"{'missing ' + ', '.join(missing) if missing else ''}"
                              f"{'; ' if missing and unknown else ''}{'unknown ' + ', '.join(unknown) if unknown else ''}")
    noise_keys = sorted((k for k in arrays if _NOISE.match(k)), key=lambda k: int(k.split("_")[1]))
    if noise_keys != [f"noise_{i}" for i in range(len(noise_keys))]:
        raise LatentFileError(f"latent file {path}: noise maps {', '.join(noise_keys)} are not noise_0 .. noise_K")
    found = LatentFile(_text(arrays, "space", path), _floats(arrays, "latent", path),
                       tuple(_floats(arrays, k, path) for k in noise_keys), _text(arrays, "model", path),
                       _floats(arrays, "condition", path), arrays["reconstruction"], _floats(arrays, "loss", path))
    _check_structure(found, path)
    return found


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the .npz at path, each bounded by its inflated size before it is read; no pickles."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.file_size > MAX_ARRAY_BYTES:
                    raise LatentFileError(f"latent file {path}: {info.filename} inflates to {info.file_size} "
                                          f"bytes, over {MAX_ARRAY_BYTES}")
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except LatentFileError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise LatentFileError(f"latent file {path} is not a readable .npz without pickles: "
                              f"{type(err).__name__}: {str(err)[:200]}") from None


def _text(arrays: dict[str, np.ndarray], key: str, path: Path) -> str:
    value = arrays[key]
    if value.dtype.kind != "U" or value.shape != () or len(str(value)) > 300:
        raise LatentFileError(f"latent file {path}: {key} must be one short string, got {value.dtype} {value.shape}")
    return str(value)


def _floats(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    value = arrays[key]
    if value.dtype.kind != "f" or not np.isfinite(value).all():
        raise LatentFileError(f"latent file {path}: {key} must hold finite floats, got {value.dtype}")
    return value.astype(np.float32)


def _check_structure(found: LatentFile, path: Path) -> None:
    if found.space not in ("z", "w+"):
        raise LatentFileError(f"latent file {path}: space must be 'z' or 'w+', got {found.space!r}")
    want_dim = 2 if found.space == "z" else 3
    if found.latent.ndim != want_dim or found.latent.shape[0] != 1:
        form = "(1, z_dim)" if want_dim == 2 else "(1, num_ws, w_dim)"
        raise LatentFileError(f"latent file {path}: a {found.space} latent is {form}, got {found.latent.shape}")
    if found.space == "z" and found.noise:
        raise LatentFileError(f"latent file {path}: a z latent carries no noise maps")
    rec = found.reconstruction
    if rec.dtype != np.uint8 or rec.ndim != 3 or rec.shape[2] != 3 or rec.shape[0] != rec.shape[1]:
        raise LatentFileError(f"latent file {path}: reconstruction must be uint8 R x R x 3, got {rec.dtype} "
                              f"{rec.shape}")
    if found.condition.ndim != 1 or found.loss.ndim != 1 or len(found.loss) > MAX_STEPS:
        raise LatentFileError(f"latent file {path}: condition and loss must be 1-d (loss at most {MAX_STEPS} "
                              f"steps), got {found.condition.shape} and {found.loss.shape}")


def expected_shapes(model) -> tuple[str, tuple[int, ...], list[tuple[int, ...]]]:
    """(space, latent shape, noise shapes) of a latent fitted to model (``trainers.projection``'s spaces)."""
    from trainers.projection import projection_space

    meta, space = model.meta, projection_space(model)
    if space == "z":
        return space, (1, meta.z_dim), []
    c = torch.zeros(meta.c_dim) if meta.c_dim else None
    with torch.no_grad():
        ws = model.mapping(packed(meta, torch.zeros(1, meta.z_dim), c))
    return space, (1, *ws.shape[1:]), [tuple(n.shape) for n in model.noise]


def check_fits(found: LatentFile, model, where: str) -> None:
    """LatentFileError unless found was fitted to model (its URI) and has its shapes; where names the file."""
    if found.model != model.uri:
        raise LatentFileError(f"latent file {where} was fitted to {found.model}, not {model.uri}: a latent "
                              "belongs to one version (project the picture into this one)")
    space, shape, noise = expected_shapes(model)
    got_noise = [tuple(n.shape) for n in found.noise]
    if found.space != space or found.latent.shape != shape or got_noise != noise:
        raise LatentFileError(f"latent file {where} holds a {found.space} latent {found.latent.shape} with noise "
                              f"{got_noise}; {model.uri} takes {space} {shape} with noise {noise}")
    c_dim = model.meta.c_dim
    if found.condition.shape != (c_dim,):
        raise LatentFileError(f"latent file {where}: its condition has shape {found.condition.shape}; "
                              f"{model.uri} takes ({c_dim},)")


@torch.no_grad()
def redraw(model, found: LatentFile, c: torch.Tensor | None, truncation: float = 1.0) -> np.ndarray:
    """The picture (uint8 R x R x 3) of a checked latent under condition c (None: the one it was fitted under)
    at truncation psi (toward the new condition's average w; z latents: through the psi input)."""
    meta = model.meta
    old = torch.from_numpy(found.condition) if meta.c_dim else None
    new = c.float().reshape(-1) if c is not None else old
    latent = torch.from_numpy(found.latent)
    if found.space == "z":
        rows = packed(meta, latent, new)
        if meta.takes_psi:
            rows[:, -1] = truncation
        return to_uint8(run_padded(model.generator, rows))[0]
    ws = latent
    if meta.c_dim or truncation != 1.0:
        avg_new = w_statistics(model, new)[0]
        if meta.c_dim and not torch.equal(new, old):
            ws = ws + (avg_new - w_statistics(model, old)[0])
        ws = avg_new.lerp(ws, truncation)
    noise = tuple(torch.from_numpy(n) for n in found.noise)
    return to_uint8(model.synthesis(ws, *noise))[0]
