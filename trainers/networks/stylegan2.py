"""StyleGAN2 (Karras et al. 2020) in plain PyTorch, after NVlabs' stylegan2-ada-pytorch ``networks.py``.

G: a mapping network (z [, embedded c] -> w, lr multiplier 0.01, w_avg for truncation) and a
synthesis network of modulated/demodulated 3x3 convolutions with per-layer noise inputs, in
the skip architecture (each block adds its ToRGB output to the upsampled image).
D: residual blocks, minibatch standard deviation, and conditioning by projection onto a
mapping of c (``cmap``), as stylegan2-ada does.

Text conditioning (StackGAN): c is a sentence embedding; G's conditioning augmentation
(``ca``) maps it to (mu, log sigma^2) and the mapping network embeds a sample of it (mu
when sampling) in place of a tag vector; D maps the embedding itself.

All weights use equalised learning rate (stored N(0, 1), scaled at run time). Resampling
uses the [1, 3, 3, 1] FIR filter. Style mixing and path-length regularisation live in the
loss, which calls ``mapping`` and ``synthesis`` separately.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers.networks.common import ConditioningAugmentation, channel_widths

SQRT2 = math.sqrt(2.0)


def _fir() -> torch.Tensor:
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = f[:, None] * f[None, :]
    return f / f.sum()


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x upsampling: zero insertion, then the FIR filter (gain 4)."""
    n, c, h, w = x.shape
    x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, 1, 0, 0, 0, 1]).reshape(n, c, 2 * h, 2 * w)
    x = F.pad(x, [2, 1, 2, 1])
    return F.conv2d(x, (f * 4).to(x.dtype)[None, None].expand(c, 1, 4, 4), groups=c)


def downsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x downsampling: the FIR filter, then every other pixel."""
    c = x.shape[1]
    return F.conv2d(F.pad(x, [1, 1, 1, 1]), f.to(x.dtype)[None, None].expand(c, 1, 4, 4), stride=2, groups=c)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def _act(x: torch.Tensor, activation: str, clamp: float | None) -> torch.Tensor:
    if activation == "lrelu":
        x = F.leaky_relu(x, 0.2) * SQRT2
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class EqLinear(nn.Module):
    """Fully connected layer with equalised learning rate."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0, activation: str = "linear"):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain if self.bias is not None else None
        return _act(F.linear(x, w, b), self.activation, None)


