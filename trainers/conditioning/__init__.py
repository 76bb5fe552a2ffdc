"""Conditioning: what a conditional generator is asked for, as one vector c per sample.

One interface, two implementations: ``tags`` (a multi-hot vector over the dataset's
vocabulary, :mod:`.tags`) and ``text`` (a sentence embedding of a caption or a prompt,
:mod:`.text`, after StackGAN). Each gives

- ``kind`` ("tags" | "text") and ``dim`` (the size of c);
- ``batch(samples, gen)``: c for a batch of training samples (from each sample's labels);
- ``request(...)``: c for a user's request (tags, or a prompt);
- ``first(n)`` / ``draw(n, seed)``: conditions from the dataset, for sample grids and evaluation;
- ``matching_aware``: whether D also learns that real images with mismatched c are fake.

The auxiliary head of D is the network's (``model.arch``), and its loss follows the
conditioning (``loss.py``). This package imports no torch at module level. It reads datasets
through ``trainers/data`` (tag spelling, caption lines, shards), which never imports it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from trainers.conditioning.tags import TagConditioning, TagEncoder, UnknownTagError

if TYPE_CHECKING:
    import torch

__all__ = ["Conditioning", "TagConditioning", "TagEncoder", "UnknownTagError", "build_conditioning"]


class Conditioning(Protocol):
    kind: str
    matching_aware: bool

    @property
    def dim(self) -> int: ...

    def batch(self, samples: list[dict[str, Any]], gen: torch.Generator) -> torch.Tensor: ...

    def request(self, request: Any) -> torch.Tensor: ...

    def first(self, n: int) -> torch.Tensor: ...

    def draw(self, n: int, seed: int) -> torch.Tensor: ...


def build_conditioning(model, url: str, manifest, rank: int = 0, world_size: int = 1,
                       device: torch.device | None = None) -> Conditioning | None:
    """The conditioning the spec's model section asks for over the dataset at url (None: unconditional).

    Raises ValueError for tags on a dataset without tags; CaptionError for text on one without captions.
    Text: the caption table is read from its cache or computed and cached (``text_cache.py``); with
    several workers in a process group, rank 0 does that and hands the table to the other ranks (a
    collective: every rank calls this), which never load the encoder.
    """
    if model.conditioning == "none":
        return None
    if model.conditioning == "tags":
        cond = TagConditioning(manifest.vocabulary, url)
        if not cond.dim:
            raise ValueError(f"model.conditioning=tags but {url} has no tags (ingest it with a labels file)")
        return cond
    from trainers.conditioning.text import TextConditioning

    return TextConditioning(_caption_table(model, url, manifest, rank, world_size, device))


def _caption_table(model, url: str, manifest, rank: int, world_size: int, device: torch.device | None):
    from trainers.conditioning.text_cache import load_or_compute
    from trainers.distributed import distributed_ready

    if not distributed_ready(world_size):
        return load_or_compute(url, manifest, model.text_encoder, model.text_pooling)[0]
    import torch.distributed as dist

    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = load_or_compute(url, manifest, model.text_encoder, model.text_pooling)[0]
        except Exception as err:  # noqa: BLE001 - every rank raises it, none waits forever
            box[0] = err
    dist.broadcast_object_list(box, src=0, device=device if device is not None and device.type == "cuda" else None)
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]
