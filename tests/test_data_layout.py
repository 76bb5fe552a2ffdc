"""The data package's layout: one write side (trainers/data/ingest/) whose public steps both the local
ingest and `--ray` ingest run, a read side (trainers/data/stream/), and conditioning above data, never
the other way round."""
from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import ROOT

RAY_INGEST = ROOT / "orchestrator" / "cluster" / "ingest.py"
LOCAL_INGEST = ROOT / "trainers" / "data" / "ingest" / "local.py"
# The steps of an ingest, in order: what the local ingest and --ray ingest both run.
STEPS = {"open_inputs", "list_candidates", "ChunkIngest", "publish", "finish"}


def _trainers_imports(path: Path) -> dict[str, set[str]]:
    """{module: names} of every `from trainers... import names` in path, also inside functions."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trainers":
            found.setdefault(node.module, set()).update(a.name for a in node.names)
    return found


def test_ray_ingest_uses_no_private_name_of_trainers():
    imported = _trainers_imports(RAY_INGEST)
    private = sorted(f"{m}.{n}" for m, names in imported.items() for n in names if n.startswith("_"))
    assert imported and not private, private
    modules = {n for names in imported.values() for n in names} | set(imported)
    attributes = {node.attr for node in ast.walk(ast.parse(RAY_INGEST.read_text()))
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules}
    assert not {a for a in attributes if a.startswith("_")}, attributes


def test_the_local_ingest_and_ray_ingest_run_the_same_public_steps():
    for path in (LOCAL_INGEST, RAY_INGEST):
        names = {n for m, found in _trainers_imports(path).items() if m.startswith("trainers.data.ingest.")
                 for n in found}
        assert STEPS <= names, (path.name, sorted(STEPS - names))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in (ROOT / "trainers").rglob("*.py")}


def _reached(prefix: str) -> set[str]:
    """ganray's modules that the modules under prefix reach, following every import (also inside
    functions) and the packages' __init__ files."""
    seen, todo = set(), [m for m in MODULES if m == prefix or m.startswith(prefix + ".")]
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return seen


def test_no_import_cycle_between_data_and_conditioning():
    from_data = _reached("trainers.data")
    assert not {m for m in from_data if m.startswith("trainers.conditioning")}, sorted(from_data)
    # what both need lives below both: conditioning spells tags and reads caption lines from trainers/data
    assert {"trainers.data.tags", "trainers.data.captions"} <= _reached("trainers.conditioning")
    assert "trainers.data.tags" in _reached("trainers.data.ingest.labels")


def test_worker_processes_of_ingest_and_the_stream_import_neither_fsspec_nor_torch():
    code = ("import sys, trainers.data.ingest.images, trainers.data.stream.decode; "
            "print(sorted(m for m in ('fsspec', 's3fs', 'torch', 'trainers.conditioning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr[-2000:])


def _png(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _samples(root: Path) -> tuple[dict, dict[str, bytes]]:
    manifest = json.loads((root / "manifest.json").read_text())
    members = {}
    for shard in manifest["shards"]:
        with tarfile.open(root / shard["path"]) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    return manifest, members


def test_ray_tasks_in_this_process_write_the_local_ingest_dataset(tmp_path):
    """ingest_on_ray's steps with its tasks called here, no Ray: two chunks whose keys collide across
    them (z/y.png and z_y.png are both `z_y` within their chunk), a bad image, one of another size."""
    from orchestrator.cluster.ingest import ingest_chunk
    from trainers.data.ingest.chunk import first_resolution
    from trainers.data.ingest.inputs import IngestJob, list_candidates, open_inputs
    from trainers.data.ingest.local import ingest
    from trainers.data.ingest.report import IngestReport, finish, publish
    from trainers.data.ingest.versions import Destination
    from trainers.data.ingest.writer import join_parts

    src = tmp_path / "src"
    (src / "z").mkdir(parents=True)
    for name, data in [("a0.png", _png(16, 0)), ("bad.png", b"not an image"), ("z/y.png", _png(16, 2)),
                       ("big.png", _png(32, 1)), ("z_y.png", _png(16, 3))] + \
            [(f"z{i:03d}.png", _png(16, 10 + i)) for i in range(6)]:
        (src / name).write_bytes(data)
    (src / "labels.csv").write_text("file,tags\n" + "".join(f"{p.relative_to(src).as_posix()},t{i % 3}\n"
                                                            for i, p in enumerate(sorted(src.rglob("*.png")))))
    ingest(src, str(tmp_path / "local"), src / "labels.csv", workers=1)

    dest = f"file://{tmp_path}/chunks"
    job = IngestJob(workers=1, labels_file=src / "labels.csv")
    labels, source = open_inputs(f"file://{src}", dest, job)
    report = IngestReport()
    names = list_candidates(source, labels, job, report.skip)
    expected = first_resolution(source, names, job.fmt)
    source.close()
    items = [(i, n, job.label(labels, n)) for i, n in enumerate(names)]
    cut = names.index("z/y.png") + 1
    destination = Destination(dest)
    version = destination.begin()
    results = [ingest_chunk({"src": f"file://{src}", "dest": dest, "folder": f"{version}/part-{part:06d}",
                             "items": chunk, "job": job, "expected": expected})
               for part, chunk in enumerate((items[:cut], items[cut:]))]
    for _, name, reason in sorted(s for r in results for s in r["skipped"]):
        report.skip(name, reason)
    written = join_parts(((r["accepted"], r["written"]) for r in results), names, destination)
    report.ingested = len(written.hash_items)
    publish(destination, version, written.manifest(expected, job.fmt), report)
    finish(f"file://{src}", dest, report)

    local, local_members = _samples(tmp_path / "local")
    chunked, chunked_members = _samples(tmp_path / "chunks")
    assert chunked["dataset_hash"] == local["dataset_hash"] and chunked["tags"] == local["tags"]
    assert chunked_members == local_members and {"z_y.png", "z_y_1.png"} <= set(chunked_members)
    assert json.loads(chunked_members["z_y_1.json"])["source"] == "z_y.png"
    assert {s["path"].split("/")[1] for s in chunked["shards"]} == {"part-000000", "part-000001"}
    skipped = json.loads((tmp_path / "chunks" / "ingest_report.json").read_text())["skipped"]
    assert sorted(s["file"] for s in skipped) == ["bad.png", "big.png"] and report.ingested == 9
