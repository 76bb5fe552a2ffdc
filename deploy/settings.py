"""The application's arguments (``args`` of its serve config), checked once with clear errors."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from deploy.model_ref import ModelRef, parse_model_ref


class ArgsError(ValueError):
    """An application argument that cannot work; the message names it."""


@dataclass(frozen=True)
class ServeSettings:
    model: str
    poll_s: float = 10.0
    max_batch_size: int = 16
    batch_wait_s: float = 0.01
    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    rows_per_pass: int = 64

    @property
    def ref(self) -> ModelRef:
        return parse_model_ref(self.model)

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, args: dict[str, Any] | None) -> "ServeSettings":
        """Checked settings from a serve config's args; ArgsError names the bad or unknown one."""
        if not isinstance(args, dict):
            raise ArgsError(f"the application's args must be a mapping, got {type(args).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(args) - known)
        if unknown:
            raise ArgsError(f"unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "model" not in args:
            raise ArgsError("argument model is required: NAME@ALIAS or NAME/VERSION")
        try:
            parse_model_ref(args["model"])
        except ValueError as err:
            raise ArgsError(str(err)) from None
        values = {"model": str(args["model"]).strip()}
        for name, kind, low in (("poll_s", float, 0.1), ("max_batch_size", int, 1), ("batch_wait_s", float, 0.0),
                                ("replicas", int, 1), ("num_cpus", float, 0.0), ("num_gpus", float, 0.0),
                                ("rows_per_pass", int, 1)):
            if name in args:
                values[name] = _number(name, args[name], kind, low)
        return cls(**values)


def _number(name: str, value: Any, kind: type, low: float) -> int | float:
    ok = not isinstance(value, bool) and (isinstance(value, int) if kind is int else isinstance(value, (int, float)))
    if not ok or value < low or value != value:
        what = "an integer" if kind is int else "a number"
        raise ArgsError(f"argument {name} must be {what} >= {low:g}, got {value!r}")
    return kind(value)
