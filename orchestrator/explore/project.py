"""``ganray project``: a picture projected into a registered version, written as a latent file.

The picture is read with Pillow (centre-cropped to a square and resized to the model's resolution
when it is another size; bounded in pixels before it is decoded), the version is read through the
one loader, and the projector (``trainers.projection``) fits it: in W+ for a StyleGAN2 version
with W exports, in z otherwise. Its feature loss is D's, read from the version's kept training
checkpoint (the ``checkpoint_uri`` tag, verified and loaded weights-only); without that checkpoint
the Inception's when its weights are on this machine, else none (a one-line note says which).
Written: the latent file (``trainers.latent_file``), ``<out stem>.png`` (the reconstruction) and,
with ``video``, the fit as an animation (the target beside each reconstruction).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainers.errors import UsageError
from trainers.model_ref import ModelRef

MAX_PICTURE_PIXELS = 40_000_000  # 40 MP, checked from the header before any pixel is decoded
VIDEO_SUFFIXES = (".gif", ".webp")
VIDEO_FRAMES = 60
VIDEO_MIN_SIDE = 256  # each half of an animation frame is upscaled (nearest) to at least this


class PictureError(UsageError, ValueError):
    """A picture that cannot be read; the message names it and why."""


@dataclass(frozen=True)
class FeatureChoice:
    """The projector's feature loss: the extractor (None: pixels only), what it is, and the note to print."""

    features: Callable | None
    label: str
    note: str | None


def read_picture(path: str | Path, resolution: int | None = None) -> np.ndarray:
    """The picture at path as uint8 S x S x 3: converted to RGB, centre-cropped to a square and, given a
    resolution, resized to it (Lanczos) when it is another size. PictureError for a file that is missing,
    not a picture, damaged or over :data:`MAX_PICTURE_PIXELS`."""
    path = Path(path)
    if not path.is_file():
        raise PictureError(f"picture {path}: no such file")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PICTURE_PIXELS:
                raise PictureError(f"picture {path} is {img.width}x{img.height}, over {MAX_PICTURE_PIXELS} pixels")
            img = img.convert("RGB")
    except PictureError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise PictureError(f"picture {path} is not a picture Pillow can read ({type(err).__name__})") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise PictureError(f"picture {path} cannot be read (damaged or truncated): {type(err).__name__}: "
                           f"{str(err)[:200]}") from None
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    square = img.crop((left, top, left + side, top + side))
    if resolution is not None and side != resolution:
        square = square.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(square, dtype=np.uint8).copy()


def picture_condition(meta, tags: list[str] | None, prompt: str | None, where: str):
    """The c a picture is fitted (or redrawn) under: a prompt's embedding, the tags' vector, or None."""
    from trainers.sampling import condition_vector, prompt_vector

    if prompt is not None:
        if tags:
            raise UsageError("give --prompt or --tags, not both")
        return prompt_vector(meta, prompt, where)
    return condition_vector(meta, tags, where)


def choose_features(mv, meta) -> FeatureChoice:
    """D's features from the version's kept checkpoint, else the Inception's when its weights are here, else
    none; the note says why when it is not D."""
    from trainers.errors import GanrayError
    from trainers.projection_features import discriminator_features, inception_features, local_inception_weights

    checkpoint = (mv.tags or {}).get("checkpoint_uri")
    try:
        d = _discriminator(checkpoint, meta)
        return FeatureChoice(discriminator_features(d), "discriminator", None)
    except (GanrayError, OSError, ValueError) as err:  # CheckpointError, StorageError, a filesystem's own
        why = f"its training checkpoint is not usable ({_first_line(err)})"
    weights = local_inception_weights()
    if weights is not None:
        from trainers.metrics.inception import load_inception

        return FeatureChoice(inception_features(load_inception(weights)), "inception",
                             f"note: {why}; the feature loss is the Inception's ({weights})")
    return FeatureChoice(None, "none", f"note: {why} and the Inception weights are not on this machine; "
                                       "projecting with the pixel loss only")


