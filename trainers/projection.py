"""A real picture projected into a generator: the latent whose image is closest to it.

After StyleGAN2-ADA's ``projector.py``. Two spaces:

- ``w+`` (a StyleGAN2 version registered with its mapping and synthesis exported): one w per
  synthesis input (num_ws, w_dim), started from the average w (the mean of the mapping over
  :data:`W_AVG_SAMPLES` z, for the picture's condition), optimised together with the noise maps.
  As StyleGAN2's projector: Adam with a learning-rate ramp (up over the first 5 % of the steps,
  cosine down over the last 25 %), Gaussian noise added to w that fades out over the first 75 %
  (its scale from the spread of w), the noise maps' multi-scale autocorrelation penalised and
  each map renormalised (mean 0, variance 1) after every step.
- ``z`` (DCGAN-family models, and StyleGAN2 versions registered before the W exports): z,
  started from the best of :data:`Z_CANDIDATES` random z, optimised with the same ramp and kept on
  the sphere of radius sqrt(z_dim) (where a N(0, I) z lives) after every step.

The loss is the pixel MSE plus ``feature_weight`` times a feature distance
(``trainers.projection_features``: D's features, or the Inception's, or none). ``model`` is
duck-typed: ``.generator`` (the packed ``[z | c | psi]`` module), ``.meta`` (GeneratorMetadata),
``.mapping``, ``.synthesis``, ``.noise`` (``deploy.loader.LoadedModel``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from trainers.errors import UsageError
from trainers.grid import to_uint8
from trainers.projection_features import Features, feature_distance

MIN_STEPS, MAX_STEPS = 1, 5000
MAX_FRAMES = 300
W_AVG_SAMPLES = 10_000
Z_CANDIDATES = 256
LR = {"z": 0.05, "w+": 0.1}
LR_RAMPUP, LR_RAMPDOWN, NOISE_RAMP, W_NOISE_FACTOR = 0.05, 0.25, 0.75, 0.05
NOISE_WEIGHT = 1e5


class ProjectionError(UsageError, ValueError):
    """A projection that cannot run as asked (steps, frames, a picture of the wrong size); the message says which."""


@dataclass(frozen=True)
class ProjectionSettings:
    steps: int
    seed: int = 0
    feature_weight: float = 0.1
    frames: int = 0  # reconstructions kept along the fit (for an animation), 0: none

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not MIN_STEPS <= self.steps <= MAX_STEPS:
            raise ProjectionError(f"steps must be a whole number from {MIN_STEPS} to {MAX_STEPS}, got {self.steps!r}")
        if not isinstance(self.frames, int) or not 0 <= self.frames <= MAX_FRAMES:
            raise ProjectionError(f"frames must be from 0 to {MAX_FRAMES}, got {self.frames!r}")
        if not math.isfinite(self.feature_weight) or self.feature_weight < 0:
            raise ProjectionError(f"feature_weight must be a finite number >= 0, got {self.feature_weight!r}")


@dataclass(frozen=True)
class Projection:
    """What a projection found: the latent, the noise maps (w+ only), the reconstruction and the loss curve."""

    space: str  # "z" or "w+"
    latent: torch.Tensor  # (1, z_dim) or (1, num_ws, w_dim)
    noise: tuple[torch.Tensor, ...]
    reconstruction: np.ndarray  # uint8 R x R x 3
    loss: np.ndarray  # float32 (steps,): the total loss at each step
    pixel_mse: float  # of the reconstruction, in [-1, 1] units
    feature: float | None  # its feature distance (None: pixels only)
    frames: list[np.ndarray] = field(default_factory=list)


def projection_space(model) -> str:
    """``w+`` for a version with its mapping and synthesis exported (``trainers.exports``), ``z`` otherwise."""
    return "w+" if model.mapping is not None and model.synthesis is not None else "z"


def space_note(model) -> str | None:
    """The one-line note for a StyleGAN2 version without W exports (projected in z), else None."""
    if model.meta.arch == "stylegan2" and projection_space(model) == "z":
        return ("note: this StyleGAN2 version was registered without its mapping and synthesis exports, so it "
                "is projected in z (W+ needs a version registered since)")
    return None


def packed(meta, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """Rows [z | c | psi=1] of the generator's packed input for latents z (N, z_dim) and one condition c."""
    parts = [z]
    if meta.c_dim:
        if c is None:
            raise ProjectionError("this model is conditional: the projection needs its condition (tags or a prompt)")
        parts.append(c.float().reshape(1, -1).expand(len(z), -1))
    if meta.takes_psi:
        parts.append(torch.ones(len(z), 1))
    return torch.cat(parts, dim=1) if len(parts) > 1 else z


