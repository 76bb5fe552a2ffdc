"""JobSpec files: YAML loading, ``--set`` overrides and errors that name the field and the value.

The model itself (fields, bounds, defaults, ``same_spec``, how a stored spec differs) lives in
:mod:`trainers.spec`, where the workers use it too; import it from there.
Every field but ``name``, ``data.url`` and ``model.arch`` has a default that runs on a CPU
laptop. Endpoints and credentials never belong in a spec.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trainers.errors import UsageError
from trainers.spec import JobSpec
from trainers.urls import redact_text, redact_url

__all__ = ["SpecError", "apply_overrides", "load_spec", "parse_spec", "read_yaml"]


class SpecError(UsageError, ValueError):
    """A JobSpec that cannot run; the message names the field and the value."""


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading unquoted exponent numbers (1e-4, 2E5, -3.5e+2) as floats.

    YAML 1.1 (PyYAML's resolver) wants a dot and a signed exponent, so it reads ``lr_g: 1e-4`` as a
    string; YAML 1.2 and every user read it as a number. A quoted '1e-4' stays a string (and a spec
    refuses it: types are strict)."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml(text: str) -> Any:
    """A YAML document as the spec reads it (safe, with exponent numbers as numbers)."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader


def _yaml_problem(err: yaml.YAMLError) -> str:
    """What is wrong and where (line, column), without quoting the file (a line may hold a secret)."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(err, "context", None)
    problem = getattr(err, "problem", None) or type(err).__name__
    return redact_text(f"{context + ': ' if context else ''}{problem}{where}")


def _shown(value: Any) -> str:
    """A bad value as an error shows it: repr, with any URL credential replaced by ***."""
    return repr(redact_url(value)) if isinstance(value, str) else repr(value)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "tuple[")))
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown field `{loc}` (value {_shown(value)})")
        elif e["type"] == "missing":
            lines.append(f"missing field `{loc}`")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"field `{loc}`: {msg} (got {_shown(value)})" if loc else msg)
    return "invalid JobSpec:\n  " + "\n  ".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of a raw spec dict with ``a.b=c`` overrides applied (values parsed as YAML)."""
    raw = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected FIELD=VALUE, e.g. train.steps=100")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {key.strip()}: `{p}` is not a section")
        try:
            node[parts[-1]] = read_yaml(value) if value.strip() else ""
        except yaml.YAMLError:
            raise SpecError(f"--set {key.strip()}=...: the value is not valid YAML") from None
    return raw


def parse_spec(raw: Any, overrides: list[str] | None = None) -> JobSpec:
    """Validates a raw spec (a mapping) with overrides; raises SpecError naming each bad field."""
    if not isinstance(raw, dict):
        raise SpecError(f"a JobSpec must be a mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_errors(err)) from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Reads and validates a JobSpec YAML file; raises SpecError for a missing, unreadable or invalid file."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"spec file {path} is not valid YAML: {_yaml_problem(err)}") from None
    return parse_spec(raw, overrides)

