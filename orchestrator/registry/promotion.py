"""Promotion: gates on a version's metrics, aliases that remember their holders, copies between models.

A gate is ``NAME OP NUMBER`` (``<``, ``<=``, ``>``, ``>=``) on a metric as the version's tags carry it
(``metric.<name>``; either spelling of a metric, ``tag_accuracy`` or ``tag_acc``); a version without the
metric fails the gate. Moving an alias records the version that held it in a registered-model tag
(``ganray.alias_history.<alias>``: the earlier holders, oldest first), so a rollback gives the alias back,
again and again. A copy goes into another registered model (one per environment, as MLflow recommends;
stages are never used) with lineage tags back to its source. No Ray here.
"""
from __future__ import annotations

import json
import math
import operator
import re
from typing import Any, NamedTuple

from mlflow.tracking import MlflowClient

from deploy.loader import named_version, registered_model
from orchestrator.registry.versions import version_metrics
from trainers.errors import GanrayError, UsageError
from trainers.model_ref import ModelRef
from trainers.spec import metric_aliases

HISTORY_TAG = "ganray.alias_history."
HISTORY_KEPT = 100
LINEAGE = ("lineage.source_model", "lineage.source_version", "lineage.source_run")
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_GATE = re.compile(r"\s*([A-Za-z_][\w.\-]*)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")


class GateError(GanrayError):
    """A version that fails a promotion gate; the message names each metric, its value and the rule."""


class PromotionError(GanrayError):
    """An alias that cannot move: nothing to roll back to, or a version that is gone."""


class Gate(NamedTuple):
    name: str
    op: str
    number: float

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.number:g}"


def parse_gate(text: str) -> Gate:
    """A gate from ``NAME OP NUMBER``; UsageError for anything else (== and != are no gates)."""
    m = _GATE.fullmatch(text)
    if not m:
        raise UsageError(f"--require {text!r}: a gate is NAME OP NUMBER with OP one of <, <=, >, >= "
                         "(e.g. \"fid<25\" or \"tag_accuracy>=0.9\")")
    return Gate(m.group(1), m.group(2), float(m.group(3)))


def metric_value(metrics: dict[str, float], name: str) -> tuple[str, float] | None:
    """(the name as the version carries it, its value) for name in either spelling, or None."""
    return next(((n, metrics[n]) for n in metric_aliases(name) if n in metrics), None)


def failed_gates(metrics: dict[str, float], gates: list[Gate]) -> list[str]:
    """One line per gate the metrics fail: the metric, its value and the rule; a missing or NaN value fails."""
    failures = []
    for gate in gates:
        found = metric_value(metrics, gate.name)
        if found is None:
            failures.append(f"{gate.name} is not measured (needs {gate})")
        elif math.isnan(found[1]) or not OPS[gate.op](found[1], gate.number):
            failures.append(f"{found[0]} = {found[1]:.6g} (needs {gate})")
    return failures


def check_gates(what: str, tags: dict[str, str], gates: list[Gate]) -> None:
    """Raises GateError naming every failed gate of a version (and the metrics it has, when one is missing)."""
    metrics = version_metrics(tags)
    failures = failed_gates(metrics, gates)
    if failures:
        missing = any("not measured" in f for f in failures)
        names = f"; it has {', '.join(sorted(metrics)) or 'no metrics'}" if missing else ""
        raise GateError(f"{what} fails its gates: {'; '.join(failures)}{names}")


def alias_history(client: MlflowClient, name: str, alias: str) -> list[int]:
    """The versions that held alias before its holder, oldest first."""
    raw = (client.get_registered_model(name).tags or {}).get(HISTORY_TAG + alias)
    try:
        return [int(v) for v in json.loads(raw)] if raw else []
    except (ValueError, TypeError):
        return []


def alias_holder(client: MlflowClient, name: str, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except Exception:  # noqa: BLE001 - no such alias
        return None


def move_alias(client: MlflowClient, name: str, alias: str, version: int) -> int | None:
    """Points alias at version, recording the version that held it; returns that version (None: no holder).

    The history is written first: a failure between the two writes leaves the holder on top of its own
    history, which rollback skips."""
    previous = alias_holder(client, name, alias)
    if previous == version:
        return previous
    if previous is not None:
        history = (alias_history(client, name, alias) + [previous])[-HISTORY_KEPT:]
        client.set_registered_model_tag(name, HISTORY_TAG + alias, json.dumps(history))
    client.set_registered_model_alias(name, alias, str(version))
    return previous


def rollback(client: MlflowClient, name: str, alias: str) -> tuple[int, int | None]:
    """Gives alias back to its previous holder; returns (that version, the version it replaced)."""
    registered_model(client, name)  # RegistryError for a model that is not there
    history = alias_history(client, name, alias)
    current = alias_holder(client, name, alias)
    while history and history[-1] == current:
        history.pop()
    if not history:
        now = f"version {current}" if current is not None else "no version"
        raise PromotionError(f"{name}@{alias} has no earlier holder to roll back to ({now} holds it; "
                             "every earlier one was rolled back already, or it was never moved)")
    target = history.pop()
    named_version(client, ModelRef(name, version=target))  # a deleted version is named, not silently skipped
    client.set_registered_model_alias(name, alias, str(target))
    client.set_registered_model_tag(name, HISTORY_TAG + alias, json.dumps(history))
    return target, current


def copy_version(client: MlflowClient, source, dst_name: str):
    """The version of dst_name copied from source (a ModelVersion): found again, or copied now with lineage tags."""
    if dst_name == source.name:
        raise UsageError(f"--copy-to {dst_name!r} is the model itself; name another registered model")
    lineage = dict(zip(LINEAGE, (source.name, str(source.version), source.run_id or "")))
    try:
        for mv in client.search_model_versions(f"name='{dst_name}'"):
            if all((mv.tags or {}).get(k) == v for k, v in lineage.items()):
                return mv
    except Exception:  # noqa: BLE001 - no such model yet: the copy creates it
        pass
    copied = client.copy_model_version(f"models:/{source.name}/{source.version}", dst_name)
    for k, v in lineage.items():
        client.set_model_version_tag(dst_name, copied.version, k, v)
    return client.get_model_version(dst_name, copied.version)


def promote(client: MlflowClient, ref: ModelRef, alias: str | None, gates: list[Gate],
            copy_to: str | None = None) -> dict[str, Any]:
    """Checks the gates on the version ref names, copies it into copy_to when given, and moves alias (on
    the copy's model when copying). Returns what happened: model, version, alias, previous, source."""
    source = named_version(client, ref)
    check_gates(f"{ref.name} version {source.version}", source.tags or {}, gates)
    target = copy_version(client, source, copy_to) if copy_to else source
    previous = move_alias(client, target.name, alias, int(target.version)) if alias else None
    return {"model": target.name, "version": int(target.version), "alias": alias, "previous": previous,
            "source": {"model": source.name, "version": int(source.version)} if copy_to else None}
