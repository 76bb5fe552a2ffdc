"""The one grammar of a model reference, used by every command, the spec and the server.

- NAME: ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``. It also names the model's Serve application and
  its URL path, so every name ganray registers can be served.
- ALIAS: ``[A-Za-z_][A-Za-z0-9_-]*`` (at most 255, MLflow's limit), never one of the forms MLflow
  reserves: ``latest`` in any case, and ``v<digits>``/``V<digits>`` (they name versions).
- VERSION: a whole number from 1, written without leading zeros.
- A reference is ``NAME@ALIAS`` or ``NAME/VERSION``, either with an optional ``models:/`` in
  front; ``NAME`` alone names the whole model where a command takes one, and ``NAME --version V``
  names a version where a command has --version.

Parsing only: no MLflow and no Ray here. Every refusal is a :class:`UsageError` that names the
bad part and shows the forms.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from trainers.errors import UsageError

PREFIX = "models:/"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_MAX = 128
NAME_RULE = "1 to 128 letters, digits, '.', '_' and '-', starting with a letter or digit"
ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
ALIAS_MAX = 255  # MLflow's limit
ALIAS_RULE = "letters, digits, '_' and '-', starting with a letter or '_'"
VERSION = re.compile(r"[1-9][0-9]*")
RESERVED_VERSION_ALIAS = re.compile(r"[vV][0-9]+")  # as mlflow.utils.validation reserves them


@dataclass(frozen=True)
class ModelRef:
    """A registered model (name), or one version of it: pinned (version) or followed (alias)."""

    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        """``models:/NAME/V``, ``models:/NAME@ALIAS`` or, for the whole model, ``models:/NAME``."""
        return PREFIX + str(self)

    @property
    def names_a_version(self) -> bool:
        return self.version is not None or self.alias is not None

    @property
    def follows_alias(self) -> bool:
        return self.alias is not None

    def __str__(self) -> str:
        """The reference as written: ``NAME/V``, ``NAME@ALIAS`` or ``NAME`` (parse_ref reads it back)."""
        if self.version is not None:
            return f"{self.name}/{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def forms(need_version: bool = False, version_option: bool = True) -> str:
    """The forms a command takes, for its messages."""
    written = ["NAME@ALIAS", "NAME/VERSION"] + (["NAME --version VERSION"] if version_option else [])
    if not need_version:
        written.append("a bare NAME for the whole model")
    return f"{', '.join(written[:-1])} or {written[-1]} (models:/ in front is optional)"


def parse_ref(text: str, version: int | str | None = None, *, need_version: bool = False,
              version_option: bool = True) -> ModelRef:
    """The model (and version or alias) that text and an optional --version name.

    UsageError naming the bad part and showing the forms for anything else: a name, alias or version
    outside the grammar, more than one '@' or '/', --version beside an alias or a version already in
    text; with need_version, a bare NAME too. version_option: whether the command has --version (so
    its messages show that form)."""
    shown = forms(need_version, version_option)
    if not isinstance(text, str):
        raise UsageError(f"a model reference is text ({shown}), got {text!r}")
    body = text[len(PREFIX):] if text.startswith(PREFIX) else text
    name, sep, rest = _split(body)
    if not name:
        raise UsageError(f"{text!r} names no model: use {shown}")
    _check_name(name, text, shown)
    if sep and ("@" in rest or "/" in rest):
        raise UsageError(f"{text!r} has more than one '@' or '/': use {shown}")
    try:
        ref = ModelRef(name, version=parse_version(rest, f"in {text!r}")) if sep == "/" else \
            ModelRef(name, alias=parse_alias(rest, f"in {text!r}")) if sep == "@" else ModelRef(name)
    except UsageError as err:
        raise UsageError(f"{err}. Use {shown}") from None
    if version is not None:
        if ref.names_a_version:
            raise UsageError(f"{text!r} already names a version; --version {version} is one too many")
        ref = ModelRef(name, version=parse_version(str(version), "(--version)"))
    if need_version and not ref.names_a_version:
        raise UsageError(f"{text!r} names no version: use {shown}")
    return ref


def parse_version(text: str, where: str = "") -> int:
    """The version text writes (a whole number from 1); else UsageError."""
    if not isinstance(text, str) or not VERSION.fullmatch(text):
        raise UsageError(f"a model version is a whole number from 1, got {text!r}" + (f" {where}" if where else ""))
    return int(text)


def parse_alias(text: str, where: str = "") -> str:
    """text when it is an alias of the grammar (and not one MLflow reserves); else UsageError."""
    fault = alias_fault(text)
    if fault:
        raise UsageError(f"the alias {text!r}{f' {where}' if where else ''} {fault}")
    return text


def parse_name(text: str, where: str = "") -> str:
    """text when it is a bare model name (no version, no alias); else UsageError."""
    if isinstance(text, str) and ("@" in text or "/" in text or text.startswith(PREFIX)):
        raise UsageError(f"expected a registered model's bare name (no @ALIAS, /VERSION or models:/), got "
                         f"{text!r}" + (f" {where}" if where else ""))
    _check_name(text, text, "NAME", where)
    return text


def name_fault(name: object) -> str | None:
    """What keeps name out of the NAME grammar (e.g. "it holds ' '"), or None for a valid name."""
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not text"
    if NAME.fullmatch(name):
        return None
    if not name:
        return "it is empty"
    if len(name) > NAME_MAX:
        return f"it has {len(name)} characters"
    if not NAME.fullmatch(name[0]):
        return f"it starts with {name[0]!r}"
    return "it holds " + ", ".join(repr(ch) for ch in dict.fromkeys(name) if not NAME.fullmatch("a" + ch))


def alias_fault(alias: object) -> str | None:
    """Why alias is no alias of the grammar (the rest of a sentence), or None for a valid alias."""
    if not isinstance(alias, str) or not alias:
        return f"is empty: an alias is {ALIAS_RULE}"
    if alias.lower() == "latest" or RESERVED_VERSION_ALIAS.fullmatch(alias):
        return ("is reserved by MLflow ('latest' in any case, and v<digits>, which name versions): "
                "choose another alias, or name a version as NAME/VERSION")
    if len(alias) > ALIAS_MAX:
        return f"has {len(alias)} characters (MLflow takes at most {ALIAS_MAX})"
    if not ALIAS.fullmatch(alias):
        return f"is not an alias: an alias is {ALIAS_RULE}"
    return None


def _check_name(name: str, text: str, shown: str, where: str = "") -> None:
    fault = name_fault(name)
    if fault:
        inside = f" in {text!r}" if text != name else ""
        raise UsageError(
            f"the model name {name!r}{inside}{f' {where}' if where else ''} is outside ganray's model-name grammar "
            f"({fault}): a name is {NAME_RULE} (it also names the Serve application and its URL path); a model "
            f"registered under another name must be renamed in MLflow to be used here. Use {shown}")


def _split(body: str) -> tuple[str, str, str]:
    """(name, '/' or '@' or '', the rest) of NAME, NAME/V or NAME@ALIAS."""
    cuts = [i for i in (body.find("@"), body.find("/")) if i >= 0]
    if not cuts:
        return body, "", ""
    i = min(cuts)
    return body[:i], body[i], body[i + 1:]