def run_padded(fn: Callable, x: torch.Tensor, *rest) -> torch.Tensor:
    """fn(x, *rest) for a batch of one, run as a batch of two (an exported module's batch is at least 2)."""
    if len(x) > 1:
        return fn(x, *rest)
    return fn(torch.cat([x, x]), *rest)[:1]


class ImageLoss:
    """Pixel MSE plus feature_weight times the feature distance to one target picture (1, 3, R, R) in [-1, 1]."""

    def __init__(self, target: torch.Tensor, features: Features | None, feature_weight: float):
        self.target, self.features, self.weight = target, features, feature_weight
        with torch.no_grad():
            self.target_features = features(target) if features is not None else None

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(total, pixel MSE, feature distance or None), each a scalar, for images (1, 3, R, R)."""
        pixel = (images - self.target).square().mean()
        if self.features is None:
            return pixel, pixel, None
        feature = feature_distance(self.features(images), self.target_features).mean()
        return pixel + self.weight * feature, pixel, feature


def learning_rate(base: float, t: float) -> float:
    """StyleGAN2's projector ramp at t in (0, 1) (the middle of a step: (step + 0.5) / steps): up over the
    first 5 %, cosine down over the last 25 %."""
    ramp = min(1.0, (1.0 - t) / LR_RAMPDOWN)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return base * ramp * min(1.0, t / LR_RAMPUP)


def noise_regularisation(noise: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """StyleGAN2's penalty on the noise maps: the squared autocorrelation at a shift of one pixel, across and
    down, at every scale from the map's own down to 8x8 (2x2 average pools between)."""
    reg = torch.zeros(())
    for n in noise:
        x = n.reshape(-1, 1, n.shape[-2], n.shape[-1])
        while True:
            reg = reg + (x * torch.roll(x, shifts=1, dims=3)).mean().square()
            reg = reg + (x * torch.roll(x, shifts=1, dims=2)).mean().square()
            if x.shape[2] <= 8:
                break
            x = torch.nn.functional.avg_pool2d(x, kernel_size=2)
    return reg


@torch.no_grad()
def normalise_noise(noise: tuple[torch.Tensor, ...]) -> None:
    """Each noise map set to mean 0 and variance 1, in place (after every step, as StyleGAN2's projector)."""
    for n in noise:
        n.sub_(n.mean())
        n.mul_(n.square().mean().rsqrt())


@torch.no_grad()
def w_statistics(model, c: torch.Tensor | None, samples: int = W_AVG_SAMPLES, seed: int = 0,
                 batch: int = 1000) -> tuple[torch.Tensor, float]:
    """(w_avg (1, num_ws, w_dim), w_std) of the mapping over `samples` z for condition c: the start of a
    W+ projection and the scale of its w noise."""
    gen = torch.Generator().manual_seed(seed)
    total, sq, n = None, None, 0
    for i in range(0, samples, batch):
        z = torch.randn(min(batch, samples - i), model.meta.z_dim, generator=gen)
        ws = model.mapping(packed(model.meta, z, c)).float()
        total = ws.sum(0) if total is None else total + ws.sum(0)
        sq = ws.square().sum(0) if sq is None else sq + ws.square().sum(0)
        n += len(ws)
    mean = total / n
    var = (sq / n - mean.square()).clamp(min=0)
    return mean.unsqueeze(0), float(var[0].sum().sqrt())


def render(model, space: str, latent: torch.Tensor, noise: tuple[torch.Tensor, ...],
           c: torch.Tensor | None) -> torch.Tensor:
    """The image (1, 3, R, R) in [-1, 1] of a latent: synthesis(ws, *noise) for w+ (the exported parts take a
    batch of one), the generator for z (padded to two rows: its export's batch is at least 2)."""
    if space == "w+":
        return model.synthesis(latent, *noise)
    return run_padded(model.generator, packed(model.meta, latent, c))


