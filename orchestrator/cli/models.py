"""``ganray promote``, ``ganray rollback`` and ``ganray models list|show|delete``: the registry, without Ray.

Every command addresses a model by ``trainers.model_ref``'s one grammar (NAME --version V, NAME@ALIAS,
NAME/V, models:/NAME/V, models:/NAME@ALIAS; a bare NAME for a whole model), and finds it with
``deploy.loader``'s resolver.
"""
from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator

import click

from trainers.errors import GanrayError, UsageError


@contextlib.contextmanager
def _registry() -> Iterator[Any]:
    """A client of the tracking server's registry; an MLflow refusal becomes a one-line error."""
    from mlflow.exceptions import MlflowException

    from orchestrator import tracking_server
    from orchestrator.cluster.endpoints import resolve_endpoints

    client = tracking_server.client(resolve_endpoints().mlflow_uri)
    try:
        yield client
    except MlflowException as err:
        raise GanrayError(f"the model registry at {client.tracking_uri} refused: {err.message.splitlines()[0]}") from None


@click.command("promote")
@click.argument("model")
@click.option("--version", "version", help="The version, when MODEL names none.")
@click.option("--alias", help="The alias to move to the version, e.g. champion.")
@click.option("--require", "requires", multiple=True, metavar="GATE",
              help='A gate NAME OP NUMBER on the version\'s metrics, e.g. "fid<25"; repeatable.')
@click.option("--copy-to", metavar="MODEL_PROD", help="Copy the version into this registered model first.")
@click.option("--json", "as_json", is_flag=True, help="Print what happened as JSON.")
def promote_cmd(model: str, version: str | None, alias: str | None, requires: tuple[str, ...],
                copy_to: str | None, as_json: bool) -> None:
    """Move an alias (and/or copy a version into another model) when the version passes every gate."""
    from orchestrator.registry.promotion import parse_gate, promote
    from trainers.model_ref import parse_alias, parse_name, parse_ref

    ref = parse_ref(model, version, need_version=True)
    gates = [parse_gate(g) for g in requires]
    if not alias and not copy_to:
        raise UsageError("promote needs --alias ALIAS, --copy-to MODEL_PROD, or both")
    alias = parse_alias(alias, "(--alias)") if alias else None
    copy_to = parse_name(copy_to, "(--copy-to)") if copy_to else None
    with _registry() as client:
        done = promote(client, ref, alias, gates, copy_to)
    if as_json:
        click.echo(json.dumps(done, indent=2))
        return
    where = f"{done['model']} version {done['version']}"
    if done["source"]:
        click.echo(f"copied {done['source']['model']} version {done['source']['version']} to {where}")
    if alias:
        was = done["previous"]
        note = "already held it" if was == done["version"] else f"was {was}" if was else "it had no holder"
        click.echo(f"{done['model']}@{alias} -> version {done['version']} ({note})")


@click.command("rollback")
@click.argument("model")
@click.option("--alias", help="The alias to give back to its previous holder (or MODEL@ALIAS).")
def rollback_cmd(model: str, alias: str | None) -> None:
    """Give an alias back to the version that held it before (repeatable: each call goes one further back)."""
    from orchestrator.registry.promotion import rollback
    from trainers.model_ref import parse_alias, parse_ref

    ref = parse_ref(model, version_option=False)
    if ref.version is not None:
        raise UsageError(f"rollback takes MODEL --alias ALIAS or MODEL@ALIAS, got {model!r}")
    if ref.alias and alias and ref.alias != alias:
        raise UsageError(f"{model!r} names alias {ref.alias!r} but --alias says {alias!r}")
    alias = ref.alias or alias
    if not alias:
        raise UsageError("rollback needs an alias: MODEL --alias ALIAS or MODEL@ALIAS")
    alias = parse_alias(alias, "(--alias)")
    with _registry() as client:
        restored, replaced = rollback(client, ref.name, alias)
    click.echo(f"{ref.name}@{alias} -> version {restored} (was {replaced})")


@click.group("models")
def models_group() -> None:
    """Registered models: their versions, aliases, metrics and lineage."""


