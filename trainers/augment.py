"""DiffAugment (Zhao et al. 2020): differentiable colour, translation and cutout, on every image D sees.

The same ops apply to real and fake images in both phases, so D never learns the augmentation
and G is not asked to produce it. Each op is applied to each image with probability ``p``
(1 = DiffAugment as published); with ``ada_target`` set, p adapts as in StyleGAN2-ADA: every
``ada_interval`` steps it moves by ``batch * interval / (ada_kimg * 1000)`` toward the side
that brings E[sign(D(real))] to the target. The sign statistic is summed over all ranks, so
p stays identical everywhere. All randomness comes from the generator passed in, which
keeps a resumed run on the same path as an uninterrupted one.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

Op = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _rand(x: torch.Tensor, gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=gen, device=gen.device).to(x.device, x.dtype)


def brightness(x, gen):
    return x + (_rand(x, gen, x.shape[0], 1, 1, 1) - 0.5)


def saturation(x, gen):
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand(x, gen, x.shape[0], 1, 1, 1) * 2) + mean


def contrast(x, gen):
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_rand(x, gen, x.shape[0], 1, 1, 1) + 0.5) + mean


def translation(x, gen, ratio: float = 0.125):
    """Shifts each image by up to ratio of its size, filling with zeros (as DiffAugment does)."""
    n, _, h, w = x.shape
    sx, sy = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = torch.randint(-sx, sx + 1, (n, 1, 1), generator=gen, device=gen.device).to(x.device)
    ty = torch.randint(-sy, sy + 1, (n, 1, 1), generator=gen, device=gen.device).to(x.device)
    gb, gx, gy = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def cutout(x, gen, ratio: float = 0.5):
    """Zeroes one square of half the image size per image, at a random place."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=gen, device=gen.device).to(x.device)
    oy = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=gen, device=gen.device).to(x.device)
    gb, gx, gy = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(ch, device=x.device),
                                torch.arange(cw, device=x.device), indexing="ij")
    gx = torch.clamp(gx + ox - ch // 2, min=0, max=h - 1)
    gy = torch.clamp(gy + oy - cw // 2, min=0, max=w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


POLICIES: dict[str, list[Op]] = {
    "color": [brightness, saturation, contrast],
    "translation": [translation],
    "cutout": [cutout],
}


def diff_augment(x: torch.Tensor, policy: str, gen: torch.Generator, p: float = 1.0) -> torch.Tensor:
    """Applies the policy's ops ("color,translation,cutout") to x; each op to each image with probability p."""
    if p <= 0:
        return x
    for name in policy.split(","):
        for op in POLICIES[name]:
            y = op(x, gen)
            if p < 1:
                keep = (_rand(x, gen, x.shape[0], 1, 1, 1) < p).to(x.dtype)
                y = x + (y - x) * keep
            x = y
    return x


class AugmentPipe:
    """DiffAugment with its probability p, adapted toward ``ada_target`` when one is set."""

    def __init__(self, policy: str, p: float = 1.0, ada_target: float | None = None, ada_interval: int = 4,
                 ada_kimg: float = 500, batch_size: int = 64, distributed: bool = False):
        self.policy, self.p = policy, float(p)
        self.ada_target, self.ada_interval, self.ada_kimg = ada_target, ada_interval, ada_kimg
        self.batch_size, self.distributed = batch_size, distributed
        self.stat_sum, self.stat_count = 0.0, 0.0
        self.last_rt: float | None = None  # E[sign(D(real))] at the last adjustment

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return diff_augment(x, self.policy, gen, self.p)

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Adds this rank's sign(D(real)) to the statistic, summed over ranks (a collective when distributed)."""
        if self.ada_target is None:
            return
        logits = real_logits.detach().float()
        stat = torch.stack([logits.sign().sum(), torch.tensor(float(logits.numel()), device=logits.device)])
        if self.distributed:
            dist.all_reduce(stat)  # on the logits' device: NCCL reduces CUDA tensors only
        self.stat_sum += float(stat[0])
        self.stat_count += float(stat[1])

    def update(self, step: int) -> None:
        """After step (1-based): every ada_interval steps, moves p toward the target and resets the statistic."""
        if self.ada_target is None or step % self.ada_interval or self.stat_count == 0:
            return
        self.last_rt = self.stat_sum / self.stat_count
        adjust = (1.0 if self.last_rt > self.ada_target else -1.0) * self.batch_size * self.ada_interval
        self.p = min(max(self.p + adjust / (self.ada_kimg * 1000), 0.0), 1.0)
        self.stat_sum = self.stat_count = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p, "stat_sum": self.stat_sum, "stat_count": self.stat_count, "last_rt": self.last_rt,
                "policy": self.policy}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p, self.stat_sum, self.stat_count = float(state["p"]), float(state["stat_sum"]), float(state["stat_count"])
        self.last_rt = state.get("last_rt")
