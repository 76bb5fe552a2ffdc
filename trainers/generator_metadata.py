"""What a registered generator carries about itself, and the one reader of it.

A generator registered by ganray is an exported module with one input, ``[z | c]``
(N, z_dim + c_dim; a StyleGAN2 takes ``[z | c | psi]``, its truncation per row: the
``input`` key says which), and this metadata under the model's ``metadata["ganray"]``: the
generator config (arch, resolution, z and c sizes: enough to rebuild it), the tag
vocabulary in the order of c, the conditioning, the step and dataset it came from,
and its latest evaluation. The registry writes it (``to_dict``); ``generate`` and the
server read it back (``read_metadata``), so both agree on every key.

A StyleGAN2 version also carries its parts (``exports``, written by ``trainers.exports``): the
mapping ``[z | c | psi] -> ws`` and the synthesis ``(ws, *noise) -> images`` as pt2 archives and
the fixed noise maps as an ``.npz``, files inside the model folder, with ``num_ws``, ``w_dim`` and
``noise_shapes``. A version is untrusted input: :func:`read_exports` takes only relative paths
of the known kinds and shapes that are the architecture's own.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from trainers.errors import GanrayError

METADATA_KEY = "ganray"


class MetadataError(GanrayError, ValueError):
    """A model whose metadata is not ganray's, or does not hold together."""


@dataclass(frozen=True)
class GeneratorMetadata:
    generator_config: dict[str, Any]
    vocabulary: list[str] = field(default_factory=list)
    conditioning: str = "none"
    step: int | None = None
    dataset_hash: str | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    packed_input: str | None = None  # what a stored version's module takes; None: what an export takes today
    text_encoder: str | None = None  # text conditioning: the sentence encoder whose embedding c is
    text_pooling: str | None = None  # text conditioning: how the encoder's embeddings make c (phrases.py)
    # tags: the training data's most frequent tag sets ("a,b,c": count), what unspecified tags are drawn from
    tag_sets: dict[str, int] = field(default_factory=dict)
    # a StyleGAN2's exported parts ({} when none: other architectures, versions registered before them)
    exports: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return str(self.generator_config["arch"])

    @property
    def z_dim(self) -> int:
        return int(self.generator_config["z_dim"])

    @property
    def c_dim(self) -> int:
        return int(self.generator_config.get("c_dim") or 0)

    @property
    def resolution(self) -> int:
        return int(self.generator_config["resolution"])

    @property
    def input(self) -> str:
        """The columns of the module's one input, e.g. ``z|c`` or ``z|c|psi`` (a StyleGAN2 export today)."""
        if self.packed_input:
            return self.packed_input
        return "|".join(["z"] + (["c"] if self.c_dim else []) + (["psi"] if self.arch == "stylegan2" else []))

    @property
    def takes_psi(self) -> bool:
        """Whether the module takes StyleGAN2's truncation psi as its last input column."""
        return "psi" in self.input.split("|")

    @property
    def input_width(self) -> int:
        """The width of the module's input: z_dim + c_dim (+ 1 for psi)."""
        return self.z_dim + self.c_dim + int(self.takes_psi)

    @cached_property
    def tag_table(self):
        """The counts, pairs and groups of its tag-set table (``trainers.tag_groups.TagTable``), computed once
        per metadata object (a served version's requests all read the same one)."""
        from trainers.tag_groups import tag_table

        return tag_table(list(self.vocabulary), self.tag_sets)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (JSON-safe); ``input`` says what the exported module takes."""
        return {"generator_config": self.generator_config, "vocabulary": list(self.vocabulary),
                "conditioning": self.conditioning, "c_dim": self.c_dim, "input": self.input,
                "step": self.step, "dataset_hash": self.dataset_hash, "evaluation": self.evaluation,
                "text_encoder": self.text_encoder, "text_pooling": self.text_pooling,
                "tag_sets": dict(self.tag_sets), **({"exports": dict(self.exports)} if self.exports else {})}

    @classmethod
    def from_checkpoint_info(cls, info: dict[str, Any]) -> "GeneratorMetadata":
        """From ``generator_from_checkpoint``'s info: finite numbers and strings of the last evaluation only."""
        evaluation = {k: v for k, v in (info.get("evaluation") or {}).items()
                      if isinstance(v, (int, float, str)) and not (isinstance(v, float) and v != v)}
        config = dict(info["generator_config"])
        conditioning = info.get("conditioning") or ("tags" if config.get("c_dim") else "none")
        step = info.get("step")
        text = conditioning == "text"  # c is a text embedding: no vocabulary, the spec's encoder and pooling
        from trainers.spec import read_stored_spec
        return cls(config, [] if text else list(info.get("tags") or []), conditioning,
                   int(step) if step is not None else None, info.get("dataset_hash"), evaluation,
                   text_encoder=info["spec"]["model"]["text_encoder"] if text else None,
                   text_pooling=read_stored_spec(info["spec"])["model"]["text_pooling"] if text else None,
                   tag_sets={} if text else dict(info.get("tag_sets") or {}))


