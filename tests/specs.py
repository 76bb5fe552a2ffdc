"""Small job specs for tests: the small models, and one way to build a spec from its sections.

``spec_dict(name, url, **sections)`` starts from the smallest valid spec (a name, data.url and
model.arch dcgan) and merges each given section into it key by key (``data={"resolution": 16}``
keeps the url). Everything not given is the JobSpec model's default, so a test names each setting
it relies on (steps, batch size, checkpoint interval, workers) where it builds the spec.
``job_spec`` parses that dict as ``ganray run`` parses a file; ``write_spec`` writes the YAML a CLI
test runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.job.spec_file import parse_spec
from trainers.spec import JobSpec

# Models that train in seconds on a CPU at 16x16.
DCGAN = {"arch": "dcgan", "z_dim": 16, "channels": 8}
COND_DCGAN = {"arch": "cond-dcgan", "z_dim": 16, "channels": 8, "embed_dim": 8}
STYLEGAN2 = {"arch": "stylegan2", "z_dim": 16, "w_dim": 16, "channels": 4, "channels_max": 16, "mapping_layers": 2}
COND_DCGAN_TEXT = {**COND_DCGAN, "conditioning": "text"}
STYLEGAN2_TEXT = {**STYLEGAN2, "embed_dim": 8, "conditioning": "text"}
# Smaller still, for tests that need a checkpoint rather than a trained model.
TINY_DCGAN = {"arch": "dcgan", "z_dim": 8, "channels": 4}
TINY_COND_DCGAN = {"arch": "cond-dcgan", "z_dim": 8, "channels": 4, "embed_dim": 4}


def spec_dict(name: str, url: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """The raw spec: {name, data: {url}, model: {arch: dcgan}} with each section of sections merged in."""
    raw: dict[str, Any] = {"name": name, "data": {"url": url}, "model": {"arch": "dcgan"}}
    for key, section in sections.items():
        raw[key] = {**raw.get(key, {}), **section}
    return raw


def job_spec(name: str, url: str, **sections: dict[str, Any]) -> JobSpec:
    """spec_dict(...), validated as the CLI validates a spec file."""
    return parse_spec(spec_dict(name, url, **sections))


def write_spec(path: Path, name: str, url: str, **sections: dict[str, Any]) -> Path:
    """spec_dict(...) written as YAML at path (for `ganray run PATH` and the like); returns path."""
    path.write_text(yaml.safe_dump(spec_dict(name, url, **sections)))
    return path
