"""A new job's first weights from another model's training checkpoint (``model.init_from``).

G, D and G_ema come from the source checkpoint (verified and loaded safely, as a resume's are);
the optimisers, the augmentation probability, the loss state, the step and the RNG stay the new
job's own. Where the new dataset's tags differ from the source's, the rows of every tag-indexed
parameter (:data:`TAG_AXES`: G's tag embedding, D's projection and auxiliary head) are copied
by tag name; a new tag keeps the row the new job initialised it with (from its seed, the same on
every rank), and the source's other tags are dropped. A text model's weights carry over whole:
its c is the sentence encoder's, which ``trainers.init_from`` has checked is the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainers.checkpoints.format import CheckpointError, load_state, verify
from trainers.init_from import architecture_changes, new_fields, source_fields

# (arch, network) -> {parameter: the axis indexed by the tag vocabulary}; tests/test_init_from.py checks it
# against networks built with two vocabulary sizes, so that no tag-indexed parameter goes unmapped
TAG_AXES: dict[tuple[str, str], dict[str, int]] = {
    ("cond-dcgan", "g"): {"embed.weight": 1},
    ("cond-dcgan", "d"): {"project.weight": 1, "aux.weight": 0, "aux.bias": 0},
    ("stylegan2", "g"): {"mapping.embed.weight": 1},
    ("stylegan2", "d"): {"mapping.embed.weight": 1},
}


@dataclass(frozen=True)
class TagCarry:
    """How the source's tag rows met the new vocabulary: copied (both have), new (fresh rows), dropped."""

    copied: int
    new: int
    dropped: int

    def metrics(self) -> dict[str, int]:
        """What the job's first report carries."""
        return {"init_tags_copied": self.copied, "init_tags_new": self.new, "init_tags_dropped": self.dropped}


def carry_tags(source: list[str], new: list[str]) -> TagCarry:
    """Counts of the tags a fine-tune copies, initialises afresh and drops."""
    shared = set(source) & set(new)
    return TagCarry(len(shared), len(set(new) - shared), len(set(source) - shared))


def remapped(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], axes: dict[str, int],
             source_tags: list[str], new_tags: list[str], where: str) -> dict[str, torch.Tensor]:
    """target's state dict with every value taken from source: tag-indexed ones row by row by tag name
    (the new tags keep target's rows), the rest whole. CheckpointError naming the parameter when the
    source lacks one or its shape differs (an architecture the field check did not catch)."""
    index = {t: i for i, t in enumerate(source_tags)}
    out = {}
    for key, value in target.items():
        if key not in source:
            raise CheckpointError(f"{where}: the source has no {key}")
        src = source[key]
        if key in axes and source_tags != new_tags:
            value = value.clone()
            for i, tag in enumerate(new_tags):
                if tag in index:
                    value.select(axes[key], i).copy_(src.select(axes[key], index[tag]))
            out[key] = value
            continue
        if src.shape != value.shape:
            raise CheckpointError(f"{where}: {key} has shape {tuple(src.shape)} in the source, "
                                  f"{tuple(value.shape)} here")
        out[key] = src
    return out


def warm_start(loop, directory: str, verified: bool = False) -> TagCarry:
    """Loads G, D and G_ema of loop from the source checkpoint in directory (verified unless ``verified``);
    returns how the tags were carried. CheckpointError when it does not verify or does not fit."""
    if not verified:
        verify(directory)
    state = load_state(directory)
    changes = architecture_changes(source_fields(state), new_fields(loop.spec.model, loop.resolution))
    if changes:
        raise CheckpointError(f"model.init_from: checkpoint {directory} has other architecture fields "
                              f"({', '.join(changes)})")
    tagged = loop.spec.model.conditioning == "tags"
    source_tags = list(state.get("tags") or []) if tagged else []
    new_tags = list(loop.tags.vocabulary) if tagged and loop.tags else []
    arch = loop.spec.model.arch
    for name, module, stored in (("g", loop.g, state["g"]), ("d", loop.d, state["d"]),
                                 ("g_ema", loop.g_ema, state.get("g_ema") or state["g"])):
        if module is None:
            continue
        axes = TAG_AXES.get((arch, "d" if name == "d" else "g"), {}) if tagged else {}
        module.load_state_dict(remapped(module.state_dict(), stored, axes, source_tags, new_tags,
                                        f"model.init_from: checkpoint {directory}, {name.upper()}"))
    return carry_tags(source_tags, new_tags)
