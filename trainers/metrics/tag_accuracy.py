"""Per-tag accuracy of a conditional generator, judged by a classifier trained on the real images.

The judge is a small multi-label CNN, trained only on the dataset (never on generated
images, and it shares nothing with D, whose auxiliary head is trained alongside G and so
is no honest judge). It is trained once per dataset, deterministically, and cached. Its
accuracy on held-out real images is reported with every number it gives, as the ceiling
the generator is measured against.

Tag accuracy: for samples generated for requested tag sets, the share of requested tags
the judge recognises (probability > 0.5), per tag and over all requests; the share of
unrequested tags it sees (false positives) and of samples whose whole tag set it reads
back exactly are reported beside it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers.cache_paths import under_root
from trainers.metrics import cache_dir

JUDGE_VERSION = 1
JUDGE_MAX_RES = 64
HOLDOUT_EVERY = 10  # every 10th image (in stored order) is held out to measure the judge itself


class TagJudge(nn.Module):
    """(conv 3x3, BN, ReLU, max-pool) per halving down to 4x4, then two linear layers -> tag logits."""

    def __init__(self, c_dim: int, resolution: int, width: int = 32):
        super().__init__()
        self.c_dim, self.resolution = c_dim, min(resolution, JUDGE_MAX_RES)
        layers: list[nn.Module] = []
        ch, r = 3, self.resolution
        while r > 4:
            out = min(width * (self.resolution // r), 256)
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            ch, r = out, r // 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch * 16, 128), nn.ReLU(), nn.Linear(128, c_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float N x 3 x R x R in [-1, 1] at any R (resized to the judge's) -> tag logits."""
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="area")
        return self.head(self.body(x))


def _to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def _shift(x: torch.Tensor, gen: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Random translation by up to `pixels` (edge-padded): the judge should not key on exact positions."""
    n, _, h, w = x.shape
    padded = F.pad(x, [pixels] * 4, mode="replicate")
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@torch.no_grad()
def predict(judge: TagJudge, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Tag probabilities (N x c_dim) for uint8 NxHxWx3 images."""
    judge.eval()
    out = [torch.sigmoid(judge(_to_float(images[i:i + batch]))).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, judge.c_dim))


def score(probs: np.ndarray, requested: np.ndarray, vocabulary: list[str], prefix: str = "tag_acc"
          ) -> dict[str, float]:
    """Per-tag and overall recognition of requested tags (see the module docstring)."""
    pred, req = probs > 0.5, requested > 0.5
    out: dict[str, float] = {}
    per_tag = []
    for j, tag in enumerate(vocabulary):
        asked = req[:, j]
        if asked.any():
            acc = float(pred[asked, j].mean())
            out[f"{prefix}.{tag.replace(' ', '_')}"] = acc
            per_tag.append(acc)
    total = req.sum()
    out[prefix] = float((pred & req).sum() / total) if total else float("nan")
    out[f"{prefix}_min"] = min(per_tag) if per_tag else float("nan")
    out[f"{prefix}_mean"] = float(np.mean(per_tag)) if per_tag else float("nan")
    unasked = (~req).sum()
    out[f"{prefix}_false_pos"] = float((pred & ~req).sum() / unasked) if unasked else 0.0
    out[f"{prefix}_exact"] = float((pred == req).all(axis=1).mean()) if len(req) else float("nan")
    return out


def train_judge(images: np.ndarray, c: np.ndarray, vocabulary: list[str], epochs: int = 15, seed: int = 0,
                batch: int = 64) -> tuple[TagJudge, dict[str, float]]:
    """Trains a judge on every image but the held-out tenth; returns it with its held-out scores."""
    n = len(images)
    held = np.arange(n) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    if held.sum() < 1 or (~held).sum() < 2:
        raise ValueError(f"the tag judge needs at least {HOLDOUT_EVERY} labelled images, got {n}")
    torch.manual_seed(seed)  # the caller's RNG state is restored below
    gen = torch.Generator().manual_seed(seed)
    judge = TagJudge(c.shape[1], images.shape[1])
    opt = torch.optim.Adam(judge.parameters(), lr=1e-3)
    x, y = _to_float(images[~held]), torch.from_numpy(c[~held]).float()
    # Rare tags would be ignored at the default weighting: weigh positives by how rare they are.
    pos = y.mean(0).clamp(1e-3, 1)
    pos_weight = ((1 - pos) / pos).clamp(max=10.0)
    judge.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            if len(idx) < 2:
                continue
            logits = judge(_shift(x[idx], gen))
            loss = F.binary_cross_entropy_with_logits(logits, y[idx], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    judge.eval()
    return judge, score(predict(judge, images[held]), c[held], vocabulary, prefix="judge_real_acc")


def load_or_train_judge(dataset_hash: str, images_fn, vocabulary: list[str], epochs: int = 15
                        ) -> tuple[TagJudge, dict[str, Any], bool]:
    """(judge, its held-out scores, whether it came from the cache); images_fn() -> (uint8 images, multi-hot)."""
    path = under_root(cache_dir(), "judges", f"{dataset_hash[:20]}-e{epochs}-v{JUDGE_VERSION}.pt")
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["vocabulary"] == list(vocabulary):
            judge = TagJudge(len(vocabulary), saved["resolution"])
            judge.load_state_dict(saved["state_dict"])
            return judge.eval(), saved["scores"], True
    images, c = images_fn()
    rng_state = torch.get_rng_state()
    try:
        judge, scores = train_judge(images, c, list(vocabulary), epochs)
    finally:
        torch.set_rng_state(rng_state)  # judging never moves the training run's random stream
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp{os.getpid()}")
    torch.save({"state_dict": judge.state_dict(), "resolution": images.shape[1], "vocabulary": list(vocabulary),
                "scores": scores}, tmp)
    os.replace(tmp, path)
    return judge, scores, False
