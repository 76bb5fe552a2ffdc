"""The notice agent against a fake metadata server, and the loop's use of a notice (in-process)."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from fake_metadata import serve
from orchestrator.agent import AwsSpotWatcher, GcpPreemptionWatcher, NoticeAgent


@pytest.fixture
def metadata():
    server, state = serve()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()


def test_aws_notice_drains_once_with_a_deadline_before_the_stop(metadata):
    url, state = metadata
    drains = []
    agent = NoticeAgent(AwsSpotWatcher(url), lambda deadline, msg: drains.append((deadline, msg)), margin_s=10)
    assert not agent.step() and not drains  # 404: no notice yet
    state.terminate_at = time.time() + 120
    assert agent.step() and agent.step()  # drained, and idempotent
    assert len(drains) == 1 and "aws:terminate" in drains[0][1]
    assert 105 <= drains[0][0] - time.time() <= 111  # notice (to the second) minus the margin


def test_gcp_notice(metadata):
    url, state = metadata
    drains = []
    agent = NoticeAgent(GcpPreemptionWatcher(url), lambda d, m: drains.append(d), margin_s=5)
    assert not agent.step()
    state.terminate_at = time.time()
    assert agent.step() and 24 <= drains[0] - time.time() <= 25.5  # GCE gives 30 s


def test_agent_survives_a_metadata_server_that_errors_or_hangs(metadata, caplog):
    url, state = metadata
    drains = []
    agent = NoticeAgent(AwsSpotWatcher(url, timeout_s=0.5), lambda d, m: drains.append(d))
    for mode in ["error", "error", "hang", "hang"]:
        state.mode = mode
        t0 = time.time()
        assert not agent.step() and time.time() - t0 < 3
    state.mode, state.terminate_at = "ok", time.time() + 60
    assert agent.step() and len(drains) == 1
    warnings = [r for r in caplog.records if "metadata server error" in r.getMessage()]
    assert len(warnings) == 2  # one line per change of error kind, not one per poll


def test_a_refused_drain_is_retried(metadata):
    url, state = metadata
    state.terminate_at = time.time() + 60
    calls = []

    def drain(deadline, msg):
        calls.append(deadline)
        if len(calls) == 1:
            raise RuntimeError("GCS unavailable")

    agent = NoticeAgent(AwsSpotWatcher(url), drain)
    assert not agent.step() and agent.step() and len(calls) == 2


def test_a_notice_shorter_than_the_margin_still_drains_with_a_future_deadline(metadata):
    url, state = metadata
    state.terminate_at = time.time() + 3
    got = []
    NoticeAgent(AwsSpotWatcher(url), lambda d, m: got.append(d), margin_s=10, min_deadline_s=1).step()
    assert got and got[0] >= time.time() + 0.5


# -- the loop's side, in-process -------------------------------------------------
def test_loop_writes_one_jit_checkpoint_and_loses_no_step(tmp_path, faces):
    from orchestrator.spec import parse_spec
    from trainers.data.ingest import ingest
    from trainers.loop import DirectoryReporter, GanLoop

    ingest(faces, str(tmp_path / "ds"), faces / "labels.csv")
    spec = parse_spec({"name": "p", "data": {"url": str(tmp_path / "ds")},
                       "model": {"arch": "dcgan", "z_dim": 8, "channels": 4},
                       "train": {"steps": 40, "batch_size": 8}, "checkpoint": {"every_steps": 1000}}).to_dict()
    loop = GanLoop(spec)
    polls = {"n": 0}
    deadline = {"at": None}

    def query():
        polls["n"] += 1
        if polls["n"] == 3:
            deadline["at"] = time.time() + 1.5
        if deadline["at"] and time.time() < deadline["at"] + 1.0:
            return SimpleNamespace(deadline_ms=int(deadline["at"] * 1000))
        return None  # the "node" outlived the notice: the drain was cancelled

    loop.preemption = type(loop.preemption)(check_every_s=0.0, margin_s=0.2, query=query)
    rep = DirectoryReporter(tmp_path / "ck")
    loop.run(rep)
    jit = [m for m in rep.metrics if m.get("preempting")]
    assert len(jit) == 1 and jit[0]["preempt_deadline_ts"] == pytest.approx(deadline["at"], abs=1e-3)
    # the JIT checkpoint came before the deadline, and the step it holds is the last one computed then
    assert rep.checkpoints[0].name == f"checkpoint_{jit[0]['step']:09d}"
    assert polls["n"] > 4 and loop.step == 40  # held, then trained on once the notice was withdrawn


def test_timeline_closes_a_preemption_and_tells_failures_apart():
    from orchestrator.timeline import Timeline

    t = Timeline()
    assert t.observe({"step": 10}, 100.0) is None
    t.observe({"step": 14, "preempting": 1, "preempt_notice_ts": 90.0, "preempt_deadline_ts": 120.0}, 101.0)
    ev = t.observe({"step": 15, "resumed_from_step": 14, "restored_ts": 130.0, "first_step_ts": 131.0}, 132.0)
    assert ev["kind"] == "preemption" and ev["steps_lost"] == 0 and ev["checkpoint_committed_ts"] == 101.0
    t.observe({"step": 40}, 140.0)
    ev = t.observe({"step": 31, "resumed_from_step": 30}, 150.0)  # a crash: no notice came
    assert ev["kind"] == "failure" and ev["steps_lost"] == 10
    t.observe({"step": 35, "stopped": 1}, 160.0)
    assert t.observe({"step": 36, "resumed_from_step": 35}, 170.0)["kind"] == "resume"
    assert t.counts() == {"preemptions": 1, "failures": 1, "steps_lost_total": 10}
    rerun = Timeline(last_step=50)
    assert rerun.observe({"step": 46, "resumed_from_step": 45}, 1.0)["kind"] == "rerun"
