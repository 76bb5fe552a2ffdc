"""The shape the code keeps: short functions, the layout's import rules, one owner for settings."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGES = ("orchestrator", "trainers", "deploy")


def _sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in _sources("orchestrator", "trainers"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_trainers_import_neither_orchestrator_deploy_nor_mlflow():
    bad = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.split(".")[0] in ("orchestrator", "deploy",
                                                                                          "mlflow"))
           for p in _sources("trainers")}
    assert not {k: v for k, v in bad.items() if v}


def test_deploy_imports_only_trainers_of_ganray():
    bad = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.split(".")[0] == "orchestrator")
           for p in _sources("deploy")}
    assert not {k: v for k, v in bad.items() if v}


def test_registry_commands_import_no_ray():
    code = ("import sys; import orchestrator.registry.versions, orchestrator.explore.generate, orchestrator.job.runs, "
            "orchestrator.job.lifecycle, orchestrator.registry.promotion, orchestrator.registry.model_ref, orchestrator.registry.registrar, "
            "orchestrator.cli.models; from orchestrator.cli import main; "
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
