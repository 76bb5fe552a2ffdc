"""GAN losses: the math of each training phase (no optimisers, no schedules).

The functions are the textbook terms; :class:`GanLoss` puts them together per phase, after
StyleGAN2-ADA's ``StyleGAN2Loss.accumulate_gradients``: the loop names a phase (``Gmain``,
``Greg``, ``Gboth``, ``Dmain``, ``Dreg``, ``Dboth``), hands over one micro-batch and a gain,
and the loss runs the forward passes and calls backward. The loop owns optimisers, gradient
averaging across workers, and when each phase runs.

Text conditioning (StackGAN) adds two terms: G's conditioning augmentation samples
c = mu + sigma * eps (eps from the loss's generator) with the KL term ``train.kl_weight``, and
D is matching-aware: a real image with a mismatched text (the batch's texts rolled by one)
counts as fake, weighted by ``train.mismatch_weight`` (GAN-CLS, Reed et al. 2016). D's
auxiliary head, where it has one, reads the tags (multi-label BCE) or the text embedding
(1 - cosine) back from the image.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainers.spec import TrainSpec

Backward = Callable[[torch.Tensor], None]


def d_loss_real(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """D's loss on real images, per sample: 'ns' softplus(-l) or 'hinge' relu(1 - l)."""
    if kind == "ns":
        return F.softplus(-logits)
    if kind == "hinge":
        return F.relu(1 - logits)
    raise ValueError(f"unknown loss {kind!r}")


