"""The notice agent and the workers' guard against hostile or odd notices (issue 17, "The notice agent").

Whoever answers as the metadata server (or a cloud that glitches) can send a stop time in the far
future, in the past, an ``action`` that is no action, or text that would forge log lines. The agent
clamps the deadline to what the provider can mean, drains again when a later notice moves the
deadline earlier, refuses a bad ``action``, and quotes what it logs; the workers' guard takes the
earlier deadline of a later drain. The agent runs against the fake metadata server on loopback, and
the last test runs the real ``ganray agent`` against a real local Ray cluster.
"""
from __future__ import annotations

import json
import logging
import queue
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from fake_metadata import serve
from orchestrator.agent.notices import AwsSpotWatcher, NoticeAgent
from trainers.preemption import PreemptionGuard

FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()
FORGED = "2026-01-01 00:00:00,000 ganray-agent INFO node drained for preemption"


@pytest.fixture
def metadata():
    server, state = serve()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()


def recording_agent(url: str, **kwargs) -> tuple[NoticeAgent, list[tuple[float, str]]]:
    drains: list[tuple[float, str]] = []
    agent = NoticeAgent(AwsSpotWatcher(url, timeout_s=0.5), lambda d, m: drains.append((d, m)), **kwargs)
    return agent, drains


def agent_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ganray.agent"]


# -- the deadline: clamped, and moved earlier by a later notice ---------------------------------
def test_a_far_future_notice_does_not_keep_the_agent_from_draining_on_the_real_one(metadata):
    url, state = metadata
    agent, drains = recording_agent(url, margin_s=10)
    state.terminate_at = FAR_FUTURE
    assert agent.step()
    # AWS gives 120 s: the stop time is clamped to now + 120 s + the slack, then the margin comes off
    assert len(drains) == 1 and 100 <= drains[0][0] - time.time() <= 121, drains
    assert agent.step() and agent.step() and len(drains) == 1  # the same notice again: no new drain
    state.terminate_at = time.time() + 120  # the real notice
    assert agent.step()
    assert len(drains) == 2 and 105 <= drains[1][0] - time.time() <= 111
    assert drains[1][0] < drains[0][0] - 1
    assert agent.step() and len(drains) == 2  # and that one drains once


def test_a_later_notice_never_moves_the_deadline_later(metadata):
    url, state = metadata
    agent, drains = recording_agent(url, margin_s=10)
    state.terminate_at = time.time() + 60
    assert agent.step() and len(drains) == 1
    state.terminate_at = time.time() + 110
    assert agent.step() and agent.step() and len(drains) == 1


def test_a_stop_time_in_the_past_drains_at_once_with_a_deadline_of_two_seconds(metadata):
    url, state = metadata
    agent, drains = recording_agent(url, margin_s=10)
    state.terminate_at = time.time() - 3600  # "the node goes now": the stop is due or overdue
    t0 = time.time()
    assert agent.step()
    assert len(drains) == 1 and t0 + 1.9 <= drains[0][0] <= time.time() + 2.1, (drains, t0)
    assert agent.step() and len(drains) == 1  # each poll's "now" is later: no drain again


# -- action: a closed set; every logged value quoted ---------------------------------------------
@pytest.mark.parametrize("action", ["terminate", "stop", "hibernate"])
def test_the_three_aws_actions_drain_with_a_quoted_source(metadata, action):
    url, state = metadata
    agent, drains = recording_agent(url)
    state.terminate_at, state.action = time.time() + 120, action
    assert agent.step() and len(drains) == 1
    assert drains[0][1] == f"ganray agent: preemption notice 'aws:{action}'"


@pytest.mark.parametrize("action", [f"terminate\n{FORGED}", "reboot", "", None])
def test_any_other_action_is_a_bad_answer_logged_once_and_drains_nothing(metadata, caplog, action):
    caplog.set_level(logging.INFO, logger="ganray.agent")
    url, state = metadata
    agent, drains = recording_agent(url)
    state.terminate_at = time.time() + 120
    if action is None:
        state.mode, state.body = "garbage", json.dumps({"time": "2030-01-01T00:00:00Z"})
    else:
        state.action = action
    assert not any(agent.step() for _ in range(5)) and not drains
    lines = agent_messages(caplog)
    assert len(lines) == 1 and "`action`" in lines[0] and "still polling" in lines[0], lines
    assert every_line_is_a_record(caplog.text)


