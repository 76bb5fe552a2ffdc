"""The presigned-GET path for shards: when it is used, how it is configured, what it never prints.

(Against the real S3 server and a fault proxy: tests/test_data_s3.py.)
"""
import pytest

from trainers.data.stream.signed_get import NotForSignedGet, SignedGetter, redact, usable

KEYS = {"key": "AKIDEXAMPLE", "secret": "wJalrXUtnFEMI/K7MDENG", "client_kwargs": {
    "endpoint_url": "http://minio.internal:9000", "region_name": "us-east-1"}}


def signed(options: dict) -> str:
    s3, _ = SignedGetter(options)._clients()
    return s3.generate_presigned_url("get_object", Params={"Bucket": "ganray", "Key": "data/s-000001.tar"})


def test_used_for_s3_with_options_it_understands_only(monkeypatch):
    assert usable("s3://ganray/data", KEYS) and usable("s3a://ganray/data", {})
    assert not usable("gs://bucket/data", {}) and not usable("/local/data", {})
    assert not usable("s3://ganray/data", {**KEYS, "anon": True})  # s3fs-only options keep s3fs
    assert not usable("s3://ganray/data", {"requester_pays": True})
    monkeypatch.setenv("GANRAY_S3_SIGNED_GET", "0")
    assert not usable("s3://ganray/data", KEYS)


def test_endpoint_keys_and_addressing_style_follow_the_s3fs_options():
    path_style = signed(KEYS)
    assert path_style.startswith("http://minio.internal:9000/ganray/data/s-000001.tar?")
    assert "X-Amz-Credential=AKIDEXAMPLE" in path_style and "wJalrXUtnFEMI" not in path_style
    virtual = signed({**KEYS, "config_kwargs": {"s3": {"addressing_style": "virtual"}}})
    assert virtual.startswith("http://ganray.minio.internal:9000/data/s-000001.tar?")


def test_options_botocore_refuses_hand_the_dataset_to_s3fs():
    with pytest.raises(NotForSignedGet, match="cannot make a client"):
        SignedGetter({**KEYS, "config_kwargs": {"no_such_setting": 1}}).get("ganray/data/s-000001.tar", limit=1024)


def test_redact_removes_every_query_string():
    text = ("MaxRetryError: HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: "
            "/ganray/s.tar?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKID%2F2026&X-Amz-Signature=abc (Caused by x)")
    out = redact(text)
    assert "X-Amz" not in out and "AKID" not in out and "/ganray/s.tar?<signed> (Caused by x)" in out
