"""The training loop: phases, cadence and state, one instance per worker.

``train_worker`` is the Ray Train entry point (plain PyTorch plus
``ray.train.report``); ``GanLoop`` runs the same loop in-process for tests.
The loop knows phases (D step, G step, EMA, reports, checkpoints); the losses
and networks live in their own modules.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainers import loss as losses
from trainers.checkpoint import GRID_FILE, STATE_FILE, load_rank_state, load_state, rank_file, save_atomic
from trainers.data.stream import ShardStream, batches
from trainers.grid import from_uint8, make_grid, to_uint8
from trainers.networks import build_models
from trainers.preemption import PreemptionGuard

GRID_SEED, GRID_SAMPLES = 20251127, 16


class Reporter(Protocol):
    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None, name: str | None) -> None: ...


class StopSignal(Protocol):
    def requested(self) -> bool: ...


class NeverStop:
    def requested(self) -> bool:
        return False


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _finite_grads(module: torch.nn.Module) -> None:
    for p in module.parameters():
        if p.grad is not None:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=1e5, neginf=-1e5)


class GanLoop:
    """One worker's training state and loop for a JobSpec (as a dict)."""

    def __init__(self, spec: dict[str, Any], rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None, storage_options: dict | None = None):
        self.spec, self.rank, self.world_size = spec, rank, world_size
        t = spec["train"]
        if t["batch_size"] % world_size:
            raise ValueError(f"train.batch_size={t['batch_size']} does not divide by {world_size} workers")
        self.batch, self.local_batch = t["batch_size"], t["batch_size"] // world_size
        self.device = device or torch.device("cpu")
        self.stream = ShardStream(spec["data"]["url"], rank, world_size, seed=t["seed"],
                                  storage_options=storage_options)
        self.resolution = self.stream.manifest.resolution
        want = spec["data"].get("resolution")
        if want and want != self.resolution:
            raise ValueError(f"data.resolution={want} but {spec['data']['url']} holds {self.resolution}x"
                             f"{self.resolution} images")
        torch.manual_seed(t["seed"])  # same initial weights on every rank
        g, d = build_models(spec["model"], self.resolution)
        self.g, self.d = g.to(self.device), d.to(self.device)
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False) if t["ema"] else None
        betas = (t["beta1"], t["beta2"])
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=t["lr_g"], betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=t["lr_d"], betas=betas)
        fp16 = t["precision"] == "fp16"
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.noise = torch.Generator(self.device).manual_seed(t["seed"] * 7919 + rank)
        self.step, self.images_seen, self.train_seconds = 0, 0, 0.0
        self.ddp = world_size > 1 and dist.is_available() and dist.is_initialized()
        self.g_train = DistributedDataParallel(self.g) if self.ddp else self.g
        self.d_train = DistributedDataParallel(self.d) if self.ddp else self.d
        p = spec.get("preemption", {})
        # Off in-process; train_worker turns it on under Ray Train (or tests inject a query).
        self.preemption = PreemptionGuard(p.get("check_every_s", 1.0), p.get("margin_s", 5.0), enabled=False)
        self.resumed_from: int | None = None
        self.restored_at: float | None = None

    # -- state -----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The full state (rank 0's view; the stream state is global)."""
        return {
            "g": self.g.state_dict(), "d": self.d.state_dict(),
            "g_ema": self.g_ema.state_dict() if self.g_ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "step": self.step, "images_seen": self.images_seen, "train_seconds": self.train_seconds,
            "stream": self.stream.state_dict(), "spec": self.spec, "world_size": self.world_size,
            "generator_config": self.g.config, "dataset_hash": self.stream.manifest.dataset_hash,
            "tags": self.stream.manifest.vocabulary,
        }

    def rank_state(self) -> dict[str, Any]:
        return {"noise": self.noise.get_state(), "torch": torch.get_rng_state()}

    def write_checkpoint(self, directory: str | Path) -> None:
        directory = Path(directory)
        save_atomic(self.rank_state(), directory / rank_file(self.rank))
        if self.rank == 0:
            save_atomic(self.state(), directory / STATE_FILE)
            self.sample_grid().save(directory / GRID_FILE)

    def restore(self, directory: str | Path) -> None:
        """Continues from a checkpoint directory, on this loop's world size."""
        s = load_state(directory)
        self.g.load_state_dict(s["g"])
        self.d.load_state_dict(s["d"])
        if self.g_ema is not None and s.get("g_ema") is not None:
            self.g_ema.load_state_dict(s["g_ema"])
        self.opt_g.load_state_dict(s["opt_g"])
        self.opt_d.load_state_dict(s["opt_d"])
        self.scaler_g.load_state_dict(s["scaler_g"])
        self.scaler_d.load_state_dict(s["scaler_d"])
        self.step, self.images_seen, self.train_seconds = s["step"], s["images_seen"], s["train_seconds"]
        self.stream.load_state_dict(s["stream"])
        self.resumed_from, self.restored_at = self.step, time.time()
        r = load_rank_state(directory, self.rank) if s["world_size"] == self.world_size else None
        if r is not None:
            self.noise.set_state(r["noise"])
            torch.set_rng_state(r["torch"])
        else:  # a new world size: fresh, still deterministic, per-rank noise
            self.noise.manual_seed(self.spec["train"]["seed"] * 7919 + self.rank + 104729 * self.step)

    # -- phases ----------------------------------------------------------
    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.g.z_dim, generator=self.noise, device=self.device)

    def train_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """One D step and one G step on a batch of real images; returns detached stats."""
        t, n = self.spec["train"], real.shape[0]
        # D phase: real and fake in one forward, so DDP sees one forward per backward.
        with torch.no_grad(), _autocast(self.device, t["precision"]):
            fake = self.g_train(self._z(n))
        x = torch.cat([real, fake.to(real.dtype)]).requires_grad_(t["r1_gamma"] > 0)
        with _autocast(self.device, t["precision"]):
            logits = self.d_train(x).float()
            loss_d = losses.d_loss(t["loss"], logits[:n], logits[n:])
        if t["r1_gamma"] > 0:
            (grad,) = torch.autograd.grad(logits[:n].sum(), x, create_graph=True)
            loss_d = loss_d + t["r1_gamma"] * 0.5 * grad[:n].square().flatten(1).sum(1).mean()
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.unscale_(self.opt_d)
        _finite_grads(self.d)
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        # G phase.
        with _autocast(self.device, t["precision"]):
            fake_logits = self.d_train(self.g_train(self._z(n))).float()
            loss_g = losses.g_loss(t["loss"], fake_logits)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss_g).backward()
        self.scaler_g.unscale_(self.opt_g)
        _finite_grads(self.g)
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self._update_ema()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                "d_real": logits[:n].detach().mean(), "d_fake": logits[n:].detach().mean()}

    def _update_ema(self) -> None:
        if self.g_ema is None:
            return
        t = self.spec["train"]
        ema_nimg = (t["ema_kimg"] or self.batch * 10 / 32) * 1000
        ema_nimg = min(ema_nimg, (self.images_seen + self.batch) * 0.05)  # ramp-up, as StyleGAN2-ADA
        beta = 0.5 ** (self.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for pe, p in zip(self.g_ema.parameters(), self.g.parameters()):
                pe.copy_(p.detach().lerp(pe, beta))
            for be, b in zip(self.g_ema.buffers(), self.g.buffers()):
                be.copy_(b)

    @torch.no_grad()
    def sample_grid(self):
        g = self.g_ema if self.g_ema is not None else self.g
        was = g.training
        g.eval()
        z = torch.randn(GRID_SAMPLES, g.z_dim, generator=torch.Generator().manual_seed(GRID_SEED)).to(self.device)
        img = make_grid(to_uint8(g(z)))
        g.train(was)
        return img

    # -- the loop --------------------------------------------------------
    def _flags(self, stop: StopSignal, last_report: float, step_seconds: float) -> tuple[bool, bool, bool]:
        """(stop, report now, just-in-time checkpoint now), decided by rank 0 and shared, so that
        every rank reports, checkpoints and calls the preemption collective alike."""
        guard = self.preemption
        if self.rank == 0:
            now = time.time()
            flags = torch.tensor([float(stop.requested()),
                                  float(time.monotonic() - last_report >= self.spec["train"]["report_every_s"]),
                                  float(guard.check_due(now)), float(guard.jit_due(now, step_seconds))])
        else:
            flags = torch.zeros(4)
        if self.ddp:
            dist.broadcast(flags, 0)
        if flags[2]:
            guard.poll()
        return bool(flags[0]), bool(flags[1]), bool(flags[3])

    def _hold(self) -> None:
        """After the just-in-time checkpoint: no optimiser step until the node goes. If the notice
        is withdrawn (or the node outlives its deadline by far), training simply goes on."""
        guard = self.preemption
        while True:
            time.sleep(0.5)
            guard.poll()  # a collective: once per round on every rank
            flag = torch.tensor([float(guard.keep_holding(time.time()))]) if self.rank == 0 else torch.zeros(1)
            if self.ddp:
                dist.broadcast(flag, 0)
            if not flag[0]:
                guard.jit_step, guard.notice = None, None
                return

    def run(self, reporter: Reporter, stop: StopSignal | None = None) -> dict[str, Any]:
        """Trains until train.steps (or a stop request); returns the last metrics."""
        stop = stop or NeverStop()
        t, every = self.spec["train"], self.spec["checkpoint"]["every_steps"]
        stream = batches(self.stream, self.local_batch)
        window = {"steps": 0, "seconds": 0.0, "data": 0.0, "sums": None}
        last_report, metrics = time.monotonic(), {}
        sample_log = _open_sample_log(self.rank)
        first_step_at = None
        while self.step < t["steps"]:
            t0 = time.perf_counter()
            images, samples = next(stream)
            if sample_log:
                sample_log.write(json.dumps({"step": self.step + 1, "rank": self.rank,
                                             "keys": [x["key"] for x in samples]}) + "\n")
            real = from_uint8(images).to(self.device, non_blocking=True)
            t_data = time.perf_counter() - t0
            stats = self.train_step(real)
            self.step += 1
            self.images_seen += self.batch
            dt = time.perf_counter() - t0
            self.train_seconds += dt
            window["steps"] += 1
            window["seconds"] += dt
            window["data"] += t_data
            window["sums"] = stats if window["sums"] is None else {k: window["sums"][k] + v for k, v in stats.items()}
            if first_step_at is None:
                first_step_at = time.time()
            stopping, report_due, jit_due = self._flags(stop, last_report, dt)
            resumed_report = self.resumed_from is not None  # the same on every rank: all restored
            ckpt_due = self.step % every == 0 or self.step >= t["steps"] or stopping or jit_due
            if not (ckpt_due or report_due or resumed_report):
                continue
            metrics = self._metrics(window, stopping)
            metrics.update(self.preemption.metrics(), preempting=int(jit_due))
            if resumed_report:  # the first report after a restart carries its timeline
                metrics.update(resumed_from_step=self.resumed_from, restored_ts=self.restored_at,
                               first_step_ts=first_step_at)
                self.resumed_from = None
            window = {"steps": 0, "seconds": 0.0, "data": 0.0, "sums": None}
            if ckpt_due:
                t_ckpt = time.perf_counter()
                tmp = tempfile.mkdtemp(prefix="ganray-ckpt-")
                try:
                    self.write_checkpoint(tmp)
                    reporter.report(metrics, tmp, f"checkpoint_{self.step:09d}")
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                self.train_seconds += time.perf_counter() - t_ckpt
                self.preemption.record_checkpoint_time(time.perf_counter() - t_ckpt)
            else:
                reporter.report(metrics, None, None)
            last_report = time.monotonic()
            if stopping:
                break
            if jit_due:
                self.preemption.jit_step = self.step
                self._hold()
        return metrics

    def _metrics(self, window: dict[str, Any], stopping: bool) -> dict[str, Any]:
        n = max(window["steps"], 1)
        sums = {k: float(v) / n for k, v in (window["sums"] or {}).items()}
        secs = max(window["seconds"], 1e-9)
        ips = window["steps"] * self.batch / secs
        return {
            "step": self.step, "total_steps": self.spec["train"]["steps"], "kimg": self.images_seen / 1000,
            "epoch": self.stream.epoch, "images_seen": self.images_seen, "train_seconds": self.train_seconds,
            "img_per_sec": ips, "sec_per_kimg": 1000 / ips if ips else 0.0,
            "data_wait_frac": window["data"] / secs, "world_size": self.world_size,
            "stopped": int(stopping), **sums,
        }


def _open_sample_log(rank: int):
    """Test hook: with GANRAY_SAMPLE_LOG=DIR, each rank logs the sample keys of every step it computes."""
    root = os.environ.get("GANRAY_SAMPLE_LOG")
    if not root:
        return None
    os.makedirs(root, exist_ok=True)
    return open(os.path.join(root, f"rank{rank}-{os.getpid()}.jsonl"), "a", buffering=1)


class DirectoryReporter:
    """In-process reporter: keeps metrics and copies checkpoints into root/NAME."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.metrics: list[dict[str, Any]] = []
        self.checkpoints: list[Path] = []

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None, name: str | None) -> None:
        self.metrics.append(dict(metrics))
        if checkpoint_dir:
            dest = self.root / (name or f"checkpoint_{len(self.checkpoints):09d}")
            shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)
            self.checkpoints.append(dest)


# -- Ray Train ------------------------------------------------------------
class RayReporter:
    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None, name: str | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
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


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry: builds the loop, resumes from Ray's latest checkpoint, trains."""
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device(f"cuda:{ctx.get_local_rank()}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config["spec"]["scaling"]["cpus_per_worker"])))
    loop = GanLoop(config["spec"], rank, world, device)
    loop.preemption.enabled = True
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            loop.restore(d)
    control = config.get("control")
    stop = ActorStopSignal(control["name"], control["namespace"]) if control and rank == 0 else NeverStop()
    loop.run(RayReporter(), stop)
