"""The processing of one image at ingest: decode, convert to RGB, centre-crop, resize, re-encode.

``process_member`` is what runs in ingest's worker processes (the local ingest's spawned pool
and each ``--ray`` task alike), so this module imports only numpy and Pillow.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = 64 * 1024 * 1024  # beyond this an image is treated as a decompression bomb


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: 16-bit and float scaled down, alpha composited on white, CMYK converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0
        img = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "P", "PA", "La", "RGBa") or "transparency" in img.info:
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


def process_image(data: bytes, resolution: int | None, fmt: str) -> tuple[bytes, int]:
    """Decodes, converts to RGB, centre-crops, resizes (bicubic, antialiased), re-encodes.

    Returns (encoded bytes, resolution). Raises ValueError with the reason on bad input.
    """
    if not data:
        raise ValueError("zero-byte file")
    if resolution is not None and resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"decompression bomb ({img.width}x{img.height} pixels)")
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ValueError(f"decompression bomb ({err})") from None
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds for bad files
            raise ValueError(f"not a readable image ({type(err).__name__}: {err})") from None
    try:
        img = _to_rgb(ImageOps.exif_transpose(img) or img)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"cannot convert to RGB ({type(err).__name__}: {err})") from None
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    res = resolution or side
    if side != res:
        img = img.resize((res, res), Image.Resampling.BICUBIC, reducing_gap=None)  # Pillow's resize is antialiased
    out = io.BytesIO()
    if fmt == "png":
        img.save(out, format="PNG", compress_level=1)
    else:
        img.save(out, format="JPEG", quality=95)
    return out.getvalue(), res


def process_member(item: tuple[str, bytes, int | None, str]) -> tuple[str, tuple[bytes, int] | None, str | None]:
    """(name, (encoded image, its resolution), None) for a member's (name, bytes, resolution, format), or
    (name, None, the reason it is skipped): one bad file never stops the run."""
    rel, data, resolution, fmt = item
    try:
        return rel, process_image(data, resolution, fmt), None
    except ValueError as err:
        return rel, None, str(err)
    except Exception as err:  # noqa: BLE001 - one bad file never stops the run
        return rel, None, f"cannot process image ({type(err).__name__}: {err})"


def resolution_problem(resolution: int, dataset_resolution: int | None) -> str | None:
    """Why an image of resolution does not fit a dataset of dataset_resolution (None: it fits)."""
    if dataset_resolution is None or resolution == dataset_resolution:
        return None
    return f"resolution {resolution} differs from the dataset's {dataset_resolution}; pass --resolution"
