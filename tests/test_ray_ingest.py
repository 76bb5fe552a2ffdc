"""`ganray data ingest --ray` on the session stack's real Ray head: the local ingest's dataset (the same
dataset_hash and the same samples) from shards written by Ray tasks; SRC and DEST every node reaches."""
from __future__ import annotations

import io
import json
import re
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import ganray

pytestmark = pytest.mark.ray


def samples(url: str) -> tuple[dict, dict[str, tuple[bytes, dict]]]:
    """(manifest, {key: (image bytes, label json)}) of an ingested dataset, read through its manifest."""
    from trainers.data.storage import open_filesystem

    fs, root = open_filesystem(url)
    manifest = json.loads(fs.cat_file(f"{root}/manifest.json"))
    members: dict[str, dict[str, bytes]] = {}
    for shard in manifest["shards"]:
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(f"{root}/{shard['path']}"))) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                assert ext not in members.setdefault(key, {}), f"{m.name} twice"
                members[key][ext] = tar.extractfile(m).read()
    return manifest, {k: (v.get("png") or v.get("jpg"), json.loads(v["json"])) for k, v in members.items()}


def assert_same_dataset(local_url: str, ray_url: str) -> dict:
    local, local_samples = samples(local_url)
    ray, ray_samples = samples(ray_url)
    assert ray["dataset_hash"] == local["dataset_hash"] and ray["num_samples"] == local["num_samples"]
    assert (ray["tags"], ray["resolution"], ray["image_format"]) == (local["tags"], local["resolution"],
                                                                     local["image_format"])
    assert ray_samples == local_samples
    parts = {s["path"].split("/")[1] for s in ray["shards"]}
    assert len(parts) > 1 and all(p.startswith("part-") for p in parts)  # written by several tasks
    return ray


def test_local_only_paths_are_refused_with_ray(faces, tmp_path):
    home = tmp_path / "home"  # no stack: the check comes before any cluster work
    for args, where in [((str(faces), "s3://ganray/data/x"), "SRC"), (("faces", "s3://ganray/data/x"), "SRC"),
                        (("s3://ganray/raw", str(tmp_path / "out")), "DEST"),
                        (("file://relative/faces", "s3://ganray/data/x"), "SRC"),
                        (("s3://ganray/raw/faces.tar", "s3://ganray/data/x"), "SRC")]:
        proc = ganray(home, "data", "ingest", *args, "--ray", check=False)
        assert proc.returncode == 2 and f"--ray: {where}" in proc.stderr, (args, proc.stderr)
    assert "file:///" in ganray(home, "data", "ingest", str(faces), "s3://ganray/data/x", "--ray", check=False).stderr


def test_ray_ingest_from_s3_is_the_local_ingest(stack, ganray_home, faces):
    from trainers.data.storage import open_filesystem

    fs, raw = open_filesystem("s3://ganray/raw/ray-faces")
    for f in faces.iterdir():
        fs.pipe_file(f"{raw}/{f.name}", f.read_bytes())
    labels = str(faces / "labels.csv")
    ganray(ganray_home, "data", "ingest", str(faces), "s3://ganray/data/ri-local", "--labels", labels)
    out = ganray(ganray_home, "data", "ingest", "s3://ganray/raw/ray-faces", "s3://ganray/data/ri-ray", "--labels",
                 labels, "--ray")
    manifest = assert_same_dataset("s3://ganray/data/ri-local", "s3://ganray/data/ri-ray")
    assert manifest["num_samples"] == 240 and f"hash {manifest['dataset_hash'][:12]}" in out.stdout


def _png(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_ray_ingest_keeps_the_local_keys_skips_and_resolution_rule(stack, ganray_home, tmp_path):
    """Keys that collide across tasks (z/y.png and z_y.png are both `z_y`: the second is `z_y_1`), an image
    that does not decode and one of another size (no --resolution: the first image's rules) on a file://
    folder every node sees."""
    src = tmp_path / "src"
    (src / "z").mkdir(parents=True)
    (src / "a0.png").write_bytes(_png(16, 0))
    (src / "bad.png").write_bytes(b"not an image at all")
    (src / "big.png").write_bytes(_png(32, 1))
    (src / "z" / "y.png").write_bytes(_png(16, 2))
    for i in range(40):
        (src / f"z{i:03d}.png").write_bytes(_png(16, 10 + i))
    (src / "z_y.png").write_bytes(_png(16, 3))
    ganray(ganray_home, "data", "ingest", str(src), f"file://{tmp_path}/local")
    ganray(ganray_home, "data", "ingest", f"file://{src}", f"file://{tmp_path}/ray", "--ray")
    manifest = assert_same_dataset(f"file://{tmp_path}/local", f"file://{tmp_path}/ray")
    _, found = samples(f"file://{tmp_path}/ray")
    assert found["z_y"][1]["source"] == "z/y.png" and found["z_y_1"][1]["source"] == "z_y.png"
    assert manifest["num_samples"] == 43 and manifest["resolution"] == 16
    # The same folder as a .zip every node sees: each task opens the archive and reads its members by name.
    shutil.make_archive(str(tmp_path / "src"), "zip", src)
    ganray(ganray_home, "data", "ingest", f"file://{tmp_path}/src.zip", f"file://{tmp_path}/rayzip", "--ray")
    assert_same_dataset(f"file://{tmp_path}/local", f"file://{tmp_path}/rayzip")
    reports = [json.loads((tmp_path / d / "ingest_report.json").read_text()) for d in ("local", "ray")]
    skipped = [sorted((s["file"], re.sub(r"0x[0-9a-f]+", "0x", s["reason"])) for s in r["skipped"]) for r in reports]
    assert skipped[0] == skipped[1] and [f for f, _ in skipped[1]] == ["bad.png", "big.png"]
    assert "resolution 32 differs from the dataset's 16" in dict(skipped[1])["big.png"]
