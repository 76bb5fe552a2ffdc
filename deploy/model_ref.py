"""Which registered generator a server follows: ``NAME@ALIAS`` (follows the alias) or ``NAME/VERSION``."""
from __future__ import annotations

import re
from dataclasses import dataclass

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # also an application name and a URL path part


class ModelRefError(ValueError):
    """A model reference that is not NAME@ALIAS or NAME/VERSION; the message shows the form."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str | None = None
    version: int | None = None

    @property
    def follows_alias(self) -> bool:
        return self.alias is not None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


def parse_model_ref(text: object) -> ModelRef:
    """NAME@ALIAS or NAME/VERSION (a models:/ prefix is accepted) -> ModelRef; ModelRefError otherwise."""
    if not isinstance(text, str):
        raise ModelRefError(f"model must be a string NAME@ALIAS or NAME/VERSION, got {text!r}")
    rest = text.strip().removeprefix("models:/")
    name, sep, tail = rest.partition("@") if "@" in rest else rest.partition("/")
    if not sep or not NAME.match(name) or not tail:
        raise ModelRefError(f"model must look like NAME@ALIAS or NAME/VERSION (NAME of letters, digits, '.', "
                            f"'_', '-'), got {text!r}")
    if sep == "@":
        if not NAME.match(tail):
            raise ModelRefError(f"alias must be letters, digits, '.', '_' or '-', got {tail!r}")
        return ModelRef(name, alias=tail)
    if not tail.isdigit() or int(tail) < 1:
        raise ModelRefError(f"version must be a positive integer, got {tail!r}")
    return ModelRef(name, version=int(tail))
