"""The shape the code keeps: short functions, the layout's import rules, one owner for settings.

The import rules are checked on the source (every import statement, also those inside functions,
followed through ganray's own modules), so a lazy import cannot slip past them.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from conftest import ROOT

PACKAGES = ("orchestrator", "trainers", "deploy")
# deploy/ modules the CLI may import: the registered model's read path and the serve configuration,
# neither of which imports Ray Serve, FastAPI or Ray.
DEPLOY_FOR_THE_CLI = ("deploy.loader", "deploy.serve_config")


def _sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in _sources(*PACKAGES)}


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in _sources(*PACKAGES):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


@lru_cache(maxsize=None)
def _imports(module: str, lazy: bool = True) -> frozenset[str]:
    """Every module name one of ganray's modules imports: wherever the import statement is (lazy), or
    only those that run when the module is imported."""
    tree = ast.parse(MODULES[module].read_text())
    nodes = ast.walk(tree) if lazy else _module_level(tree.body)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return frozenset(names)


def _module_level(body: list[ast.stmt]):
    """The statements that run at import: the module's body, into if/try blocks, not into functions."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            for block in (node.body, node.orelse, getattr(node, "finalbody", []),
                          *[h.body for h in getattr(node, "handlers", [])]):
                yield from _module_level(block)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        elif isinstance(node, ast.ClassDef):
            yield from _module_level(node.body)
        elif node.name == "_register":  # orchestrator.cli's registration runs at import
            yield from ast.walk(node)


def _reached(*roots: str, lazy: str = "") -> set[str]:
    """The modules (ganray's and others') that importing roots can reach through ganray's own modules and
    their packages' __init__ files; function-level imports count in modules under the prefix lazy (and
    in the roots)."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in MODULES]
        if name in MODULES:
            follow = name in roots or bool(lazy) and (name == lazy or name.startswith(lazy + "."))
            todo += sorted(_imports(name, lazy=follow))
    return seen


def _offenders(package: str, forbidden) -> dict[str, list[str]]:
    bad = {}
    for module in (m for m in MODULES if m == package or m.startswith(package + ".")):
        found = sorted(n for n in _imports(module) if forbidden(n))
        if found:
            bad[module] = found
    return bad


def _top(name: str) -> str:
    return name.split(".")[0]


def test_trainers_import_neither_orchestrator_deploy_nor_mlflow():
    assert not _offenders("trainers", lambda n: _top(n) in ("orchestrator", "deploy", "mlflow"))


def test_deploy_imports_no_orchestrator():
    assert not _offenders("deploy", lambda n: _top(n) == "orchestrator")


def test_orchestrator_imports_of_deploy_only_its_read_path_and_serve_config():
    assert not _offenders("orchestrator", lambda n: _top(n) == "deploy" and n not in DEPLOY_FOR_THE_CLI)
    for module in DEPLOY_FOR_THE_CLI:
        reached = {_top(n) for n in _reached(module, lazy=module)}
        assert not reached & {"fastapi", "starlette", "ray"}, (module, sorted(reached & {"fastapi", "starlette", "ray"}))


def test_the_read_side_of_the_data_imports_no_networks_losses_or_conditioning():
    read_side = [m for m in MODULES if m.startswith("trainers.data.stream")]
    assert read_side, "the read side lives in trainers/data/stream/"
    reached = _reached(*read_side, lazy="trainers")
    bad = sorted(n for n in reached if n.startswith(("trainers.networks", "trainers.loss", "trainers.conditioning")))
    assert not bad, bad


def test_data_and_conditioning_do_not_import_each_other_both_ways():
    assert not _offenders("trainers.data", lambda n: n.startswith("trainers.conditioning"))


def test_the_agent_imports_no_torch():
    roots = [m for m in MODULES if m.startswith("orchestrator.agent")] + ["orchestrator.cli.agent"]
    assert not {n for n in _reached(*roots, lazy="orchestrator.agent") if _top(n) == "torch"}
    code = ("import sys; import orchestrator.agent.notices, orchestrator.agent.metadata_http, orchestrator.cli.agent; "
            "from orchestrator.cli import main; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]


def test_orchestrator_keeps_at_most_three_modules_at_its_root_and_a_subpackage_per_process():
    root = sorted(p.name for p in (ROOT / "orchestrator").glob("*.py"))
    assert len(root) <= 3, root
    packages = {p.name for p in (ROOT / "orchestrator").iterdir() if (p / "__init__.py").exists()}
    assert {"cli", "job", "controller", "cluster", "stack", "agent", "registry"} <= packages


def test_an_mlflow_client_is_never_called_c_in_orchestrator():
    found = []
    for path in _sources("orchestrator"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.arg) and node.arg == "c":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            elif isinstance(node, ast.Name) and node.id == "c" and isinstance(node.ctx, ast.Store):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not [f for f in found if "explore/" not in f], found  # explore/: c is the condition vector


def test_registry_commands_import_no_ray():
    code = ("import sys; import orchestrator.registry.versions, orchestrator.explore.generate, orchestrator.job.runs, "
            "orchestrator.job.lifecycle, orchestrator.registry.promotion, orchestrator.registry.registrar, "
            "orchestrator.cli.models, deploy.loader, deploy.serve_config; from orchestrator.cli import main; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_every_ganray_variable_is_read_through_settings_and_listed_in_the_readme():
    from trainers.settings import VARIABLES

    direct = []
    for path in _sources(*PACKAGES):
        if path.name == "settings.py":
            continue
        for m in re.finditer(r"environ(?:\.get)?[\[(]\s*[\"'](GANRAY_\w+)", path.read_text()):
            direct.append(f"{path.relative_to(ROOT)}: {m.group(1)}")
    assert not direct, f"read GANRAY_* through trainers.settings: {direct}"
    used = set()
    for path in _sources(*PACKAGES) + [ROOT / "scripts" / "demo.sh", ROOT / "Makefile"]:
        used |= set(re.findall(r"\bGANRAY_[A-Z0-9_]+", path.read_text()))
    assert used <= set(VARIABLES), f"not in trainers/settings.py: {sorted(used - set(VARIABLES))}"
    readme = (ROOT / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in VARIABLES), [n for n in VARIABLES if f"`{n}`" not in readme]


def test_the_readme_links_only_to_files_inside_the_repository():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)", readme)
    assert links, "the README links to docs/architecture.md at least"
    outside = [link for link in links if "://" in link or link.startswith("..")
               or not (ROOT / link).resolve().is_relative_to(ROOT) or not (ROOT / link).exists()]
    assert not outside, outside
    assert "docs/architecture.md" in links


def test_the_architecture_page_names_only_modules_that_exist():
    page = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"\b((?:orchestrator|trainers|deploy)/[\w/]+\.py)\b", page))
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert named and not missing, missing
