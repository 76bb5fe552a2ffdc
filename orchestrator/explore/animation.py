"""Frames written as an animation: an animated GIF or WebP through Pillow (``trainers.animation``, the
server's encoder too), an MP4 through imageio-ffmpeg. MP4 (H.264, yuv420p, frames padded to even sizes
as the codec needs) needs the optional extra ``ganray[video]`` (``imageio-ffmpeg``, whose wheel carries its own ffmpeg); without it a ``.mp4`` is a
UsageError saying how to install it, raised by :func:`check_animation_path` before anything is drawn.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainers.errors import UsageError

ANIMATION_SUFFIXES = (".gif", ".webp", ".mp4")
FPS_RANGE = (1, 60)
VIDEO_EXTRA = "pip install 'ganray[video]'"


def check_animation_path(out: str | Path, fps: int) -> Path:
    """out as a Path; UsageError for another suffix than .gif/.webp/.mp4, an fps outside FPS_RANGE, or an
    .mp4 without imageio-ffmpeg installed."""
    out = Path(out)
    if out.suffix.lower() not in ANIMATION_SUFFIXES:
        raise UsageError(f"a walk is written as {', '.join(ANIMATION_SUFFIXES)}; --out {str(out)!r} has another "
                         "suffix")
    if not FPS_RANGE[0] <= fps <= FPS_RANGE[1]:
        raise UsageError(f"--fps must be from {FPS_RANGE[0]} to {FPS_RANGE[1]}, got {fps}")
    if out.suffix.lower() == ".mp4":
        _ffmpeg_writer()
    return out


def _ffmpeg_writer():
    """imageio_ffmpeg's write_frames; UsageError naming the extra when the package is missing."""
    try:
        from imageio_ffmpeg import write_frames
    except ImportError:
        raise UsageError(f"writing an .mp4 needs imageio-ffmpeg, which is not installed: {VIDEO_EXTRA} "
                         "(or write .gif / .webp)") from None
    return write_frames


def write_animation(frames: np.ndarray, out: str | Path, fps: int = 24) -> Path:
    """Writes frames (T, H, W, 3) uint8 to out by its suffix (see the module docstring); returns out."""
    out = check_animation_path(out, fps)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".mp4":
        _write_mp4(frames, out, fps)
        return out
    from trainers.animation import encode_animation

    out.write_bytes(encode_animation(frames, out.suffix.lower().lstrip("."), fps))
    return out


def _write_mp4(frames: np.ndarray, out: Path, fps: int) -> None:
    """H.264 in yuv420p (what players take), frames edge-padded to even sizes."""
    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    writer = _ffmpeg_writer()(str(out), (w + w % 2, h + h % 2), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                              macro_block_size=1, quality=8, ffmpeg_log_level="error")
    writer.send(None)  # the generator's first step starts ffmpeg
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