def project(model, target: torch.Tensor, settings: ProjectionSettings, c: torch.Tensor | None = None,
            features: Features | None = None, progress: Callable[[int, int, float], None] | None = None
            ) -> Projection:
    """Projects target (1, 3, R, R) in [-1, 1], or uint8 R x R x 3, at the model's resolution; c is the
    condition the picture is fitted under (None for an unconditional model). See the module's docstring."""
    target = _target_tensor(target, model.meta.resolution)
    loss_fn = ImageLoss(target, features, settings.feature_weight if features is not None else 0.0)
    space = projection_space(model)
    torch.manual_seed(settings.seed)
    fit = _fit_w if space == "w+" else _fit_z
    latent, noise, curve, frames = fit(model, c, loss_fn, settings, progress)
    with torch.no_grad():
        image = render(model, space, latent, noise, c)
        _, pixel, feature = loss_fn(image)
    return Projection(space, latent.detach().clone(), tuple(n.detach().clone() for n in noise),
                      to_uint8(image)[0], np.asarray(curve, dtype=np.float32), float(pixel),
                      None if feature is None else float(feature), frames)


def _target_tensor(target, resolution: int) -> torch.Tensor:
    if isinstance(target, np.ndarray):
        if target.dtype != np.uint8 or target.ndim != 3 or target.shape[2] != 3:
            raise ProjectionError(f"a target picture is uint8 H x W x 3, got {target.dtype} {target.shape}")
        target = torch.from_numpy(np.ascontiguousarray(target)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    if tuple(target.shape) != (1, 3, resolution, resolution):
        raise ProjectionError(f"the model draws {resolution}x{resolution} pictures; the target is "
                              f"{tuple(target.shape)} (resize it first)")
    return target.float()


def _keep_frame(step: int, settings: ProjectionSettings) -> bool:
    if not settings.frames:
        return False
    every = max(1, settings.steps // settings.frames)
    return step % every == 0 or step == settings.steps - 1


def _fit_z(model, c, loss_fn: ImageLoss, settings: ProjectionSettings, progress):
    meta = model.meta
    radius = math.sqrt(meta.z_dim)
    with torch.no_grad():  # the start: the nearest (by pixels) of Z_CANDIDATES random z
        z0 = torch.randn(Z_CANDIDATES, meta.z_dim, generator=torch.Generator().manual_seed(settings.seed))
        images = torch.cat([model.generator(packed(meta, z0[i:i + 64], c)) for i in range(0, len(z0), 64)])
        best = int((images - loss_fn.target).square().flatten(1).mean(1).argmin())
    z = z0[best:best + 1].clone().requires_grad_(True)
    opt = torch.optim.Adam([z], betas=(0.9, 0.999), lr=LR["z"])
    curve, frames = [], []
    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(LR["z"], (step + 0.5) / settings.steps)
        image = render(model, "z", z, (), c)
        loss, _, _ = loss_fn(image)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            z.mul_(radius / z.norm().clamp(min=1e-8))
        curve.append(float(loss.detach()))
        if _keep_frame(step, settings):
            frames.append(to_uint8(image.detach())[0])
        if progress is not None:
            progress(step + 1, settings.steps, float(loss))
    return z.detach(), (), curve, frames


def _fit_w(model, c, loss_fn: ImageLoss, settings: ProjectionSettings, progress):
    w_avg, w_std = w_statistics(model, c, seed=settings.seed)
    w = w_avg.clone().requires_grad_(True)
    noise = tuple(n.detach().clone().float().requires_grad_(True) for n in model.noise)
    opt = torch.optim.Adam([w, *noise], betas=(0.9, 0.999), lr=LR["w+"])
    curve, frames = [], []
    for step in range(settings.steps):
        t = (step + 0.5) / settings.steps
        for group in opt.param_groups:
            group["lr"] = learning_rate(LR["w+"], t)
        w_noise_scale = w_std * W_NOISE_FACTOR * max(0.0, 1.0 - t / NOISE_RAMP) ** 2
        image = render(model, "w+", w + torch.randn_like(w) * w_noise_scale, noise, c)
        loss, _, _ = loss_fn(image)
        loss = loss + NOISE_WEIGHT * noise_regularisation(noise) if noise else loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        normalise_noise(noise)
        curve.append(float(loss.detach()))
        if _keep_frame(step, settings):
            frames.append(to_uint8(image.detach())[0])
        if progress is not None:
            progress(step + 1, settings.steps, float(loss))
    return w.detach(), noise, curve, frames
