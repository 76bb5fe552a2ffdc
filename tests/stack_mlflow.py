"""The session stack's MLflow as tests use it: a client of it, and untrained generators registered in it;
and the bearer token `ganray serve` keeps for an application of that stack.

Shared by the serving tests (tests/test_serve.py, tests/test_serve_page.py, tests/test_hostile_serve.py) and
the CLI tests that read what a job recorded; the stack itself comes from the fixtures in tests/conftest.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from mlflow.tracking import MlflowClient


def mlflow_client(home: Path) -> MlflowClient:
    """A client of the tracking server and registry of the stack under home (its profile.json)."""
    uri = json.loads((home / "profile.json").read_text())["mlflow_uri"]
    return MlflowClient(uri, registry_uri=uri)


def serve_token(home: Path, name: str) -> str:
    """The bearer token of application name, as `ganray serve` keeps it under home (never printed)."""
    return (home / "serve" / f"{name}.token").read_text().strip()


def register_untrained(client: MlflowClient, name: str, arch: str, vocabulary: list[str], seed: int,
                       psi_export: bool = False, resolution: int = 16, channels: int = 8,
                       channels_max: int = 32, tag_sets: dict[str, int] | None = None) -> int:
    """A freshly initialised generator registered as a version of name, the registry's way (pt2, ganray
    metadata). psi_export: a StyleGAN2 exported with its psi column ([z | c | psi], metadata input z|c|psi).
    resolution, channels and channels_max: a larger (slower) generator than the default 16x16 one.
    tag_sets: the training data's tag-set table the metadata carries (none by default, as older versions)."""
    import mlflow

    from orchestrator.registry.versions import register_generator
    from trainers.generator_metadata import METADATA_KEY, GeneratorMetadata
    from trainers.networks import PackedInputGenerator, build_models
    from trainers.spec import ModelSpec

    torch.manual_seed(seed)
    conditioning = "tags" if vocabulary else "none"
    spec = ModelSpec(arch=arch, z_dim=16, channels=channels, channels_max=channels_max, mapping_layers=2,
                     conditioning=conditioning)
    g, _ = build_models(spec, resolution, c_dim=len(vocabulary))
    meta = GeneratorMetadata(g.config, list(vocabulary), conditioning, step=0, tag_sets=dict(tag_sets or {}))
    exp = client.get_experiment_by_name("serve-tests")
    run_id = client.create_run(exp.experiment_id if exp else client.create_experiment("serve-tests")).info.run_id
    if not psi_export:
        version = register_generator(client, run_id, name, g.eval(), meta, "test", f"untrained-{seed}")
        client.set_terminated(run_id)
        return version
    g.mapping(torch.randn(64, 16), None, update_w_avg=True)
    g.mapping.w_avg.mul_(50)  # far from 0: truncation must show in the pixels
    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(PackedInputGenerator(g).eval(), name="generator",
                                        input_example=np.zeros((2, meta.input_width), np.float32),
                                        metadata={METADATA_KEY: meta.to_dict()}, serialization_format="pt2")
    return int(mlflow.register_model(info.model_uri, name).version)