def read_metadata(model_metadata: dict[str, Any] | None, where: str = "the model") -> GeneratorMetadata:
    """The ganray metadata of a logged model's metadata dict; MetadataError when it is not ganray's.

    Versions registered before ``vocabulary`` was named so carry it as ``tags``; a version without
    ``input`` takes ``[z | c]`` (no psi).
    """
    raw = (model_metadata or {}).get(METADATA_KEY)
    if not isinstance(raw, dict) or not isinstance(raw.get("generator_config"), dict):
        raise MetadataError(f"{where} was not registered by ganray (no generator metadata)")
    vocabulary = list(raw.get("vocabulary", raw.get("tags")) or [])
    meta = GeneratorMetadata(raw["generator_config"], vocabulary, raw.get("conditioning") or "none",
                             raw.get("step"), raw.get("dataset_hash"), dict(raw.get("evaluation") or {}),
                             text_encoder=raw.get("text_encoder"), tag_sets=_tag_sets(raw.get("tag_sets")),
                             text_pooling=raw.get("text_pooling"))
    if meta.conditioning == "text" and not meta.text_encoder:
        raise MetadataError(f"{where} is text-conditioned but its metadata names no text encoder")
    if meta.text_encoder and not meta.text_pooling:  # registered before phrase pooling: whole sentences
        meta = replace(meta, text_pooling="sentence")
    stored = str(raw.get("input") or ("z|c" if meta.c_dim else "z"))
    if stored != meta.input:  # a version exported before today's input (say, a StyleGAN2 without psi)
        meta = replace(meta, packed_input=stored)
    if meta.c_dim and meta.conditioning == "tags" and len(vocabulary) != meta.c_dim:
        raise MetadataError(f"{where} takes {meta.c_dim} tags but its metadata lists {len(vocabulary)}")
    if raw.get("exports"):
        meta = replace(meta, exports=read_exports(raw["exports"], meta, where))
    return meta


EXPORT_FILES = {"mapping": ".pt2", "synthesis": ".pt2", "noise": ".npz"}  # each part and its file's suffix
MAX_EXPORT_PATH = 200


def style_shapes(generator_config: dict[str, Any]) -> dict[str, Any]:
    """A StyleGAN2's part shapes from its config: ``num_ws``, ``w_dim`` and ``noise_shapes`` (one [r, r] per
    synthesis layer: 4x4 once, then two per resolution up to the image's, as ``networks.stylegan2``)."""
    resolution = int(generator_config["resolution"])
    sizes = [4] + [r for r in (2 ** k for k in range(3, resolution.bit_length())) for _ in range(2)]
    return {"num_ws": len(sizes) + 1, "w_dim": int(generator_config["w_dim"]),
            "noise_shapes": [[r, r] for r in sizes]}


def read_exports(raw: Any, meta: GeneratorMetadata, where: str = "the model") -> dict[str, Any]:
    """A version's ``exports`` checked: a StyleGAN2's, each part a relative path (no ``..``, not absolute,
    its kind's suffix) and the shapes its architecture has; MetadataError naming what is wrong. Whether a
    path stays inside the model folder (symlinks) is ``trainers.safe_model``'s check, on the files."""
    if meta.arch != "stylegan2":
        raise MetadataError(f"{where} is {meta.arch} but its metadata lists exported StyleGAN2 parts")
    if not isinstance(raw, dict):
        raise MetadataError(f"{where}: its metadata's exports are not a mapping ({type(raw).__name__})")
    out: dict[str, Any] = {}
    for part, suffix in EXPORT_FILES.items():
        path = raw.get(part)
        if (not isinstance(path, str) or not path.endswith(suffix) or len(path) > MAX_EXPORT_PATH
                or path.startswith(("/", "\\")) or ".." in path.replace("\\", "/").split("/")):
            raise MetadataError(f"{where}: its exported {part} {str(path)[:MAX_EXPORT_PATH]!r} is not a relative "
                                f"path inside the model folder ending in {suffix}")
        out[part] = path
    expected = style_shapes(meta.generator_config)
    for key, want in expected.items():
        if raw.get(key) != want:
            raise MetadataError(f"{where}: its exports' {key} {str(raw.get(key))[:200]} is not its architecture's "
                                f"({want}, for resolution {meta.resolution})")
    return {**out, **expected}


def _tag_sets(raw: Any) -> dict[str, int]:
    """A stored tag-set table, or {} for versions registered before it existed (or a malformed one)."""
    if not isinstance(raw, dict):
        return {}
    return {str(k): int(v) for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0}