class EqConv2d(nn.Module):
    """Conv layer with equalised learning rate; ``down`` = 2 blurs and halves before the conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", down: int = 1, conv_clamp: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.activation, self.down, self.conv_clamp, self.padding = activation, down, conv_clamp, kernel_size // 2
        self.register_buffer("fir", _fir(), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        if self.down == 2:
            x = downsample2d(x, self.fir)
        w = self.weight.to(x.dtype) * self.weight_gain
        x = F.conv2d(x, w, self.bias.to(x.dtype) if self.bias is not None else None, padding=self.padding)
        x = _act(x, self.activation, None)
        if gain != 1:
            x = x * gain
        return x.clamp(-self.conv_clamp * gain, self.conv_clamp * gain) if self.conv_clamp is not None else x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     padding: int = 0) -> torch.Tensor:
    """StyleGAN2's modulated convolution, in the non-fused form (one shared weight, scaled activations).

    weight [O, I, k, k] (already gain-scaled), styles [N, I]. Demodulation divides each output
    channel by the norm of its modulated weights: sum_i s_i^2 * sum_k w_oik^2.
    """
    x = x * styles.to(x.dtype)[:, :, None, None]
    x = F.conv2d(x, weight.to(x.dtype), padding=padding)
    if demodulate:
        dcoefs = (styles.float().square() @ weight.float().square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
        x = x * dcoefs.to(x.dtype)[:, :, None, None]
    return x


class MappingNetwork(nn.Module):
    """z (and embedded c) -> w, broadcast to num_ws; tracks w_avg for truncation."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, c_dim, w_dim, num_ws, w_avg_beta
        self.embed = EqLinear(c_dim, w_dim) if c_dim else None
        features = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(EqLinear(features[i], features[i + 1], activation="lrelu",
                                             lr_multiplier=lr_multiplier) for i in range(num_layers))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None, truncation_psi: float = 1.0,
                update_w_avg: bool = False) -> torch.Tensor:
        parts = []
        if self.z_dim:
            parts.append(normalize_2nd_moment(z.float()))
        if self.c_dim:
            if c is None:
                raise ValueError("this StyleGAN2 network is conditional: it needs a tag vector c")
            parts.append(normalize_2nd_moment(self.embed(c.float())))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for layer in self.layers:
            x = layer(x)
        if update_w_avg and self.w_avg_beta is not None and self.num_ws is not None:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampled first), noise input, bias, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False,
                 conv_clamp: float | None = None):
        super().__init__()
        self.affine = EqLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("fir", _fir(), persistent=False)
        self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp
        self.weight_gain = 1 / math.sqrt(in_channels * 9)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """noise: a (resolution, resolution) map used in place of ``noise_const`` (what the synthesis export
        takes as an input, and a projector fits); noise_mode then says nothing."""
        styles = self.affine(w)
        if self.up:
            x = upsample2d(x, self.fir)
        x = modulated_conv2d(x, self.weight * self.weight_gain, styles, demodulate=True, padding=1)
        if noise is not None:
            x = x + (noise * self.noise_strength).to(x.dtype)
        elif noise_mode == "random":
            x = x + torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device,
                                dtype=x.dtype) * self.noise_strength.to(x.dtype)
        elif noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        return _act(x + self.bias.to(x.dtype)[None, :, None, None], "lrelu", self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to RGB, without demodulation."""

    def __init__(self, in_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.affine = EqLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(3))
        self.weight_gain, self.conv_clamp = 1 / math.sqrt(in_channels), conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return _act(x + self.bias.to(x.dtype)[None, :, None, None], "linear", self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (const or 2 convs) and a ToRGB added to the upsampled image."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 conv_clamp: float | None = None):
        super().__init__()
        self.first = in_channels == 0
        if self.first:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, w_dim, conv_clamp=conv_clamp)
        self.register_buffer("fir", _fir(), persistent=False)
        self.num_conv, self.num_torgb = (1 if self.first else 2), 1

    def forward(self, x, img, ws: torch.Tensor, noise_mode: str = "random", noise: list | None = None):
        """noise: one map per conv layer of the block (``num_conv``), or None for noise_mode's."""
        noise = noise or [None] * self.num_conv
        if self.first:
            x = self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode, noise[0])
        else:
            x = self.conv0(x, ws[:, 0], noise_mode, noise[0])
            x = self.conv1(x, ws[:, 1], noise_mode, noise[1])
        y = self.torgb(x, ws[:, self.num_conv])
        img = y if img is None else upsample2d(img, self.fir).to(y.dtype) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> images [N, 3, R, R]."""

    def __init__(self, w_dim: int, resolution: int, channels: int, channels_max: int,
                 conv_clamp: float | None = 256):
        super().__init__()
        ch = channel_widths(resolution, channels, channels_max)
        self.resolutions = [2 ** i for i in range(2, int(np.log2(resolution)) + 1)]
        self.blocks = nn.ModuleList(
            SynthesisBlock(0 if r == 4 else ch(r // 2), ch(r), w_dim, r, conv_clamp) for r in self.resolutions)
        self.num_ws = sum(b.num_conv for b in self.blocks) + self.blocks[-1].num_torgb

    def noise_layers(self) -> list[SynthesisLayer]:
        """The layers with a noise input, in the order :meth:`forward`'s ``noise`` lists their maps."""
        return [layer for block in self.blocks
                for layer in ([block.conv1] if block.first else [block.conv0, block.conv1])]

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", noise: list | None = None) -> torch.Tensor:
        """noise: one (r, r) map per layer of :meth:`noise_layers`, in place of noise_mode's noise."""
        x = img = None
        w_idx = n_idx = 0
        for block in self.blocks:
            maps = noise[n_idx:n_idx + block.num_conv] if noise is not None else None
            x, img = block(x, img, ws[:, w_idx:w_idx + block.num_conv + block.num_torgb], noise_mode, maps)
            w_idx += block.num_conv
            n_idx += block.num_conv
        return img


