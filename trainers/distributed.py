"""Data parallelism over Ray Train's torch process group: same weights everywhere, averaged gradients.

A GAN phase runs several forward passes per backward (fake, real, a lazy regulariser) and
several micro-batches per optimiser step, which DistributedDataParallel's one-forward-one-
backward hooks do not fit. So, as StyleGAN3's training loop does, each phase's gradients
are averaged once, after its last micro-batch, with one all-reduce of a flat buffer.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def distributed_ready(world_size: int) -> bool:
    """True when there is more than one worker and a torch process group to talk over."""
    return world_size > 1 and dist.is_available() and dist.is_initialized()


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copies src's parameters and buffers to every rank (a collective)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src)


@torch.no_grad()
def average_gradients(module: nn.Module, world_size: int) -> None:
    """Averages the gradients of module's trainable parameters over all ranks (a collective).

    Every rank runs the same phases on the same networks, so the parameters that have a
    gradient are the same everywhere; those without one are left alone, as the optimiser does.
    """
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= world_size
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p))
