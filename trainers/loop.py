"""The training loop: phases, cadence and state, one instance per worker.

``GanLoop`` is one worker's loop; ``trainers/ray_worker.py`` runs it under Ray Train
(restore, loop, ``ray.train.report``) and tests and benchmarks run it in-process.
It reads a validated JobSpec (``trainers/spec.py``), never a default of its own.
The loop knows phases (D step, G step, their lazy regularisers, EMA, augment
probability, reports, checkpoints, evaluation); the math lives in ``loss.py``
and the networks in ``networks/``, as in StyleGAN2-ADA.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from trainers import tempdirs
from trainers.augment import AugmentPipe
from trainers.checkpoints.format import (GRID_FILE, STATE_FILE, CheckpointError, load_rank_state, load_state,
                                        plain, rank_file, save_atomic, verify, write_index)
from trainers.checkpoints.layout import checkpoint_name
from trainers.conditioning import TagConditioning, build_conditioning
from trainers.data.stream.shard_stream import ShardStream, batches
from trainers.distributed import average_gradients, broadcast_module, distributed_ready
from trainers.freezing import Frozen
from trainers.grid import from_uint8, make_grid, to_uint8
from trainers.loss import GanLoss
from trainers.networks import build_models, generate_images
from trainers.preemption import PreemptionGuard
from trainers.sample_log import open_sample_log
from trainers.spec import JobSpec

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


def accumulation_rounds(local_batch: int, max_batch: int | None) -> int:
    """How many equal micro-batches a worker splits its batch into so that none exceeds max_batch."""
    if not max_batch or local_batch <= max_batch:
        return 1
    rounds = math.ceil(local_batch / max_batch)
    while local_batch % rounds:
        rounds += 1
    return rounds


def lazy_adam(params, lr: float, betas: tuple[float, float], interval: int | None) -> torch.optim.Adam:
    """Adam; with a lazy regulariser every `interval` steps, lr and betas rescaled by I/(I+1) (StyleGAN2)."""
    ratio = interval / (interval + 1) if interval else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(betas[0] ** ratio, betas[1] ** ratio))


@dataclass
class Phase:
    """One optimiser step of G or D: its loss terms (name), its module, optimiser, scaler and interval."""

    name: str
    module: torch.nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    interval: int = 1


class GanLoop:
    """One worker's training state and loop for a JobSpec."""

    def __init__(self, spec: JobSpec | dict[str, Any], rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None):
        """spec: a JobSpec, or its dict (``JobSpec.to_dict()``, or any partial spec), validated here,
        so that every value the loop reads is the spec's or the model's one default."""
        self.spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
        self.rank, self.world_size = rank, world_size
        t, m = self.spec.train, self.spec.model
        if t.batch_size % world_size:
            raise ValueError(f"train.batch_size={t.batch_size} does not divide by {world_size} workers")
        self.batch, self.local_batch = t.batch_size, t.batch_size // world_size
        self.rounds = accumulation_rounds(self.local_batch, t.max_batch_per_worker)
        self.device = device or torch.device("cpu")
        self.stream = ShardStream(self.spec.data.url, rank, world_size, seed=t.seed)
        self.resolution = self.stream.manifest.resolution
        want = self.spec.data.resolution
        if want and want != self.resolution:
            raise ValueError(f"data.resolution={want} but {self.spec.data.url} holds {self.resolution}x"
                             f"{self.resolution} images")
        self.cond = build_conditioning(m, self.spec.data.url, self.stream.manifest, rank, world_size, self.device)
        torch.manual_seed(t.seed)  # same initial weights on every rank
        g, d = build_models(m, self.resolution, self.cond.dim if self.cond else 0)
        self.g, self.d = g.to(self.device), d.to(self.device)
        self.ddp = distributed_ready(world_size)
        if self.ddp:  # the same seed gives the same weights; this makes sure of it
            broadcast_module(self.g)
            broadcast_module(self.d)
        self.frozen = Frozen(self.g, self.d, t, self.resolution)  # train.freeze_d, freeze_g_mapping
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False) if t.ema else None
        torch.manual_seed(t.seed * 7919 + rank + 1)  # per-rank noise inputs from here on
        self.noise = torch.Generator(self.device).manual_seed(t.seed * 7919 + rank)
        self.augment = AugmentPipe(t.augment_policy, t.augment_p, t.ada_target, t.ada_interval, t.ada_kimg,
                                   self.batch, self.ddp) if t.augment == "diffaug" else None
        self.loss = GanLoss(self.g, self.d, t, self.noise, self.augment,
                            autocast=lambda: _autocast(self.device, t.precision), distributed=self.ddp)
        self.phases = self._build_phases()
        self.opt_g = next(p.opt for p in self.phases if p.module is self.g)
        self.opt_d = next(p.opt for p in self.phases if p.module is self.d)
        self.scaler_g = next(p.scaler for p in self.phases if p.module is self.g)
        self.scaler_d = next(p.scaler for p in self.phases if p.module is self.d)
        self.step, self.images_seen, self.train_seconds = 0, 0, 0.0
        p = self.spec.preemption
        # Off in-process; train_worker turns it on under Ray Train (or tests inject a query).
        self.preemption = PreemptionGuard(p.check_every_s, p.margin_s, enabled=False)
        self.resumed_from: int | None = None
        self.restored_at: float | None = None
        self.announce: dict[str, Any] = {}  # what the first report says beside its metrics (a warm start's tags)
        self.evaluations: list[dict[str, Any]] = []
        self._grid_c: torch.Tensor | None = None
        self.evaluator = None
        self._counts_reported = False
        if rank == 0 and self.spec.eval.metrics:
            from trainers.evaluation import Evaluator

            self.evaluator = Evaluator(self.spec, self.stream.manifest, self.cond, self.device)

    @property
    def tags(self) -> TagConditioning | None:
        """The tag conditioning (its vocabulary is the dataset's), or None for text and unconditional models."""
        return self.cond if isinstance(self.cond, TagConditioning) else None

    def _build_phases(self) -> list[Phase]:
        """D's phases, then G's: 'main' every step; a lazy regulariser as its own phase every interval steps."""
        t = self.spec.train
        betas = (t.beta1, t.beta2)
        fp16 = t.precision == "fp16"
        d_reg = t.r1_interval if t.r1_gamma > 0 else None
        g_reg = t.pl_interval if t.pl_weight > 0 and self.loss.style_gan else None
        phases = []
        for name, module, lr, reg in (("D", self.d, t.lr_d, d_reg), ("G", self.g, t.lr_g, g_reg)):
            lazy = reg if reg and reg > 1 else None
            opt = lazy_adam(self.frozen.trainable(module), lr, betas, lazy)
            scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
            if reg is None:
                phases.append(Phase(f"{name}main", module, opt, scaler))
            elif reg == 1:
                phases.append(Phase(f"{name}both", module, opt, scaler))
            else:
                phases += [Phase(f"{name}main", module, opt, scaler), Phase(f"{name}reg", module, opt, scaler, reg)]
        return phases

    # -- state -----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The full state (rank 0's view; the stream state is global): tensors and plain values only,
        so that it loads with ``torch.load(weights_only=True)``."""
        return plain({
            "g": self.g.state_dict(), "d": self.d.state_dict(),
            "g_ema": self.g_ema.state_dict() if self.g_ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "augment": self.augment.state_dict() if self.augment is not None else None,
            "loss": self.loss.state_dict(),
            "step": self.step, "images_seen": self.images_seen, "kimg": self.images_seen / 1000,
            "train_seconds": self.train_seconds,
            "stream": self.stream.state_dict(), "spec": self.spec.model_dump(mode="json"),
            "world_size": self.world_size,
            "generator_config": self.g.config, "dataset_hash": self.stream.manifest.dataset_hash,
            "tags": self.stream.manifest.vocabulary, "tag_sets": self.stream.manifest.tag_sets,
            "conditioning": self.spec.model.conditioning,
            "evaluations": self.evaluations,
        })

    def rank_state(self) -> dict[str, Any]:
        """This rank's RNG states (uint8 tensors): the loop's noise generator, torch's CPU (and CUDA) generators."""
        state = {"noise": self.noise.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def write_checkpoint(self, directory: str | Path) -> None:
        """This rank's part of a checkpoint: its RNG state (rank 0: the state and the grid too), then, last,
        its index of them (``trainers.checkpoints.format.verify`` checks a checkpoint against its indexes)."""
        directory = Path(directory)
        save_atomic(self.rank_state(), directory / rank_file(self.rank))
        if self.rank == 0:
            save_atomic(self.state(), directory / STATE_FILE)
            self.sample_grid().save(directory / GRID_FILE)
        write_index(directory, self.rank, self.world_size, self.step,
                    self.spec.to_dict() if self.rank == 0 else None)

    def restore(self, directory: str | Path, verified: bool = False) -> None:
        """Continues from a checkpoint directory, on this loop's world size. The checkpoint is verified
        first (``verified``: the caller did) and loaded safely; CheckpointError when it cannot be trusted."""
        if not verified:
            verify(directory)
        s = load_state(directory)
        self.g.load_state_dict(s["g"])
        self.d.load_state_dict(s["d"])
        if self.g_ema is not None and s.get("g_ema") is not None:
            self.g_ema.load_state_dict(s["g_ema"])
        self.opt_g.load_state_dict(s["opt_g"])
        self.opt_d.load_state_dict(s["opt_d"])
        self.scaler_g.load_state_dict(s["scaler_g"])
        self.scaler_d.load_state_dict(s["scaler_d"])
        if self.augment is not None and s.get("augment") is not None:
            self.augment.load_state_dict(s["augment"])
        if s.get("loss") is not None:
            self.loss.load_state_dict(s["loss"])
        self.step, self.images_seen, self.train_seconds = s["step"], s["images_seen"], s["train_seconds"]
        self.evaluations = list(s.get("evaluations") or [])
        self.stream.load_state_dict(s["stream"])
        self.resumed_from, self.restored_at = self.step, time.time()
        r = load_rank_state(directory, self.rank) if s["world_size"] == self.world_size else None
        if r is None and s["world_size"] == self.world_size:
            raise CheckpointError(f"checkpoint {directory} has no {rank_file(self.rank)} "
                                  f"(written by {self.world_size} ranks)")
        if r is not None:
            self.noise.set_state(r["noise"])
            torch.set_rng_state(r["torch"])
            if "cuda" in r and self.device.type == "cuda":
                torch.cuda.set_rng_state(r["cuda"], self.device)
        else:  # a new world size: fresh, still deterministic, per-rank noise
            seed = self.spec.train.seed * 7919 + self.rank + 104729 * self.step
            self.noise.manual_seed(seed)
            torch.manual_seed(seed + 1)

    # -- phases ----------------------------------------------------------
    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.g.z_dim, generator=self.noise, device=self.device)

    def train_step(self, real: torch.Tensor, samples: list[dict[str, Any]] | None = None
                   ) -> dict[str, torch.Tensor]:
        """One step of every phase due at this step, on a batch of real images; returns detached stats.

        Conditional models take the batch's conditions from its samples (``cond.batch``: tags, or one
        caption line each, drawn from the noise generator). Each phase draws its own latents (and, for
        conditional models, a shuffle of the batch's conditions), runs its micro-batches, averages
        gradients over workers, makes them finite and steps its optimiser. Then the G EMA and the augment
        probability move on.
        """
        n = real.shape[0]
        real_c = self.cond.batch(samples, self.noise).to(self.device) if self.cond is not None else None
        micro = n // self.rounds
        sums: dict[str, torch.Tensor] = {}
        for phase in self.phases:
            if self.step % phase.interval:
                continue
            z = self._z(n)
            gen_c = None
            if real_c is not None:
                gen_c = real_c[torch.randperm(n, generator=self.noise, device=self.device)]
            for module in (self.g, self.d):
                self.frozen.require_grad(module, module is phase.module)
            phase.opt.zero_grad(set_to_none=True)

            def backward(loss: torch.Tensor, scaler=phase.scaler) -> None:
                scaler.scale(loss).backward()

            for r in range(self.rounds):
                part = slice(r * micro, (r + 1) * micro)
                stats = self.loss.accumulate_gradients(
                    phase.name, real[part], real_c[part] if real_c is not None else None, z[part],
                    gen_c[part] if gen_c is not None else None, gain=phase.interval / self.rounds, backward=backward)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0) + v / self.rounds
            if self.ddp:
                average_gradients(phase.module, self.world_size)
            phase.scaler.unscale_(phase.opt)
            _finite_grads(phase.module)
            phase.scaler.step(phase.opt)
            phase.scaler.update()
        for module in (self.g, self.d):
            self.frozen.require_grad(module, True)
        self._update_ema()
        if self.augment is not None:
            self.augment.update(self.step + 1)
        return sums

    def _update_ema(self) -> None:
        if self.g_ema is None:
            return
        t = self.spec.train
        ema_nimg = (t.ema_kimg or self.batch * 10 / 32) * 1000
        rampup = t.ema_rampup
        if rampup is not None:  # ramp-up, as StyleGAN2-ADA
            ema_nimg = min(ema_nimg, (self.images_seen + self.batch) * rampup)
        beta = 0.5 ** (self.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for pe, p in zip(self.g_ema.parameters(), self.g.parameters()):
                pe.copy_(p.detach().lerp(pe, beta))
            for be, b in zip(self.g_ema.buffers(), self.g.buffers()):
                be.copy_(b)

    def grid_conditions(self) -> torch.Tensor | None:
        """The grid's conditions: those of the dataset's first samples (in stored order)."""
        if self.cond is None:
            return None
        if self._grid_c is None:
            self._grid_c = self.cond.first(GRID_SAMPLES)
        return self._grid_c

    @torch.no_grad()
    def sample_grid(self):
        """Fixed-seed samples of G_ema (G without EMA) as one image; it draws on no training RNG."""
        g = self.g_ema if self.g_ema is not None else self.g
        z = torch.randn(GRID_SAMPLES, g.z_dim, generator=torch.Generator().manual_seed(GRID_SEED))
        c = self.grid_conditions()
        return make_grid(to_uint8(generate_images(g, z.to(self.device), c.to(self.device) if c is not None else None)))

    # -- the loop --------------------------------------------------------
    def _from_rank0(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's value of a small CPU tensor on every rank (NCCL broadcasts CUDA tensors only)."""
        if not self.ddp:
            return t
        t = t.to(self.device)
        dist.broadcast(t, 0)
        return t.cpu()

    def _flags(self, stop: StopSignal, last_report: float, step_seconds: float) -> tuple[bool, bool, bool]:
        """(stop, report now, just-in-time checkpoint now), decided by rank 0 and shared, so that
        every rank reports, checkpoints and calls the preemption collective alike."""
        guard = self.preemption
        if self.rank == 0:
            now = time.time()
            flags = torch.tensor([float(stop.requested()),
                                  float(time.monotonic() - last_report >= self.spec.train.report_every_s),
                                  float(guard.check_due(now)), float(guard.jit_due(now, step_seconds))])
        else:
            flags = torch.zeros(4)
        flags = self._from_rank0(flags)
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
            flag = self._from_rank0(flag)
            if not flag[0]:
                guard.jit_step, guard.notice = None, None
                return

    def _eval_due(self) -> bool:
        every = self.spec.eval.every_steps
        if not self.spec.eval.metrics:
            return False
        return self.step >= self.spec.train.steps or bool(every and self.step % every == 0)

    def evaluate(self) -> dict[str, Any]:
        """Rank 0: the configured metrics of G_ema now (kept in the checkpoint); other ranks: {}."""
        if self.evaluator is None:
            return {}
        g = self.g_ema if self.g_ema is not None else self.g
        result = self.evaluator.evaluate(g, self.step)
        self.evaluations.append({"step": self.step, "kimg": self.images_seen / 1000, **result})
        return result

    def run(self, reporter: Reporter, stop: StopSignal | None = None) -> dict[str, Any]:
        """Trains until train.steps (or a stop request); returns the last metrics."""
        stop = stop or NeverStop()
        t, every = self.spec.train, self.spec.checkpoint.every_steps
        stream = batches(self.stream, self.local_batch)
        window = _Window()
        last_report, metrics = time.monotonic(), {}
        sample_log = open_sample_log(self.spec.name, self.rank)
        first_step_at = None
        while self.step < t.steps:
            t0 = time.perf_counter()
            images, samples = next(stream)
            if sample_log:
                sample_log.write(json.dumps({"step": self.step + 1, "rank": self.rank, "t": round(time.time(), 3),
                                             "keys": [x["key"] for x in samples]}) + "\n")
            real = from_uint8(images).to(self.device, non_blocking=True)
            t_data = time.perf_counter() - t0
            stats = self.train_step(real, samples if self.cond is not None else None)
            self.step += 1
            self.images_seen += self.batch
            dt = time.perf_counter() - t0
            self.train_seconds += dt
            window.add(dt, t_data, stats)
            if first_step_at is None:
                first_step_at = time.time()
            stopping, report_due, jit_due = self._flags(stop, last_report, dt)
            # the same on every rank: all restored (or warm-started) alike
            first_report = self.resumed_from is not None or bool(self.announce)
            ckpt_due = self.step % every == 0 or self.step >= t.steps or stopping or jit_due
            eval_due = self._eval_due() and not jit_due  # inside a notice window there is no time to evaluate
            if not (ckpt_due or report_due or first_report or eval_due):
                continue
            metrics = self._metrics(window, stopping)
            metrics.update(self.preemption.metrics(), preempting=int(jit_due))
            metrics.update(self._first_report(first_step_at))
            window = _Window()
            if eval_due:
                metrics.update(self.evaluate())
            if ckpt_due:
                t_ckpt = time.perf_counter()
                tmp = tempdirs.make("ganray-ckpt-")  # named after this PID; stale ones swept
                try:
                    self.write_checkpoint(tmp)
                    reporter.report(metrics, tmp, checkpoint_name(self.step))
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

    def _first_report(self, first_step_at: float | None) -> dict[str, Any]:
        """What only the first report carries (once): a restart's timeline, a warm start's tag counts."""
        extra = dict(self.announce)
        if self.resumed_from is not None:
            extra.update(resumed_from_step=self.resumed_from, restored_ts=self.restored_at,
                         first_step_ts=first_step_at)
        self.resumed_from, self.announce = None, {}
        return extra

    def _metrics(self, window: "_Window", stopping: bool) -> dict[str, Any]:
        secs = max(window.seconds, 1e-9)
        ips = window.steps * self.batch / secs
        extra = {}
        if self.augment is not None:
            extra["augment_p"] = self.augment.p
            if self.augment.last_rt is not None:
                extra["ada_rt"] = self.augment.last_rt
        if not self._counts_reported:  # once per start: what trains (trainable_params_g/_d, frozen_blocks_d)
            extra.update(self.frozen.counts)
            self._counts_reported = True
        return {
            "step": self.step, "total_steps": self.spec.train.steps, "kimg": self.images_seen / 1000,
            "epoch": self.stream.epoch, "images_seen": self.images_seen, "train_seconds": self.train_seconds,
            "img_per_sec": ips, "sec_per_kimg": 1000 / ips if ips else 0.0,
            "data_wait_frac": window.data / secs, "world_size": self.world_size,
            "samples_skipped": self.stream.skipped.count,  # this rank's corrupt samples so far (named in its log)
            "stopped": int(stopping), **extra, **window.means(),
        }


class _Window:
    """Step times and loss stats since the last report (stats may differ step to step: lazy phases)."""

    def __init__(self):
        self.steps, self.seconds, self.data = 0, 0.0, 0.0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, seconds: float, data: float, stats: dict[str, torch.Tensor]) -> None:
        self.steps, self.seconds, self.data = self.steps + 1, self.seconds + seconds, self.data + data
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: v / self.counts[k] for k, v in self.sums.items()}

