"""The serve configuration of one application: its one owner, for ``ganray serve``, the RayService
manifest (``k8s/base/rayservice.yaml``) and the replicas.

``ganray serve`` builds a :class:`ServeConfig` and sends :meth:`ServeConfig.to_args` as the
application's ``args``; Serve hands them to ``deploy.app:build_app`` and to every replica, which
read them back with :meth:`ServeConfig.from_args` and check them again (unknown keys, types,
ranges, the model reference by ``trainers.model_ref``'s grammar). No Ray, Serve or FastAPI here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from trainers.errors import UsageError
from trainers.model_ref import ModelRef, forms, parse_ref

MODEL_FORMS = forms(need_version=True, version_option=False)


RANGES: dict[str, tuple[type, float]] = {  # every field but model: (type, lowest value)
    "poll_s": (float, 0.1), "max_batch_size": (int, 1), "batch_wait_s": (float, 0.0), "replicas": (int, 1),
    "num_cpus": (float, 0.0), "num_gpus": (float, 0.0), "rows_per_pass": (int, 1)}


class ArgsError(UsageError, ValueError):
    """An application argument that cannot work; the message names it."""


@dataclass(frozen=True)
class ServeConfig:
    """What one application serves and how; every field is an ``args`` key of the same name."""

    model: ModelRef  # NAME@ALIAS (the replicas follow the alias) or NAME/VERSION (pinned)
    poll_s: float = 10.0  # how often a replica checks the alias; POST /reload checks at once
    max_batch_size: int = 16  # Serve's request batching per replica
    batch_wait_s: float = 0.01
    replicas: int = 1
    num_cpus: float = 1.0  # per replica
    num_gpus: float = 0.0  # per replica; a GPU replica samples on cuda
    rows_per_pass: int = 64  # the most input rows one forward pass takes

    def __post_init__(self):
        if not isinstance(self.model, ModelRef):
            raise ArgsError(f"argument model must be a ModelRef naming a version ({MODEL_FORMS}), got {self.model!r}")
        try:  # the reference it writes reads back as itself: every part is of the grammar
            same = parse_ref(str(self.model), need_version=True, version_option=False) == self.model
        except UsageError as err:
            raise ArgsError(f"argument model: {err}") from None
        if not same:
            raise ArgsError(f"argument model must name one version or one alias, got {self.model!r}")
        for name, (kind, low) in RANGES.items():
            object.__setattr__(self, name, _number(name, getattr(self, name), kind, low))

    def to_args(self) -> dict[str, Any]:
        """The application's ``args``: plain JSON types, the model as its reference text."""
        return {f.name: str(self.model) if f.name == "model" else getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_args(cls, args: Any) -> "ServeConfig":
        """The checked config of an application's ``args``; ArgsError names the bad or unknown one."""
        if not isinstance(args, dict):
            raise ArgsError(f"the application's args must be a mapping, got {type(args).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(map(str, set(args) - set(known)))
        if unknown:
            raise ArgsError(f"unknown argument(s) {', '.join(unknown)}; known: {', '.join(known)}")
        if "model" not in args:
            raise ArgsError(f"argument model is required: {MODEL_FORMS}")
        try:
            model = parse_ref(args["model"], need_version=True, version_option=False)
        except UsageError as err:
            raise ArgsError(f"argument model: {err}") from None
        return cls(model, **{k: v for k, v in args.items() if k != "model"})

    def device(self) -> str:
        """cuda when the replica holds a GPU, else cpu."""
        if self.num_gpus > 0:
            import torch

            if torch.cuda.is_available():
                return "cuda"
        return "cpu"

    def max_ongoing_requests(self) -> int:
        """Room for a full batch waiting while one runs, and the page's small requests beside them."""
        return 2 * self.max_batch_size + 8


def _number(name: str, value: Any, kind: type, low: float) -> int | float:
    ok = not isinstance(value, bool) and (isinstance(value, int) if kind is int else
                                          isinstance(value, (int, float)) and math.isfinite(value))
    if not ok or value < low:
        what = "an integer" if kind is int else "a number"
        raise ArgsError(f"argument {name} must be {what} >= {low:g}, got {value!r}")
    return kind(value)