@models_group.command("delete")
@click.argument("model")
@click.option("--version", "version", help="The version, when MODEL names none.")
@click.option("--json", "as_json", is_flag=True, help="Print what happened as JSON.")
def delete_cmd(model: str, version: str | None, as_json: bool) -> None:
    """Delete a version and the training checkpoint the registry kept for it (refused while an alias holds it)."""
    from orchestrator.registry.deletion import delete_version
    from trainers.model_ref import parse_ref

    ref = parse_ref(model, version, need_version=True)
    with _registry() as client:
        done = delete_version(client, ref)
    if as_json:
        click.echo(json.dumps(done, indent=2))
        return
    kept = (f"its checkpoint {done['checkpoint']} deleted" if done["checkpoint_deleted"] else
            f"its checkpoint {done['checkpoint']} kept for {', '.join(done['kept_for'])}" if done["kept_for"] else
            "no checkpoint copy of its own to delete")
    click.echo(f"deleted {done['model']} version {done['version']}; {kept}")


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: a list of models.")
def list_cmd(as_json: bool) -> None:
    """Every registered model with its newest version and its aliases."""
    with _registry() as client:
        rows = [_model_row(client, rm) for rm in _registered_models(client)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no registered models")
    for r in rows:
        aliases = ", ".join(f"{a['alias']} -> {a['version']}" for a in r["aliases"]) or "-"
        click.echo(f"{r['name']:28s} {r['versions']:4d} versions  newest {r['latest_version']}  aliases: {aliases}")


def _registered_models(client) -> list:
    found, token = [], None
    while True:
        page = client.search_registered_models(max_results=200, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return sorted(found, key=lambda rm: rm.name)


def _model_row(client, rm) -> dict[str, Any]:
    versions = [int(v.version) for v in client.search_model_versions(f"name='{rm.name}'")]
    return {"name": rm.name, "versions": len(versions), "latest_version": max(versions) if versions else None,
            "aliases": _aliases(rm)}


def _aliases(rm) -> list[dict[str, Any]]:
    return [{"alias": a, "version": int(v)} for a, v in sorted(rm.aliases.items())]


@models_group.command("show")
@click.argument("model")
@click.option("--version", "version", help="One version, when MODEL names none.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def show_cmd(model: str, version: str | None, as_json: bool) -> None:
    """A model (every version) or one version (MODEL@ALIAS, MODEL/V, ...): aliases, metrics, lineage."""
    from deploy.loader import named_version, registered_model
    from orchestrator.registry.promotion import HISTORY_TAG
    from orchestrator.registry.versions import model_versions, version_record
    from trainers.model_ref import parse_ref

    ref = parse_ref(model, version)
    with _registry() as client:
        if ref.names_a_version:
            mv = named_version(client, ref)
            mv.aliases = sorted(a for a, v in client.get_registered_model(mv.name).aliases.items()
                                if str(v) == str(mv.version))
            out: dict[str, Any] = version_record(mv)
        else:
            rm = registered_model(client, ref.name)
            out = {"name": rm.name, "aliases": _aliases(rm),
                   "alias_history": {k[len(HISTORY_TAG):]: json.loads(v) for k, v in (rm.tags or {}).items()
                                     if k.startswith(HISTORY_TAG)},
                   "versions": [version_record(mv) for mv in model_versions(client, rm.name)]}
    click.echo(json.dumps(out, indent=2) if as_json else _text(out))


def _text(out: dict[str, Any]) -> str:
    if "versions" not in out:
        return _version_text(out)
    aliases = ", ".join(f"{a['alias']} -> {a['version']}" for a in out["aliases"]) or "none"
    lines = [f"{out['name']}: {len(out['versions'])} versions; aliases: {aliases}"]
    lines += [f"  history of {a}: {', '.join(map(str, h)) or '-'}" for a, h in sorted(out["alias_history"].items())]
    return "\n".join(lines + [_version_text(v) for v in out["versions"]])


def _version_text(v: dict[str, Any]) -> str:
    metrics = ", ".join(f"{k} {x:.4g}" if x is not None else f"{k} nan" for k, x in v["metrics"].items()
                        if "." not in k) or "none"
    lines = [f"{v['name']} version {v['version']}  aliases: {', '.join(v['aliases']) or '-'}",
             f"    step {v['step']}  kimg {v['kimg']}  run {v['run_id']}  arch {v['arch']}",
             f"    metrics: {metrics}"]
    if v["lineage"]:
        lin = v["lineage"]
        lines.append(f"    copied from {lin['source_model']} version {lin['source_version']} (run {lin['source_run']})")
    if v["init_from"]:
        src = v["init_from"]
        where = f"{src['model']} version {src.get('version')}" if "model" in src else f"job {src.get('job')}"
        lines.append(f"    fine-tuned from {where} (checkpoint {src.get('checkpoint')})")
    return "\n".join(lines)


COMMANDS = [promote_cmd, rollback_cmd, models_group]
