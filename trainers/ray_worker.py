"""The Ray Train side of a worker: the entry point TorchTrainer runs, its reporter and stop signal."""
from __future__ import annotations

import logging
import time
from typing import Any

import torch

from trainers.checkpoints.layout import checkpoint_name, checkpoint_step
from trainers.checkpoints.resume import resume
from trainers.loop import GanLoop, NeverStop
from trainers.spec import JobSpec

log = logging.getLogger("ganray.worker")


class RayReporter:
    """ray.train.report with each rank's checkpoint folder (Ray Train merges them into one checkpoint).

    generation: after a resume fell back past newer checkpoints, the folder names carry it
    (``trainers.checkpoints.resume``); skipped: how many checkpoints that resume skipped, in the first report.
    """

    def __init__(self, generation: int = 0, skipped: int = 0):
        self.generation, self.skipped = generation, skipped

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None, name: str | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        if ckpt is not None and self.generation:
            name = checkpoint_name(checkpoint_step(name), self.generation)
        if self.skipped:
            metrics, self.skipped = {**metrics, "checkpoints_skipped": self.skipped}, 0
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name if ckpt else None)


class ActorStopSignal:
    """Polls the driver's control actor (non-blocking, at most twice a second)."""

    def __init__(self, name: str, namespace: str):
        self.name, self.namespace = name, namespace
        self._actor, self._pending, self._last, self._stop = None, None, 0.0, False

    def requested(self) -> bool:
        import ray

        if self._stop:
            return True
        try:
            if self._actor is None:
                self._actor = ray.get_actor(self.name, namespace=self.namespace)
            if self._pending is None and time.monotonic() - self._last > 0.5:
                self._pending = self._actor.stop_requested.remote()
            if self._pending is not None:
                ready, _ = ray.wait([self._pending], timeout=0)
                if ready:
                    self._stop = bool(ray.get(self._pending))
                    self._pending, self._last = None, time.monotonic()
        except Exception:  # noqa: BLE001 - no driver, no stop request: keep training
            self._actor, self._pending, self._last = None, None, time.monotonic() + 5
        return self._stop


def start_from(loop: GanLoop, checkpoint: str) -> None:
    """G, D and G_ema of loop from the source checkpoint (a URI the driver resolved and checked); the first
    report says how the tags were carried."""
    from trainers.checkpoints.copies import local_copy
    from trainers.checkpoints.storage import open_storage
    from trainers.warm_start import warm_start

    with local_copy(*open_storage(checkpoint)) as d:
        carry = warm_start(loop, d)
    loop.announce = carry.metrics()
    if loop.rank == 0:
        log.info("ganray: started from %s: tags copied %d, new %d, dropped %d", checkpoint, carry.copied,
                 carry.new, carry.dropped)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry: builds the loop, resumes from Ray's latest checkpoint, trains."""
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device(f"cuda:{ctx.get_local_rank()}") if torch.cuda.is_available() else torch.device("cpu")
    spec = JobSpec.model_validate(config["spec"])
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
    loop = GanLoop(spec, rank, world, device)
    loop.preemption.enabled = True
    control = config.get("control")
    stop = ActorStopSignal(control["name"], control["namespace"]) if control and rank == 0 else NeverStop()
    try:
        reporter = RayReporter()
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:  # the newest checkpoint that verifies, at or before Ray's latest; all ranks alike
            choice = resume(loop, ckpt.filesystem, ckpt.path)
            reporter = RayReporter(choice.generation, len(choice.skipped))
        elif config.get("init_from"):  # a fine-tune's first start: the source's weights (the driver chose them)
            start_from(loop, config["init_from"])
        loop.run(reporter, stop)
    finally:  # decode processes and staged shards (in /dev/shm) go now, not when the actor is reaped
        loop.stream.close()
