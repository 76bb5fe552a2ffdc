"""How every command addresses a registered model: one parser for all the forms.

``MODEL --version V``, ``MODEL@ALIAS``, ``MODEL/V``, ``models:/MODEL/V`` and ``models:/MODEL@ALIAS``
name the same things in every command; a bare ``MODEL`` names the whole model (where a command
takes one). No MLflow and no Ray here: parsing only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from trainers.errors import UsageError

FORMS = "MODEL --version V, MODEL@ALIAS, MODEL/V, models:/MODEL/V or models:/MODEL@ALIAS"
_NAME = re.compile(r"[^/@\s][^/@]*")
_ALIAS = re.compile(r"[A-Za-z_][\w-]*")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        """``models:/NAME/V``, ``models:/NAME@ALIAS`` or, for the whole model, ``models:/NAME``."""
        if self.version is not None:
            return f"models:/{self.name}/{self.version}"
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}"

    @property
    def names_a_version(self) -> bool:
        return self.version is not None or self.alias is not None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name} version {self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def _version(text: str, given: str) -> int:
    if not re.fullmatch(r"[0-9]+", text.strip()) or int(text) < 1:
        raise UsageError(f"a model version is a whole number from 1, got {text!r} in {given!r}")
    return int(text)


def parse_ref(text: str, version: int | str | None = None, need_version: bool = False) -> ModelRef:
    """The model (and version or alias) that text and an optional --version name.

    UsageError, listing the forms, for anything else: an empty name, a version that is not a whole
    number from 1, an alias with other characters than letters, digits, '_' and '-', or --version
    given beside an alias or a version already in text; with need_version, a bare MODEL too.
    """
    given = text
    body = text.strip()
    body = body[len("models:/"):] if body.startswith("models:/") else body
    name, sep, rest = _split(body)
    if not _NAME.fullmatch(name or ""):
        raise UsageError(f"cannot read a model from {given!r}: use {FORMS}")
    ref = ModelRef(name)
    if sep == "/":
        ref = ModelRef(name, version=_version(rest, given))
    elif sep == "@":
        ref = ModelRef(name, alias=parse_alias(rest, f"in {given!r}"))
    if version is not None:
        if ref.names_a_version:
            raise UsageError(f"{given!r} already names a version; --version {version} is one too many")
        ref = ModelRef(name, version=_version(str(version), f"--version {version}"))
    if need_version and not ref.names_a_version:
        raise UsageError(f"{given!r} names no version: use {FORMS}")
    return ref


def parse_alias(text: str, where: str = "") -> str:
    """text when it is an alias (letters, digits, '_' and '-', from a letter or '_'); else UsageError."""
    if not _ALIAS.fullmatch(text or ""):
        raise UsageError(f"an alias is letters, digits, '_' and '-' (from a letter or '_'), got {text!r}"
                         + (f" {where}" if where else ""))
    return text


def parse_name(text: str, where: str = "") -> str:
    """text when it is a bare model name (no version, no alias); else UsageError."""
    if not _NAME.fullmatch(text or "") or text != text.strip():
        raise UsageError(f"expected a registered model's name, got {text!r}" + (f" {where}" if where else ""))
    return text


def _split(body: str) -> tuple[str, str, str]:
    """(name, '/' or '@' or '', the rest) of MODEL, MODEL/V or MODEL@ALIAS."""
    at, slash = body.find("@"), body.find("/")
    cuts = [i for i in (at, slash) if i >= 0]
    if not cuts:
        return body, "", ""
    i = min(cuts)
    return body[:i], body[i], body[i + 1:]
