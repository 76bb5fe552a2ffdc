"""The embedded stack's secrets without Ray: private folders and 0600 files from their first byte, loose
ones tightened, a Ray temp dir of another user refused, and an S3 server log without presigned query strings."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config
import pytest
import requests

from orchestrator.stack import private_files
from orchestrator.stack.local_stack import LocalStack, ray_session_root, ray_temp_dir
from orchestrator.stack.processes import free_port
from orchestrator.stack.private_files import PrivateFileError


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_home_is_private_and_its_secrets_are_0600_from_the_first_byte(tmp_path, monkeypatch):
    home = tmp_path / "home"
    chmods = []
    monkeypatch.setattr(os, "chmod", lambda *a, **k: chmods.append(a))  # a mode set after creation is too late
    old = os.umask(0)  # whatever a file gets, it gets from its creation
    try:
        LocalStack(home).prepare(s3=True, auth=True)
        private_files.auth_config(home)
    finally:
        os.umask(old)
    assert not chmods
    for d in (home, home / "logs", home / "mlflow", home / "ray"):
        assert mode(d) == 0o700, d
    for f in (home / "ray" / "auth_token", home / "credentials.json", home / "mlflow" / "basic_auth.ini"):
        assert mode(f) == 0o600, f
    creds = json.loads((home / "credentials.json").read_text())
    assert set(creds) == {"access_key", "secret_key", "mlflow_username", "mlflow_password", "mlflow_flask_secret"}
    assert len(creds["mlflow_password"]) >= 24 and creds["mlflow_password"] not in (home / "mlflow" /
                                                                                  "basic_auth.ini").read_text()
    assert sorted(p.name for p in home.iterdir()) == ["credentials.json", "logs", "mlflow", "ray"]  # no temp files


def test_loose_secrets_and_folders_are_tightened_and_kept(tmp_path):
    home = tmp_path / "home"
    (home / "ray").mkdir(parents=True)
    (home / "logs").mkdir()
    (home / "ray" / "auth_token").write_text("tok")
    (home / "credentials.json").write_text(json.dumps({"access_key": "AK", "secret_key": "SK"}))
    for path, m in ((home, 0o755), (home / "logs", 0o777), (home / "ray" / "auth_token", 0o644),
                    (home / "credentials.json", 0o640)):
        os.chmod(path, m)
    LocalStack(home).prepare(s3=True, auth=True)
    assert (mode(home), mode(home / "logs"), mode(home / "ray")) == (0o700, 0o700, 0o700)
    assert mode(home / "ray" / "auth_token") == 0o600 and (home / "ray" / "auth_token").read_text() == "tok"
    creds = json.loads((home / "credentials.json").read_text())
    assert mode(home / "credentials.json") == 0o600 and (creds["access_key"], creds["secret_key"]) == ("AK", "SK")
    assert creds["mlflow_username"] == "ganray"  # the login was added to the same file


def test_secrets_and_folders_of_another_user_are_refused(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "credentials.json").write_text("{}")
    os.chown(home / "credentials.json", 65534, 65534)
    with pytest.raises(PrivateFileError, match="credentials.json belongs to another user"):
        LocalStack(home).prepare(s3=True)
    os.chown(home / "credentials.json", os.getuid(), os.getgid())
    os.chown(home, 65534, 65534)
    with pytest.raises(PrivateFileError, match=f"{home} belongs to another user"):
        LocalStack(home).prepare()


def test_the_ray_temp_dir_is_made_private_before_ray_starts_and_a_foreign_one_is_refused(tmp_path):
    home = tmp_path / "home"
    d = ray_temp_dir(home)
    try:
        assert LocalStack(home)._private_ray_root() == ray_session_root(home)
        assert mode(Path(d)) == 0o700 and ray_session_root(home).startswith(d + "/")
        os.chmod(d, 0o777)  # as Ray leaves its own temp dir: the folder around it is tightened again
        LocalStack(home)._private_ray_root()
        assert mode(Path(d)) == 0o700
        os.chown(d, 65534, 65534)
        with pytest.raises(PrivateFileError, match=f"{d} belongs to another user"):
            LocalStack(home)._private_ray_root()
        os.rmdir(d)
        os.symlink(tmp_path, d)
        with pytest.raises(PrivateFileError, match="symlink"):
            LocalStack(home)._private_ray_root()
    finally:
        if os.path.islink(d):
            os.unlink(d)
        shutil.rmtree(d, ignore_errors=True)


def test_write_secret_replaces_a_file_without_a_moment_of_a_looser_mode(tmp_path):
    path = tmp_path / "s.json"
    private_files.write_secret(path, "one")
    private_files.write_secret(path, "two")
    assert path.read_text() == "two" and mode(path) == 0o600 and [p.name for p in tmp_path.iterdir()] == ["s.json"]


@pytest.fixture
def s3_server(tmp_path):
    """The stack's S3 server module on its own port, logging to a file; stopped by PID."""
    port, log = free_port(), tmp_path / "s3.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.stack.s3_server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                requests.get(f"{url}/moto-api/", timeout=2)
                break
            except requests.RequestException:
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.3)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_s3_server_logs_requests_without_query_strings(s3_server):
    url, log = s3_server
    key_id, secret = "ganrayAKIDTEST01", "sEcReT-" + os.urandom(8).hex()
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key_id,
                      aws_secret_access_key=secret, config=Config(signature_version="s3v4"))
    s3.create_bucket(Bucket="logbucket")
    s3.put_object(Bucket="logbucket", Key="data/shard-000000.tar", Body=b"x" * 100)
    signed = s3.generate_presigned_url("get_object", Params={"Bucket": "logbucket", "Key": "data/shard-000000.tar"})
    assert "X-Amz-Signature=" in signed
    assert requests.get(signed, timeout=10).content == b"x" * 100
    missing = s3.generate_presigned_url("get_object", Params={"Bucket": "logbucket", "Key": "data/missing.tar"})
    assert requests.get(missing, timeout=10).status_code == 404
    time.sleep(0.5)
    text = log.read_text()
    assert "GET /logbucket/data/shard-000000.tar HTTP/1.1" in text and "GET /logbucket/data/missing.tar HTTP/1.1" in text
    for secret_part in ("X-Amz-Signature", "X-Amz-Credential", signed.split("X-Amz-Signature=")[1][:40], key_id,
                        secret, "?"):
        assert secret_part not in text, secret_part


def test_the_log_filter_redacts_signatures_in_any_message_and_traceback():
    import logging

    from orchestrator.stack.s3_server import NoQueryStrings

    try:
        raise ValueError("failed https://h/b/k?X-Amz-Signature=abc123&X-Amz-Credential=AK%2F1")
    except ValueError:
        record = logging.LogRecord("werkzeug", logging.ERROR, __file__, 1, "Error on %s: %s", ("GET /b/k?a=1",
                                   "Signature=zzz9"), sys.exc_info())
    NoQueryStrings().filter(record)
    text = logging.Formatter().format(record)
    assert "GET /b/k" in text and "ValueError" in text
    assert not any(s in text for s in ("abc123", "AK%2F1", "zzz9", "a=1"))