def every_line_is_a_record(text: str) -> bool:
    """No value the agent logged broke a line: each line of the log is the start of a record."""
    return all(line.startswith(("DEBUG", "INFO", "WARNING", "ERROR")) for line in text.splitlines())


def test_a_status_line_with_a_carriage_return_forges_no_log_line(metadata, caplog):
    url, state = metadata
    state.mode, state.body = "raw", f"HTTP/1.1 2x0 OK\r{FORGED}\r\n\r\n"
    agent, drains = recording_agent(url)
    assert not agent.step() and not drains
    lines = agent_messages(caplog)
    assert len(lines) == 1 and "BadStatusLine" in lines[0], lines
    assert "\r" not in lines[0] and "\n" not in lines[0] and every_line_is_a_record(caplog.text)


def test_a_failed_drain_is_logged_quoted(metadata, caplog):
    url, state = metadata
    state.terminate_at = time.time() + 120

    def drain(deadline, msg):
        raise RuntimeError(f"Ray refused to drain:\n{FORGED}")

    agent = NoticeAgent(AwsSpotWatcher(url), drain)
    assert not agent.step()
    failed = [line for line in agent_messages(caplog) if "drain failed" in line]
    assert len(failed) == 1 and "\n" not in failed[0] and "\\n" in failed[0], failed


def test_ganray_agent_refuses_a_node_id_that_is_no_ray_node_id(tmp_path):
    from conftest import ganray

    out = ganray(tmp_path, "agent", "--provider", "aws", "--address", "127.0.0.1:1", "--node-id", f"ab12\n{FORGED}",
                 check=False, timeout=120)
    assert out.returncode == 2 and "is not a Ray node id" in out.stderr and "'ab12\\n2026" in out.stderr, out
    assert FORGED not in out.stderr.splitlines()


# -- the workers: the guard re-plans its just-in-time checkpoint ---------------------------------
class Drains:
    """What get_preemption_info answers: the latest drain's deadline (Ray keeps the latest), or None."""

    def __init__(self):
        self.deadline: float | None = None

    def __call__(self):
        return None if self.deadline is None else SimpleNamespace(deadline_ms=int(self.deadline * 1000))


def test_the_guard_takes_the_earlier_deadline_of_a_later_drain_before_its_jit_checkpoint():
    drains = Drains()
    guard = PreemptionGuard(margin_s=5.0, query=drains)
    guard.record_checkpoint_time(2.0)
    now = time.time()
    drains.deadline = now + 120
    guard.poll()
    assert not guard.jit_due(now, step_seconds=0.5)  # 120 s left: train on
    drains.deadline = now + 6
    guard.poll()
    assert guard.notice.deadline == pytest.approx(now + 6, abs=1e-3)
    assert guard.jit_due(now, step_seconds=0.5)  # 6 s left < step + checkpoint + margin: write it now
    drains.deadline = now + 300  # a later drain never moves it later
    guard.poll()
    assert guard.notice.deadline == pytest.approx(now + 6, abs=1e-3)


def test_an_earlier_deadline_after_the_jit_checkpoint_ends_the_hold_sooner():
    drains = Drains()
    guard = PreemptionGuard(hold_extra_s=30.0, query=drains)
    now = time.time()
    drains.deadline = now + 120
    guard.poll()
    guard.jit_step = 7  # the JIT checkpoint is written: the workers hold
    assert guard.keep_holding(now + 100)
    drains.deadline = now + 40
    guard.poll()
    assert guard.keep_holding(now + 69) and not guard.keep_holding(now + 71)  # 40 s + the 30 s grace


