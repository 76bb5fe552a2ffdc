"""The demo's picture: one row of samples per tag set, the tags written beside each row.

    python scripts/demo_grid.py MODEL_URI OUT_DIR --n 8 --row "blonde hair, blue eyes" --row ...

Writes OUT_DIR/grid.png (rows in the order given), OUT_DIR/grid.txt (one line per row: its
tags) and OUT_DIR/grid.npz (``images`` rows x n x H x W x 3, ``rows`` the tag sets), from seeds
seed .. seed+n-1 for every row, so the rows differ only by their tags; the tags a row leaves open
are drawn per sample from the training data's tag sets (as `ganray generate` and the server do).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from deploy.loader import load_named, registry_client
from orchestrator.cluster.endpoints import use_cluster_environment
from trainers.model_ref import parse_ref
from trainers.sampling import condition_rows, sample

LABEL_WIDTH, SCALE, PAD = 260, 2, 4


def draw(rows: list[list[str]], images: np.ndarray) -> Image.Image:
    """rows x n samples (scaled up SCALE times) with each row's tags to its left."""
    n_rows, n, h, w, _ = images.shape
    cell_h, cell_w = h * SCALE + PAD, w * SCALE + PAD
    grid = Image.new("RGB", (LABEL_WIDTH + n * cell_w + PAD, n_rows * cell_h + PAD), "white")
    pen = ImageDraw.Draw(grid)
    for r, (tags, row) in enumerate(zip(rows, images)):
        top = PAD + r * cell_h
        pen.text((PAD, top + cell_h // 2 - 6), ", ".join(tags), fill="black")
        for i, img in enumerate(row):
            tile = Image.fromarray(img).resize((w * SCALE, h * SCALE), Image.NEAREST)
            grid.paste(tile, (LABEL_WIDTH + i * cell_w, top))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_uri")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--row", action="append", required=True, help="comma-separated tags of one row")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ref = parse_ref(args.model_uri, need_version=True, version_option=False)
    endpoints = use_cluster_environment()  # the tracking server of the environment, or of the embedded stack
    model = load_named(registry_client(endpoints.mlflow_uri), ref)
    generator, meta = model.generator, model.meta
    rows = [[t.strip() for t in row.split(",") if t.strip()] for row in args.row]
    images = np.stack([sample(generator, meta.z_dim, args.n, args.seed, takes_psi=meta.takes_psi,
                              c=condition_rows(meta, tags, args.n, args.seed, args.model_uri)) for tags in rows])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    draw(rows, images).save(args.out_dir / "grid.png")
    (args.out_dir / "grid.txt").write_text("".join(", ".join(tags) + "\n" for tags in rows))
    np.savez_compressed(args.out_dir / "grid.npz", images=images, rows=np.array([", ".join(t) for t in rows]))


if __name__ == "__main__":
    main()