class StyleGan2Generator(nn.Module):
    """G(z, c) = synthesis(mapping(z, c)); ``noise_mode`` 'random' in training, 'const' to sample reproducibly."""

    def __init__(self, z_dim: int, c_dim: int, resolution: int, channels: int = 64, channels_max: int = 512,
                 w_dim: int | None = None, mapping_layers: int = 8, text_ca_dim: int = 0):
        """text_ca_dim > 0: c is a text embedding of c_dim, augmented to text_ca_dim before the mapping."""
        super().__init__()
        w_dim = w_dim or z_dim
        self.config = {"arch": "stylegan2", "z_dim": z_dim, "c_dim": c_dim, "resolution": resolution,
                       "channels": channels, "channels_max": channels_max, "w_dim": w_dim,
                       "mapping_layers": mapping_layers}
        if text_ca_dim:
            self.config.update(conditioning="text", embed_dim=text_ca_dim)
        self.z_dim, self.c_dim, self.w_dim, self.resolution = z_dim, c_dim, w_dim, resolution
        self.synthesis = SynthesisNetwork(w_dim, resolution, channels, channels_max)
        self.num_ws = self.synthesis.num_ws
        self.ca = ConditioningAugmentation(c_dim, text_ca_dim) if text_ca_dim else None
        self.mapping = MappingNetwork(z_dim, text_ca_dim or c_dim, w_dim, self.num_ws, mapping_layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                noise_mode: str = "random") -> torch.Tensor:
        if self.ca is not None and c is not None:
            c = self.ca(c)[0]  # sampling: the augmentation's mean
        return self.synthesis(self.mapping(z, c, truncation_psi), noise_mode)


def minibatch_std(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Appends one channel: the std over groups of samples, averaged (StyleGAN's minibatch std).

    The group is the largest divisor of the batch that is <= group_size.
    """
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    y = x.float().reshape(g, -1, 1, c, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, 1, 1, 1)
    y = y.repeat(g, 1, h, w).to(x.dtype)
    return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    """Residual block: two 3x3 convs (the second halves), plus a 1x1 halving skip; both scaled by sqrt(1/2)."""

    def __init__(self, tmp_channels: int, out_channels: int, first: bool,
                 conv_clamp: float | None = None):
        super().__init__()
        self.fromrgb = EqConv2d(3, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp) if first else None
        self.conv0 = EqConv2d(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = EqConv2d(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = EqConv2d(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x, img):
        if self.fromrgb is not None:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


class StyleGan2Discriminator(nn.Module):
    """D(x, c) -> (logits [N], None): residual blocks, minibatch std, projection onto cmap(c)."""

    def __init__(self, c_dim: int, resolution: int, channels: int = 64, channels_max: int = 512,
                 mbstd_group: int = 4, mapping_layers: int = 8, conv_clamp: float | None = 256):
        super().__init__()
        ch = channel_widths(resolution, channels, channels_max)
        self.c_dim, self.mbstd_group = c_dim, mbstd_group
        res = [2 ** i for i in range(int(np.log2(resolution)), 2, -1)]
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(ch(r), ch(r // 2), first=(r == resolution), conv_clamp=conv_clamp) for r in res)
        c4 = ch(4)
        self.cmap_dim = c4 if c_dim else 0
        self.mapping = MappingNetwork(0, c_dim, c4, None, mapping_layers, w_avg_beta=None) if c_dim else None
        self.conv = EqConv2d(c4 + 1, c4, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = EqLinear(c4 * 16, c4, activation="lrelu")
        self.out = EqLinear(c4, self.cmap_dim or 1)

    def input_blocks(self) -> list[nn.Module]:
        """D's residual blocks from the input side (what train.freeze_d counts); the 4x4 epilogue and the
        condition's mapping are none of them."""
        return list(self.blocks)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        x = None
        for block in self.blocks:
            x = block(x, img)
        x = self.conv(minibatch_std(x, self.mbstd_group))
        x = self.out(self.fc(x.flatten(1)))
        if self.mapping is not None:
            if c is None:
                raise ValueError("this StyleGAN2 discriminator is conditional: it needs a tag vector c")
            cmap = self.mapping(None, c)
            x = (x * cmap.to(x.dtype)).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x.squeeze(1), None
