"""The RayService names the package's Ray Serve application builder (deploy/app.py) and documents exactly
the fields of its serve configuration (deploy.serve_config.ServeConfig), which the replicas read back."""
from __future__ import annotations

import dataclasses
import importlib
import inspect

import yaml

from k8s_manifests import TARGETS, find, render


def _applications() -> list[dict]:
    return [yaml.safe_load(find(render(t), "RayService", "ganray-serve")["spec"]["serveConfigV2"])["applications"][0]
            for t in TARGETS]


def test_the_rayservice_import_path_names_the_serve_app_builder():
    paths = {app["import_path"] for app in _applications()}
    assert paths == {"deploy.app:build_app"}
    module, attr = paths.pop().split(":")
    builder = getattr(importlib.import_module(module), attr)
    # Ray Serve calls an application builder with one argument: the config's args.
    params = [p for p in inspect.signature(builder).parameters.values() if p.default is inspect.Parameter.empty]
    assert len(params) == 1 and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                    inspect.Parameter.POSITIONAL_OR_KEYWORD)


def test_the_proxy_outlasts_the_replicas_request_timeout():
    """Serve's proxy answers a 408 of its own at http_options.request_timeout_s: it must come after the
    app's request_timeout_s (whose answer is a 503 with Retry-After), as `ganray serve` sets it locally."""
    from deploy.serve_config import ServeConfig

    for target in TARGETS:
        config = yaml.safe_load(find(render(target), "RayService", "ganray-serve")["spec"]["serveConfigV2"])
        app_timeout = ServeConfig.from_args(config["applications"][0]["args"]).request_timeout_s
        assert config["http_options"]["request_timeout_s"] >= app_timeout + 5


def test_the_rayservice_args_are_exactly_a_serve_config_the_replicas_accept():
    from deploy.serve_config import ServeConfig
    from trainers.model_ref import ModelRef

    for app in _applications():
        args = app["args"]
        assert list(args) == [f.name for f in dataclasses.fields(ServeConfig)]  # every field, documented in order
        config = ServeConfig.from_args(args)
        assert config.model == ModelRef("anime-gen", alias="champion") and config.model.name == app["name"]
        assert config.to_args() == args  # what `ganray serve` would send for the same settings


SERVE_TOKEN = "/var/run/secrets/ganray/serve/token"


def test_the_serve_token_is_a_file_from_its_secret_never_an_arg():
    """The replicas read the bearer token of POST /reload from a file on their node; the args, which Serve's
    REST API hands to whoever reaches the dashboard and KubeRay sends on every deploy, carry only its path."""
    from deploy.serve_config import ServeConfig

    for target in TARGETS:
        service = find(render(target), "RayService", "ganray-serve")
        args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
        assert ServeConfig.from_args(args).token_file == SERVE_TOKEN
        assert not [k for k in args if "token" in k and k != "token_file" and args[k] is not None]
        spec = service["spec"]["rayClusterConfig"]
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:  # a replica may land on any node
            pod = group["template"]["spec"]
            mount = next(m for m in pod["containers"][0]["volumeMounts"] if SERVE_TOKEN.startswith(m["mountPath"] + "/"))
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            assert volume["secret"]["secretName"] == "ganray-serve-token" and mount["readOnly"] is True
            assert {"key": "token", "path": SERVE_TOKEN.rsplit("/", 1)[1]} in volume["secret"]["items"]
