"""The RayService's import_path names the package's Ray Serve application builder (deploy/app.py)."""
from __future__ import annotations

import importlib
import inspect

import yaml

from test_k8s import TARGETS, find, render


def test_the_rayservice_import_path_names_the_serve_app_builder():
    paths = {yaml.safe_load(find(render(t), "RayService", "ganray-serve")["spec"]["serveConfigV2"])
             ["applications"][0]["import_path"] for t in TARGETS}
    assert paths == {"deploy.app:build_app"}
    module, attr = paths.pop().split(":")
    builder = getattr(importlib.import_module(module), attr)
    # Ray Serve calls an application builder with one argument: the config's args.
    params = [p for p in inspect.signature(builder).parameters.values() if p.default is inspect.Parameter.empty]
    assert len(params) == 1 and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                    inspect.Parameter.POSITIONAL_OR_KEYWORD)
