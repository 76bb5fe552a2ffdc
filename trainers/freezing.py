"""Frozen weights for fine-tuning: D's first blocks (FreezeD) and StyleGAN2's mapping network.

``train.freeze_d: K`` freezes D's first K blocks counted from the input side, as FreezeD (Mo et
al. 2020) freezes D's lower layers: they keep the features they start with while the rest adapts.
D's blocks are its halvings (``input_blocks()`` of each discriminator; ``spec.discriminator_blocks``
counts them: log2(R) - 2 at resolution R, every arch); what follows the last one (StyleGAN2's 4x4
epilogue, the heads, the projection, the condition's mapping) always trains.
``train.freeze_g_mapping`` freezes the layers of StyleGAN2's mapping network (z [, embedded c] -> w);
the condition's embedding into it (``mapping.embed``) still trains, so that tags a fine-tune adds
learn their rows. ``w_avg`` is a running statistic, not a weight: it still moves.

A frozen parameter has ``requires_grad`` False and is in no optimiser, for the whole job: the loop
builds its optimisers from :meth:`Frozen.trainable` and switches each phase's module through
:meth:`Frozen.require_grad`, which never turns a frozen one on. A restored checkpoint (same spec:
both fields are in its digest) loads its values in place, so they stay frozen and unchanged. G_ema's
mapping, a copy of G's at the start, is averaged with G's unchanged one and so stays equal to it (one
loaded from elsewhere would move toward it, as any EMA does).
"""
from __future__ import annotations

from torch import nn

from trainers.spec import TrainSpec, check_freeze_d


class Frozen:
    """The parameters of (G, D) that the spec freezes; frozen on construction."""

    def __init__(self, g: nn.Module, d: nn.Module, train: TrainSpec, resolution: int):
        """Raises ValueError naming the field when D has fewer blocks than train.freeze_d, or freeze_g_mapping
        is asked of a generator without a mapping network."""
        blocks = d.input_blocks()
        check_freeze_d(train.freeze_d, resolution)
        if train.freeze_d > len(blocks):  # the networks disagree with the spec's count: say so, never freeze less
            raise ValueError(f"train.freeze_d={train.freeze_d} but this D has {len(blocks)} blocks")
        params = [p for block in blocks[:train.freeze_d] for p in block.parameters()]
        if train.freeze_g_mapping:
            mapping = getattr(g, "mapping", None)
            if mapping is None:
                raise ValueError("train.freeze_g_mapping is for model.arch=stylegan2: this generator has no mapping "
                                 "network")
            params += list(mapping.layers.parameters())
        self.ids = {id(p) for p in params}
        for p in params:
            p.requires_grad_(False)
        self.counts = {"trainable_params_g": self._count(g), "trainable_params_d": self._count(d),
                       "frozen_blocks_d": train.freeze_d}

    def trainable(self, module: nn.Module) -> list[nn.Parameter]:
        """module's parameters that train (what its optimiser holds)."""
        return [p for p in module.parameters() if id(p) not in self.ids]

    def require_grad(self, module: nn.Module, on: bool) -> None:
        """module.requires_grad_(on) for its trainable parameters; frozen ones stay off."""
        for p in module.parameters():
            p.requires_grad_(on and id(p) not in self.ids)

    def _count(self, module: nn.Module) -> int:
        return sum(p.numel() for p in self.trainable(module))
