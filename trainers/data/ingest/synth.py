"""A built-in, deterministic dataset of stylised "anime" faces with tags.

Every demo and test needs tagged images without a download. Each face is drawn
procedurally at 4x the target size with Pillow and reduced with an antialiased
bicubic resize, so the tags are visible at 32x32 and the same (seed, index)
always gives the same picture and the same tags.
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from trainers.data.captions import compose_caption

HAIR_COLOURS = {
    "blonde hair": (246, 218, 99),
    "black hair": (30, 28, 36),
    "pink hair": (245, 140, 190),
    "blue hair": (70, 120, 230),
    "red hair": (205, 45, 45),
    "silver hair": (200, 200, 210),
}
EYE_COLOURS = {
    "blue eyes": (40, 90, 235),
    "green eyes": (40, 170, 70),
    "red eyes": (215, 30, 40),
    "purple eyes": (140, 60, 200),
}
BACKGROUNDS = {
    "white background": (245, 245, 245),
    "sky background": (150, 200, 245),
    "dark background": (45, 45, 60),
}
ACCESSORIES = ("hat", "glasses", "ribbon", "blush")
SKIN = (252, 224, 200)


@dataclass(frozen=True)
class Face:
    """The tags of one drawn face."""

    hair: str
    eyes: str
    background: str
    accessories: tuple[str, ...]

    @property
    def tags(self) -> list[str]:
        return [self.hair, self.eyes, self.background, *self.accessories]


def sample_face(rng: random.Random) -> Face:
    """Draws the tag set of one face from rng."""
    accessories = tuple(a for a in ACCESSORIES if rng.random() < 0.3)
    return Face(
        hair=rng.choice(sorted(HAIR_COLOURS)),
        eyes=rng.choice(sorted(EYE_COLOURS)),
        background=rng.choice(sorted(BACKGROUNDS)),
        accessories=accessories,
    )


def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int = 18) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def render_face(face: Face, resolution: int, rng: random.Random) -> Image.Image:
    """Renders face as an RGB image of resolution x resolution pixels."""
    s = resolution * 4
    img = Image.new("RGB", (s, s), _jitter(BACKGROUNDS[face.background], rng, 8))
    d = ImageDraw.Draw(img)
    u = s / 64.0  # drawing unit: the layout is designed on a 64-unit canvas
    dx, dy = rng.uniform(-3, 3) * u, rng.uniform(-2, 2) * u
    hair = _jitter(HAIR_COLOURS[face.hair], rng)

    def box(x0, y0, x1, y1):
        return [x0 * u + dx, y0 * u + dy, x1 * u + dx, y1 * u + dy]

    d.ellipse(box(10, 8, 54, 60), fill=hair)  # hair behind the head
    d.ellipse(box(16, 16, 48, 56), fill=_jitter(SKIN, rng, 6))  # face
    d.pieslice(box(12, 8, 52, 40), 180, 360, fill=hair)  # bangs
    eye = _jitter(EYE_COLOURS[face.eyes], rng, 10)
    for x in (20, 36):
        d.ellipse(box(x, 32, x + 8, 42), fill=(255, 255, 255))
        d.ellipse(box(x + 1.5, 33, x + 6.5, 42), fill=eye)
        d.ellipse(box(x + 3, 34, x + 5, 36), fill=(255, 255, 255))
    d.arc(box(28, 44, 36, 50), 20, 160, fill=(150, 60, 60), width=max(1, int(u)))
    if "blush" in face.accessories:
        for x in (18, 40):
            d.ellipse(box(x, 42, x + 6, 45), fill=(245, 150, 160))
    if "glasses" in face.accessories:
        for x in (19, 35):
            d.ellipse(box(x, 31, x + 10, 43), outline=(20, 20, 20), width=max(1, int(1.2 * u)))
        d.line(box(29, 37, 35, 37), fill=(20, 20, 20), width=max(1, int(u)))
    if "ribbon" in face.accessories:
        d.polygon([tuple(p) for p in (box(44, 10, 52, 14)[:2], box(52, 6, 56, 18)[:2], box(52, 18, 56, 18)[:2])],
                  fill=(230, 40, 60))
        d.ellipse(box(40, 8, 56, 18), fill=(230, 40, 60))
    if "hat" in face.accessories:
        d.rectangle(box(8, 10, 56, 14), fill=(60, 40, 30))
        d.rectangle(box(18, 0, 46, 11), fill=(80, 55, 40))
    return img.resize((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=None)


def write_synthetic_dataset(dest: str | Path, n: int, resolution: int, seed: int, captions: bool = False) -> Path:
    """Writes n faces as dest/NNNNNN.png and dest/labels.csv (file,tags; with captions, file,tags,caption:
    captions composed from the tags, as ingest's compose_captions does).

    The same (n, resolution, seed, captions) always writes the same files. Returns the
    path of labels.csv.
    """
    if n <= 0:
        raise ValueError(f"--n must be positive, got {n}")
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"--resolution must be a power of two >= 8, got {resolution}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    labels = dest / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "tags", "caption"] if captions else ["file", "tags"])
        for i in range(n):
            rng = random.Random(f"{seed}:{i}")
            face = sample_face(rng)
            name = f"{i:06d}.png"
            render_face(face, resolution, rng).save(dest / name, optimize=False)
            row = [name, ", ".join(face.tags)]
            writer.writerow(row + [compose_caption(face.tags, name)] if captions else row)
    return labels