def d_loss_fake(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """D's loss on generated images, per sample: 'ns' softplus(l) or 'hinge' relu(1 + l)."""
    if kind == "ns":
        return F.softplus(logits)
    if kind == "hinge":
        return F.relu(1 + logits)
    raise ValueError(f"unknown loss {kind!r}")


def g_loss_fake(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """G's loss on its images, per sample: 'ns' softplus(-l) or 'hinge' -l."""
    if kind == "ns":
        return F.softplus(-logits)
    if kind == "hinge":
        return -logits
    raise ValueError(f"unknown loss {kind!r}")


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1: the squared gradient norm of D at real images, per sample (multiply by gamma / 2)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.float().square().flatten(1).sum(1)


def dragan_points(real: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """DRAGAN's perturbed points: x + a * (x + 0.5 std(x) u - x), u and a uniform in [0, 1]."""
    n = real.shape[0]
    u = torch.rand(real.shape, generator=gen, device=gen.device).to(real)
    a = torch.rand(n, 1, 1, 1, generator=gen, device=gen.device).to(real)
    return (real + a * 0.5 * real.std() * u).detach()


def dragan_penalty(logits: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """DRAGAN (Kodali et al. 2017): (||grad D(x_hat)|| - 1)^2 per sample (multiply by lambda)."""
    (grad,) = torch.autograd.grad(logits.sum(), points, create_graph=True)
    return (grad.float().flatten(1).norm(dim=1) - 1).square()


def aux_tag_loss(aux_logits: torch.Tensor | None, c: torch.Tensor | None) -> torch.Tensor | None:
    """Multi-label BCE of an auxiliary head against the multi-hot tags, per sample (ACGAN / MakeGirlsMoe)."""
    if aux_logits is None or c is None:
        return None
    return F.binary_cross_entropy_with_logits(aux_logits.float(), c.float(), reduction="none").mean(1)


def aux_text_loss(aux: torch.Tensor | None, c: torch.Tensor | None) -> torch.Tensor | None:
    """1 - cosine between an auxiliary head's output and the text embedding, per sample."""
    if aux is None or c is None:
        return None
    return 1 - F.cosine_similarity(aux.float(), c.float(), dim=1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per sample, averaged over dimensions (as StackGAN's code does)."""
    return 0.5 * (mu.float().square() + logvar.float().exp() - 1 - logvar.float()).mean(1)


class GanLoss:
    """Every phase's forward passes and backward calls for one (G, D) pair and the spec's train section.

    ``noise`` drives every random draw the loss makes (style mixing, path-length noise, DRAGAN
    points, augmentation), so a run restored from a checkpoint repeats the same draws.
    """

    def __init__(self, G, D, train: TrainSpec, noise: torch.Generator, augment=None,
                 autocast: Callable[[], Any] = nullcontext, distributed: bool = False):
        self.G, self.D, self.t, self.noise, self.augment = G, D, train, noise, augment
        self.autocast, self.distributed = autocast, distributed
        self.style_gan = hasattr(G, "mapping") and hasattr(G, "synthesis")
        self.ca = getattr(G, "ca", None)  # text: the conditioning augmentation; tags, unconditional: None
        self.aux_loss = aux_text_loss if getattr(D, "aux_kind", None) == "text" else aux_tag_loss
        device = next(G.parameters()).device
        self.pl_mean = torch.zeros([], device=device)

    # -- helpers ---------------------------------------------------------
    def condition(self, c: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(what G's layers take, KL per sample or None): text, a conditioning augmentation sample; else c."""
        if self.ca is None or c is None:
            return c, None
        eps = torch.randn(c.shape[0], self.ca.out_dim, generator=self.noise, device=self.noise.device)
        c_in, mu, logvar = self.ca.sample(c, eps)
        return c_in, kl_divergence(mu, logvar)

    def run_G(self, z: torch.Tensor, c: torch.Tensor | None, update_w_avg: bool = False):
        """(images, ws or None); StyleGAN2 mixes styles with probability train.style_mixing."""
        img, ws, _ = self.generate(z, c, update_w_avg)
        return img, ws

    def generate(self, z: torch.Tensor, c: torch.Tensor | None, update_w_avg: bool = False):
        """(images, ws or None, KL per sample or None): run_G with the conditioning augmentation's KL."""
        c, kl = self.condition(c)
        if not self.style_gan:
            with self.autocast():
                return (self.G.generate(z, c) if kl is not None else self.G(z, c)), None, kl
        ws = self.G.mapping(z, c, update_w_avg=update_w_avg)
        prob = self.t.style_mixing
        if prob > 0 and ws.shape[1] > 1:
            cutoff = int(torch.randint(1, ws.shape[1], (), generator=self.noise, device=self.noise.device))
            if float(torch.rand((), generator=self.noise, device=self.noise.device)) >= prob:
                cutoff = ws.shape[1]
            if cutoff < ws.shape[1]:
                z2 = torch.randn(z.shape, generator=self.noise, device=self.noise.device).to(z)
                ws = torch.cat([ws[:, :cutoff], self.G.mapping(z2, c)[:, cutoff:]], dim=1)
        if torch.is_grad_enabled() and not ws.requires_grad:  # a frozen mapping (train.freeze_g_mapping):
            ws.requires_grad_(True)  # the path length is still a gradient with respect to ws
        with self.autocast():
            return self.G.synthesis(ws), ws, kl

    def run_D(self, img: torch.Tensor, c: torch.Tensor | None):
        """(logits, aux logits or None) in float32, after augmentation when there is a pipe."""
        if self.augment is not None:
            img = self.augment(img, self.noise)
        with self.autocast():
            logits, aux = self.D(img, c)
        return logits.float(), (aux.float() if aux is not None else None)

    # -- phases ----------------------------------------------------------
    def accumulate_gradients(self, phase: str, real: torch.Tensor, real_c: torch.Tensor | None,
                             gen_z: torch.Tensor, gen_c: torch.Tensor | None, gain: float,
                             backward: Backward) -> dict[str, torch.Tensor]:
        """Runs phase on one micro-batch and calls backward(loss * gain); returns detached stats.

        The terms run in StyleGAN2-ADA's order (G main, path length, D on fakes, D on reals with R1,
        DRAGAN), so that every random draw comes in the same order whatever the phase split.
        """
        t, stats = self.t, {}
        do_gmain = phase in ("Gmain", "Gboth")
        do_gpl = phase in ("Greg", "Gboth") and self.style_gan and t.pl_weight > 0
        do_dmain = phase in ("Dmain", "Dboth")
        do_dr1 = phase in ("Dreg", "Dboth") and t.r1_gamma > 0
        if do_gmain:
            backward(self._g_main(gen_z, gen_c, stats) * gain)
        if do_gpl:
            backward(self._g_path_length(gen_z, gen_c, stats) * gain)
        if do_dmain:
            backward(self._d_fake(gen_z, gen_c, stats) * gain)
        if do_dmain or do_dr1:
            backward(self._d_real(real, real_c, do_dmain, do_dr1, stats) * gain)
        if do_dmain and t.dragan_lambda > 0:
            backward(self._dragan(real, real_c, stats) * gain)
        return stats

    def _g_main(self, gen_z, gen_c, stats: dict) -> torch.Tensor:
        """G's adversarial loss (plus the auxiliary loss, and the KL term for text) on its images: the mean."""
        img, _, kl = self.generate(gen_z, gen_c, update_w_avg=True)
        logits, aux = self.run_D(img, gen_c)
        loss = g_loss_fake(self.t.loss, logits)
        stats["loss_g_adv"] = loss.detach().mean()
        aux_loss = self.aux_loss(aux, gen_c)
        if aux_loss is not None:
            loss = loss + self.t.aux_weight * aux_loss
            stats["aux_fake"] = aux_loss.detach().mean()
        if kl is not None:
            loss = loss + self.t.kl_weight * kl
            stats["kl"] = kl.detach().mean()
        stats["loss_g"] = loss.detach().mean()
        return loss.mean()

    def _g_path_length(self, gen_z, gen_c, stats: dict) -> torch.Tensor:
        """StyleGAN2's path length penalty on half the micro-batch; moves the running mean length."""
        n = max(gen_z.shape[0] // 2, 1)
        img, ws = self.run_G(gen_z[:n], gen_c[:n] if gen_c is not None else None)
        pl_noise = torch.randn(img.shape, generator=self.noise, device=self.noise.device).to(img)
        pl_noise = pl_noise / math.sqrt(img.shape[2] * img.shape[3])
        (grads,) = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=True)
        lengths = grads.float().square().sum(2).mean(1).sqrt()
        batch_mean = lengths.detach().mean()
        if self.distributed:
            batch_mean = batch_mean.clone()
            dist.all_reduce(batch_mean)
            batch_mean /= dist.get_world_size()
        self.pl_mean.copy_(self.pl_mean.lerp(batch_mean, 0.01))
        penalty = (lengths - self.pl_mean).square() * self.t.pl_weight
        stats["pl_penalty"] = penalty.detach().mean()
        return penalty.mean()

    def _d_fake(self, gen_z, gen_c, stats: dict) -> torch.Tensor:
        """D's loss on G's images (G frozen); keeps the per-sample term for the loss_d stat."""
        with torch.no_grad():
            img, _ = self.run_G(gen_z, gen_c)
        logits, _ = self.run_D(img.detach(), gen_c)
        loss_fake = d_loss_fake(self.t.loss, logits)
        stats["d_fake"] = logits.detach().mean()
        stats["loss_d"] = loss_fake.detach().mean()  # the real half is added by _d_real
        return loss_fake.mean()

    def _d_real(self, real, real_c, main: bool, r1: bool, stats: dict) -> torch.Tensor:
        """D on real images: its loss and auxiliary tag loss (main), the R1 penalty (r1), or both."""
        real_tmp = real.detach().requires_grad_(r1)
        logits, aux = self.run_D(real_tmp, real_c)
        loss = torch.zeros_like(logits)
        if main:
            loss = d_loss_real(self.t.loss, logits)
            stats["d_real"] = logits.detach().mean()
            stats["loss_d"] = loss.detach().mean() + stats["loss_d"]
            if self.augment is not None:
                self.augment.accumulate(logits)
            aux_loss = self.aux_loss(aux, real_c)
            if aux_loss is not None:
                loss = loss + self.t.aux_weight * aux_loss
                stats["aux_real"] = aux_loss.detach().mean()
            if self.ca is not None and real.shape[0] > 1:
                loss = loss + self.t.mismatch_weight * self._d_mismatch(real, real_c, stats)
        if r1:
            penalty = r1_penalty(logits, real_tmp)
            stats["r1_penalty"] = penalty.detach().mean()
            loss = loss + penalty * (self.t.r1_gamma / 2)
        return loss.mean()

    def _d_mismatch(self, real, real_c, stats: dict) -> torch.Tensor:
        """Matching-aware D: its loss on real images paired with another sample's text (rolled by one), as fakes."""
        logits, _ = self.run_D(real.detach(), real_c.roll(1, dims=0))
        stats["d_wrong"] = logits.detach().mean()
        return d_loss_fake(self.t.loss, logits)

    def _dragan(self, real, real_c, stats: dict) -> torch.Tensor:
        """DRAGAN's penalty at points perturbed around the real images, weighted by dragan_lambda."""
        points = dragan_points(real, self.noise).requires_grad_(True)
        logits, _ = self.run_D(points, real_c)
        penalty = dragan_penalty(logits, points)
        stats["dragan_penalty"] = penalty.detach().mean()
        return penalty.mean() * self.t.dragan_lambda

    def state_dict(self) -> dict[str, Any]:
        """The loss's own state: the path length running mean."""
        return {"pl_mean": self.pl_mean.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what state_dict returned."""
        self.pl_mean.copy_(state["pl_mean"].to(self.pl_mean.device))