def _discriminator(checkpoint: str | None, meta):
    """D of the kept checkpoint a version names; CheckpointError when it names none or the folder is gone."""
    import pyarrow.fs as pafs

    from trainers.checkpoints.copies import local_copy
    from trainers.checkpoints.format import CheckpointError
    from trainers.checkpoints.layout import parse_checkpoint_name
    from trainers.checkpoints.storage import open_storage
    from trainers.projection_features import discriminator_from_checkpoint

    if not checkpoint or parse_checkpoint_name(checkpoint) is None:
        raise CheckpointError(f"the version names no training checkpoint (checkpoint_uri {checkpoint!r})")
    fs, path = open_storage(checkpoint)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise CheckpointError(f"{checkpoint} is gone")
    with local_copy(fs, path) as local:
        return discriminator_from_checkpoint(local, meta.generator_config)


def _first_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:300] + "..."


@dataclass(frozen=True)
class Projected:
    """What ``ganray project`` wrote and found."""

    latent: Path
    reconstruction: Path
    video: Path | None
    space: str
    steps: int
    seconds: float
    pixel_mse: float
    feature: float | None
    feature_label: str
    notes: tuple[str, ...]

    def summary(self) -> str:
        feature = f", feature distance ({self.feature_label}) {self.feature:.5f}" if self.feature is not None else ""
        wrote = ", ".join(str(p) for p in (self.latent, self.reconstruction, self.video) if p is not None)
        return (f"projected in {self.space} ({self.steps} steps, {self.seconds:.1f} s): pixel MSE "
                f"{self.pixel_mse:.5f}{feature}\nwrote {wrote}")


def project_picture(client, ref: ModelRef, picture: str | Path, out: str | Path, steps: int, seed: int = 0,
                    tags: list[str] | None = None, prompt: str | None = None, video: str | Path | None = None,
                    note: Callable[[str], None] = print, progress: Callable | None = None) -> Projected:
    """Projects the picture into the version ref names and writes out (.npz), its .png and the video."""
    from deploy.loader import load_version, named_version
    from trainers.latent_file import write_latent
    from trainers.projection import ProjectionSettings, project, space_note

    out, video = Path(out), Path(video) if video is not None else None
    if out.suffix != ".npz":
        raise UsageError(f"--out must end in .npz (the latent file), got {str(out)!r}")
    if video is not None and video.suffix not in VIDEO_SUFFIXES:
        raise UsageError(f"--video must end in {' or '.join(VIDEO_SUFFIXES)}, got {str(video)!r}")
    settings = ProjectionSettings(steps=steps, seed=seed, frames=VIDEO_FRAMES if video is not None else 0)
    read_picture(picture)  # a picture that cannot be read is refused before the model is downloaded
    mv = named_version(client, ref)
    model = load_version(client, ref, int(mv.version))
    target = read_picture(picture, model.meta.resolution)
    c = picture_condition(model.meta, tags, prompt, model.uri)
    choice = choose_features(mv, model.meta)
    notes = tuple(n for n in (space_note(model), choice.note) if n)
    for line in notes:
        note(line)
    t0 = time.perf_counter()
    fit = project(model, target, settings, c=c, features=choice.features, progress=progress)
    seconds = time.perf_counter() - t0
    latent = write_latent(out, fit, model.uri, c)
    reconstruction = out.with_suffix(".png")
    Image.fromarray(fit.reconstruction).save(reconstruction)
    if video is not None:
        write_fit_animation(target, fit.frames, video)
    return Projected(latent, reconstruction, video, fit.space, steps, seconds, fit.pixel_mse, fit.feature,
                     choice.label, notes)


def write_fit_animation(target: np.ndarray, frames: list[np.ndarray], path: Path) -> Path:
    """The fit as a looping GIF or animated WebP: the target beside each kept reconstruction, upscaled
    (nearest) so that each half is at least :data:`VIDEO_MIN_SIDE` pixels."""
    side = target.shape[0]
    scale = max(1, -(-VIDEO_MIN_SIDE // side))
    pictures = [Image.fromarray(np.concatenate([target, f], axis=1)).resize((2 * side * scale, side * scale),
                                                                           Image.Resampling.NEAREST)
                for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=80, loop=0)
    return path
