"""Ingest on local folders and archives: every kind of bad input, counted and explained; real images."""
import io
import json
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import matplotlib
import sklearn

from trainers.data.ingest.images import process_image
from trainers.data.ingest.inputs import IngestError
from trainers.data.ingest.local import ingest
from trainers.data.stream.shard_stream import ShardStream


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int) -> bytes:
    """A tiny PNG whose header claims side x side grey pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (side + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def real_images() -> dict[str, Path]:
    """Images that ship inside installed packages (scikit-learn's and matplotlib's sample data and icons)."""
    mpl = Path(matplotlib.get_data_path())
    found = {f"sklearn/{p.name}": p for p in (Path(sklearn.__file__).parent / "datasets" / "images").glob("*.jpg")}
    found.update({f"mpl/{p.name}": p for p in (mpl / "sample_data").glob("*.jpg")})
    found.update({f"mpl/{p.name}": p for p in (mpl / "sample_data").glob("*.png")})
    found.update({f"mpl/icons/{p.name}": p for p in (mpl / "images").glob("*.png")})
    return found


def test_real_images_with_corrupt_copies_ingest_with_exact_counts_and_reasons(tmp_path):
    real = real_images()
    assert {"sklearn/china.jpg", "sklearn/flower.jpg", "mpl/grace_hopper.jpg"} <= set(real) and len(real) >= 20
    src = tmp_path / "src"
    for name, path in real.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, src / name)
    china, hopper, logo = (real[n].read_bytes() for n in ["sklearn/china.jpg", "mpl/grace_hopper.jpg", "mpl/logo2.png"])
    bad = src / "bad"
    bad.mkdir()
    (bad / "china_truncated.jpg").write_bytes(china[: len(china) // 3])
    (bad / "hopper_header_zeroed.jpg").write_bytes(b"\0" * 64 + hopper[64:])
    (bad / "logo_truncated.png").write_bytes(logo[: len(logo) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.png").write_text("a text file with an image's name")
    (bad / "bomb.png").write_bytes(bomb_png(30000))
    (bad / "svg_icon.svg").write_bytes((Path(matplotlib.get_data_path()) / "images" / "back.svg").read_bytes())

    report = ingest(src, str(tmp_path / "ds"), resolution=32, fmt="jpg", workers=2, shard_mb=0.05)
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert report.ingested == len(real) == report.manifest.num_samples
    assert set(reasons) == {f"bad/{n}" for n in ["china_truncated.jpg", "hopper_header_zeroed.jpg",
                                                 "logo_truncated.png", "empty.jpg", "notes.png", "bomb.png",
                                                 "svg_icon.svg"]}
    assert "truncated" in reasons["bad/china_truncated.jpg"] and "truncated" in reasons["bad/logo_truncated.png"]
    assert reasons["bad/hopper_header_zeroed.jpg"].startswith("not a readable image")
    assert reasons["bad/notes.png"].startswith("not a readable image")
    assert reasons["bad/empty.jpg"] == "zero-byte file"
    assert "decompression bomb" in reasons["bad/bomb.png"]
    assert reasons["bad/svg_icon.svg"] == "not an image file (suffix .svg)"
    on_disk = json.loads((tmp_path / "ds" / "ingest_report.json").read_text())
    assert on_disk["ingested"] == len(real) and len(on_disk["skipped"]) == 7

    got = {s["key"]: s for s in ShardStream(str(tmp_path / "ds"), decode_workers=0, shuffle=False)}
    assert len(got) == len(real)
    china_out = got["sklearn_china"]["image"]
    expected = np.asarray(Image.open(io.BytesIO(process_image(china, 32, "jpg")[0])).convert("RGB"))
    assert china_out.shape == (32, 32, 3) and np.array_equal(china_out, expected)
    # RGBA icons are composited on white: their transparent corners come out white
    assert (got["mpl_icons_back"]["image"][0, 0] >= 250).all()


def test_every_mode_becomes_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    grey16 = Image.fromarray((np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 27))
    inputs = {
        "grey.png": encoded(rgb.convert("L"), "PNG"),
        "grey16.png": encoded(grey16, "PNG"),
        "alpha.png": encoded(rgb.convert("RGBA"), "PNG"),
        "grey_alpha.png": encoded(rgb.convert("LA"), "PNG"),
        "palette.png": encoded(rgb.convert("P"), "PNG"),
        "palette.gif": encoded(rgb.convert("P"), "GIF"),
        "cmyk.jpg": encoded(rgb.convert("CMYK"), "JPEG"),
        "bilevel.bmp": encoded(rgb.convert("1"), "BMP"),
        "float.tif": encoded(rgb.convert("F"), "TIFF"),
    }
    for name, data in inputs.items():
        out, res = process_image(data, 16, "png")
        img = Image.open(io.BytesIO(out))
        assert (img.mode, img.size, res) == ("RGB", (16, 16), 16), name
    # 16-bit values are scaled, not clipped: the brightest corner stays bright, the darkest dark
    a = np.asarray(Image.open(io.BytesIO(process_image(inputs["grey16.png"], None, "png")[0])))
    assert a.shape == (40, 40, 3) and a[0, 0, 0] < 10 and a[-1, -1, 0] > 100
    # centre crop: a 40x60 image keeps its middle 40 columns
    stripes = np.zeros((40, 60, 3), np.uint8)
    stripes[:, :10] = 255
    out = np.asarray(Image.open(io.BytesIO(process_image(encoded(Image.fromarray(stripes), "PNG"), None, "png")[0])))
    assert out.shape == (40, 40, 3) and out.max() == 0


def _archive_members(faces: Path) -> dict[str, bytes]:
    return {"imgs/000000.png": (faces / "000000.png").read_bytes(),
            "imgs/000001.png": (faces / "000001.png").read_bytes(),
            "../escape.png": (faces / "000002.png").read_bytes(),
            "/etc/absolute.png": (faces / "000003.png").read_bytes(),
            "imgs/../../sneaky.png": (faces / "000004.png").read_bytes()}


def test_zip_source_refuses_unsafe_members(faces, tmp_path):
    path = tmp_path / "src.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in _archive_members(faces).items():
            zf.writestr(name, data)
    report = ingest(path, str(tmp_path / "ds"), workers=1)
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert report.ingested == 2
    assert set(reasons) == {"../escape.png", "/etc/absolute.png", "imgs/../../sneaky.png"}
    assert all("(refused)" in r for r in reasons.values()) and "absolute" in reasons["/etc/absolute.png"]
    assert not (tmp_path / "escape.png").exists() and not (tmp_path.parent / "sneaky.png").exists()


def test_tar_source_refuses_unsafe_members_and_links(faces, tmp_path):
    path = tmp_path / "src.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in _archive_members(faces).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("imgs/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    report = ingest(path, str(tmp_path / "ds"), workers=1)
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert report.ingested == 2
    assert set(reasons) == {"../escape.png", "/etc/absolute.png", "imgs/../../sneaky.png", "imgs/link.png"}
    assert "link" in reasons["imgs/link.png"] and "(refused)" in reasons["imgs/link.png"]


def test_labels_json_with_captions_and_unlabelled_files(faces, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        shutil.copy(faces / f"{i:06d}.png", src / f"{i:06d}.png")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({
        "000000.png": {"tags": [" Blue  Eyes ", "HAT"], "caption": "a girl in a hat"},
        "000001.png": {"tags": "pink hair, Blush"},
        "000002.png": {"tags": []},
        "missing.png": {"tags": ["x"]},
    }))
    report = ingest(src, str(tmp_path / "ds"), labels, workers=1)
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert report.ingested == 3 and reasons == {"000003.png": "no label for this file",
                                                "missing.png": "listed in labels but no such file"}
    assert report.manifest.tags == {"blue eyes": 1, "blush": 1, "hat": 1, "pink hair": 1}
    got = {s["key"]: s for s in ShardStream(str(tmp_path / "ds"), decode_workers=0)}
    assert got["000000"]["tags"] == ["blue eyes", "hat"] and got["000000"]["caption"] == "a girl in a hat"
    assert got["000002"]["tags"] == [] and got["000002"]["caption"] is None
    with tarfile.open(tmp_path / "ds" / report.manifest.shards[0].path) as tf:  # WebDataset layout
        names = tf.getnames()
        meta = json.loads(tf.extractfile("000000.json").read())
    assert names[:2] == ["000000.png", "000000.json"] and meta["source"] == "000000.png"


def test_hash_depends_on_content_only(faces, tmp_path):
    a = ingest(faces, str(tmp_path / "a"), faces / "labels.csv", shard_mb=0.02, workers=2).manifest
    b = ingest(faces, str(tmp_path / "b"), faces / "labels.csv", shard_mb=1, workers=1).manifest
    assert a.dataset_hash == b.dataset_hash and len(a.shards) > len(b.shards) == 1
    c = ingest(faces, str(tmp_path / "c"), faces / "labels.csv", resolution=8, workers=1).manifest
    assert c.dataset_hash != a.dataset_hash
    labels = (faces / "labels.csv").read_text().replace("hat", "cap")
    (tmp_path / "l.csv").write_text(labels)
    d = ingest(faces, str(tmp_path / "d"), tmp_path / "l.csv", workers=1).manifest
    assert d.dataset_hash != a.dataset_hash


def test_nothing_ingested_and_bad_arguments_fail_with_reasons(faces, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"garbage")
    with pytest.raises(IngestError, match="nothing ingested"):
        ingest(src, str(tmp_path / "out"), workers=1)
    assert json.loads((tmp_path / "out" / "ingest_report.json").read_text())["skipped"][0]["file"] == "a.png"
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(IngestError, match="source not found"):
        ingest(tmp_path / "nope", str(tmp_path / "out2"))
    with pytest.raises(IngestError, match="neither a folder nor"):
        ingest(src / "a.png", str(tmp_path / "out3"))
    with pytest.raises(IngestError, match="labels file not found"):
        ingest(faces, str(tmp_path / "out4"), tmp_path / "none.csv")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(IngestError, match="unreachable or not writable"):
        ingest(faces, str(blocker / "ds"))
