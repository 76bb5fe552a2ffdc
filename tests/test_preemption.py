"""The notice agent against a fake metadata server, and the loop's use of a notice (in-process)."""
from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest

from fake_metadata import serve
from orchestrator.agent.notices import AwsSpotWatcher, GcpPreemptionWatcher, NoticeAgent


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
    first = agent.watcher.poll()
    time.sleep(0.1)
    assert agent.watcher.poll() == first  # the notice runs from the first TRUE: polling on does not move it
    assert agent.step() and len(drains) == 1


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


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def agent_lines(caplog, level=logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ganray.agent" and r.levelno >= level]


def test_garbage_answers_are_logged_once_each_then_once_a_minute_and_polling_goes_on(metadata, caplog):
    caplog.set_level(logging.INFO, logger="ganray.agent")
    url, state = metadata
    clock, drains = FakeClock(), []
    agent = NoticeAgent(AwsSpotWatcher(url, timeout_s=0.5), lambda d, m: drains.append(d), clock=clock)
    state.mode = "garbage"
    for body in ["<html>oops</html>", '{"action": "terminate"}', '{"action": "terminate", "time": "soon"}']:
        state.body = body
        for _ in range(5):
            assert not agent.step()
            clock.t += 1
    got = agent_lines(caplog)
    assert len(got) == 3, got  # one line per distinct answer, not one per poll
    assert "200 with something that is not JSON: '<html>oops</html>'" in got[0] and "still polling" in got[0]
    assert "JSON without `time`" in got[1] and "unparseable `time`" in got[2] and '"soon"' in got[2]
    state.body = "<html>oops</html>"  # seen before: quiet within the minute since the last line
    for _ in range(30):
        assert not agent.step()
        clock.t += 1
    assert len(agent_lines(caplog)) == 3
    clock.t += 60
    assert not agent.step()
    assert len(agent_lines(caplog)) == 4 and "still failing: 35 polls since the last line" in agent_lines(caplog)[-1]
    for _ in range(5):
        assert not agent.step()
    assert len(agent_lines(caplog)) == 4
    state.mode, state.terminate_at = "ok", time.time() + 60  # it kept polling: the notice is seen at once
    assert agent.step() and len(drains) == 1
    assert "metadata server answers again" in agent_lines(caplog, logging.INFO)


def test_gcp_garbage_is_logged_once(metadata, caplog):
    url, state = metadata
    state.mode, state.body = "garbage", "MAYBE"
    agent = NoticeAgent(GcpPreemptionWatcher(url, timeout_s=0.5), lambda d, m: None, clock=FakeClock())
    assert not any(agent.step() for _ in range(5))
    got = agent_lines(caplog)
    assert len(got) == 1 and "neither TRUE nor FALSE: 'MAYBE'" in got[0]


@pytest.mark.parametrize("make", [lambda url: AwsSpotWatcher(url, timeout_s=0.5, deadline_s=1.0),
                                  lambda url: GcpPreemptionWatcher(url, timeout_s=0.5, deadline_s=1.0)])
def test_a_trickling_server_is_cut_off_by_the_deadline_of_a_poll(metadata, caplog, make):
    url, state = metadata
    state.mode, state.trickle_s = "trickle", 0.1  # a byte every 0.1 s: no read ever waits 0.5 s
    agent = NoticeAgent(make(url), lambda d, m: None, clock=FakeClock())
    for _ in range(2):
        t0 = time.monotonic()
        assert not agent.step()
        assert time.monotonic() - t0 < 1.8
    got = agent_lines(caplog)
    assert len(got) == 1 and "DeadlineExceeded" in got[0] and "within 1.0 s" in got[0]
    state.mode, state.terminate_at = "ok", time.time() + 60
    assert agent.step()


# -- the loop's side, in-process -------------------------------------------------
def test_loop_writes_one_jit_checkpoint_and_loses_no_step(tmp_path, dataset):
    from reporters import DirectoryReporter
    from specs import TINY_DCGAN, job_spec
    from trainers.loop import GanLoop

    spec = job_spec("p", dataset, model=TINY_DCGAN, train={"steps": 40, "batch_size": 8},
                    checkpoint={"every_steps": 1000}).to_dict()
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
    from orchestrator.controller.timeline import Timeline

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