def test_loop_writes_its_jit_checkpoint_for_the_earlier_deadline(tmp_path, dataset):
    from reporters import DirectoryReporter
    from specs import TINY_DCGAN, job_spec
    from trainers.loop import GanLoop

    spec = job_spec("p", dataset, model=TINY_DCGAN, train={"steps": 40, "batch_size": 8},
                    checkpoint={"every_steps": 5}).to_dict()
    loop = GanLoop(spec)
    polls, drains, earlier = {"n": 0}, Drains(), {"at": None}

    def query():
        polls["n"] += 1
        if polls["n"] == 7:  # after the checkpoint of step 5: the guard knows how long one takes
            drains.deadline = time.time() + 3600  # the far-future notice, as the guard would see it
        if polls["n"] == 12:
            earlier["at"] = drains.deadline = time.time() + 0.5  # the real notice: 0.5 s left
        if earlier["at"] and time.time() > earlier["at"] + 1.0:
            drains.deadline = None  # the "node" outlived the notice: the drain was cancelled
        return drains()

    loop.preemption = PreemptionGuard(check_every_s=0.0, margin_s=0.5, query=query)
    rep = DirectoryReporter(tmp_path / "ck")
    loop.run(rep)
    jit = [m for m in rep.metrics if m.get("preempting")]
    assert len(jit) == 1 and jit[0]["preempt_deadline_ts"] == pytest.approx(earlier["at"], abs=1e-3)
    assert f"checkpoint_{jit[0]['step']:09d}" in [p.name for p in rep.checkpoints]
    assert loop.step == 40  # held, then trained on once the notice was withdrawn


# -- the real agent, a real Ray: what a second drain does ---------------------------------------
WATCH_DRAINS = """
import json, sys, time, ray
address, node = sys.argv[1], sys.argv[2]
ray.init(address=address, logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=0, resources={"gr_w": 1})
class Busy:  # an idle node drained for preemption shuts down at once; a busy one waits for its deadline
    def ping(self):
        return 1

busy = Busy.remote()
ray.get(busy.ping.remote())
print("ready", flush=True)
last = "none"
while True:
    # what Ray Train's PreemptionWatcher reads: {node id: deadline in ms}
    deadline = ray._private.state.state.get_draining_nodes().get(node)
    if deadline != last:
        print(json.dumps(deadline), flush=True)
        last = deadline
    time.sleep(0.2)
"""


def _lines(proc: subprocess.Popen) -> queue.Queue:
    out: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [out.put(line.rstrip("\n")) for line in proc.stdout], daemon=True).start()
    return out


def _next_line(lines: queue.Queue, timeout: float) -> str:
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"nothing within {timeout} s") from None


@pytest.mark.ray
def test_ganray_agent_drains_a_real_ray_node_again_when_the_real_notice_comes(tmp_path, metadata):
    from cluster import LocalCluster

    url, state = metadata
    cluster = LocalCluster(tmp_path / "cluster")
    procs: list[subprocess.Popen] = []
    log = ""
    try:
        cluster.start_head()
        node = cluster.add_node("w").node_id
        watcher = subprocess.Popen([sys.executable, "-c", WATCH_DRAINS, cluster.address, node], env=cluster.client_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(watcher)
        seen = _lines(watcher)
        assert _next_line(seen, 120) == "ready" and _next_line(seen, 30) == "null"  # not draining yet
        state.terminate_at = FAR_FUTURE
        agent = subprocess.Popen([str(Path(sys.executable).parent / "ganray"), "agent", "--provider", "aws",
                                  "--metadata-url", url, "--node-id", node, "--margin-s", "10", "--poll-s", "0.3",
                                  "--address", cluster.address],
                                 env=cluster.client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(agent)
        first = json.loads(_next_line(seen, 90)) / 1000
        assert 90 <= first - time.time() <= 121, first - time.time()  # clamped: AWS gives 120 s
        state.terminate_at = time.time() + 120
        second = json.loads(_next_line(seen, 30)) / 1000
        assert 100 <= second - time.time() <= 111 and second < first - 1  # Ray keeps the latest drain's deadline
        time.sleep(1.5)
        assert seen.empty()  # the real notice, polled again and again, drains once
    finally:
        for proc in procs[::-1]:
            proc.kill()
        if len(procs) > 1:
            log = procs[1].communicate(timeout=30)[0]
        cluster.stop()
    drained = [line for line in log.splitlines() if "preemption notice 'aws:terminate'" in line]
    assert len(drained) == 2, log
