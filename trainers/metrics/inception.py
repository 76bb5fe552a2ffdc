"""InceptionV3 pool3 features for FID/KID, in plain torch (torchvision is not needed).

The module tree and parameter names follow torchvision's ``Inception3`` as patched by
pytorch-fid (``FIDInceptionA/C/E_1/E_2``: average pools without the padded zeros, a max
pool in the last block), so the standard ``pt_inception-2015-12-05-6726825d.pth`` weights
(the TF FID graph converted by pytorch-fid; torch-fidelity ships the same tensors) load
with a strict ``load_state_dict``. The weights are the file ``eval.fid_weights`` or
``$GANRAY_FID_WEIGHTS`` names; with neither, the file downloaded once from pytorch-fid's release
(``$GANRAY_FID_WEIGHTS_URL`` for a mirror) into ``$GANRAY_CACHE_DIR/inception``, its sha256 checked
against the prefix its name carries (``trainers.metrics.download``). No other network is ever
substituted: a download that fails is an error saying what to fetch, from where, and where to put it.

Inputs are uint8 images resized to 299x299 with PIL's bicubic filter (clean-fid's
recommendation; the network itself does no resizing), scaled to [-1, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from trainers import settings
from trainers.errors import GanrayError
from trainers.metrics import cache_dir
from trainers.metrics.download import DownloadError, fetch, file_name, file_sha256

INPUT_SIZE = 299
FEATURES = 2048
WEIGHTS_ENV = "GANRAY_FID_WEIGHTS"
WEIGHTS_URL_ENV = "GANRAY_FID_WEIGHTS_URL"
STANDARD_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
STANDARD_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{STANDARD_WEIGHTS}"


class WeightsError(GanrayError, ValueError):
    """Inception weights are missing, unreadable or not the FID layout; the message says which."""


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b1, b5, b3, self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([b1, b7, bd, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool``: the last block of the FID graph pools with max (pytorch-fid's FIDInceptionE_2)."""

    def __init__(self, in_channels: int, max_pool: bool = False):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pool)], 1)


class InceptionV3Features(nn.Module):
    """The FID InceptionV3: images in [-1, 1] at 299x299 -> 2048 pool3 features.

    ``fc`` (2048 -> 1008 classes) is kept only so that the standard weights load strictly.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N x 3 x 299 x 299 in [-1, 1] -> N x 2048."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def resolve_weights(path: str | None) -> Path:
    """The weights file: ``path`` (eval.fid_weights), else $GANRAY_FID_WEIGHTS, else the downloaded copy
    (:func:`downloaded_weights`); WeightsError for a named file that does not exist or a failed download."""
    chosen = path or settings.get(WEIGHTS_ENV)
    if not chosen:
        return downloaded_weights()
    p = Path(chosen).expanduser()
    if not p.is_file():
        source = "eval.fid_weights" if path else WEIGHTS_ENV
        raise WeightsError(f"{source}={chosen!r}: no such file (FID/KID need {STANDARD_WEIGHTS} on this machine)")
    return p


def downloaded_weights() -> Path:
    """The weights from $GANRAY_FID_WEIGHTS_URL (default: pytorch-fid's release) in $GANRAY_CACHE_DIR/inception:
    downloaded once, checked by the sha256 prefix of their name, reused after."""
    url = settings.get(WEIGHTS_URL_ENV) or STANDARD_URL
    folder = cache_dir() / "inception"
    try:
        return fetch(url, folder)
    except DownloadError as err:
        try:
            where = f"put it at {folder / file_name(url)[0]}, or set"
        except DownloadError:  # a URL ganray cannot keep a file of: only a named file helps
            where = "set"
        raise WeightsError(
            f"FID, KID and PR need the Inception weights {STANDARD_WEIGHTS}, and neither eval.fid_weights nor "
            f"{WEIGHTS_ENV} names a file, so ganray downloaded them and failed: {err}. Fetch {url} yourself and "
            f"{where} eval.fid_weights or {WEIGHTS_ENV} to its path ({WEIGHTS_URL_ENV} names another URL, e.g. "
            f"a mirror)") from None


def weights_digest(path: str | Path) -> str:
    """sha256 of the weights file (the real-statistics cache key includes it)."""
    return file_sha256(path)


def load_inception(path: str | Path, device: torch.device | str = "cpu") -> InceptionV3Features:
    """The feature network with the weights at path (strict: every tensor of the FID layout must be there)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several kinds for a bad file
        raise WeightsError(f"cannot read Inception weights {path}: {type(err).__name__}: {err}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state_dict")
    net = InceptionV3Features()
    expected = net.state_dict()
    state = dict(state)
    for key in expected:  # converted TF weights carry no BatchNorm step counters
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(f"{name}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                           for name, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("wrong shape", wrong)) if keys)
        raise WeightsError(f"{path} is not the FID InceptionV3 layout ({STANDARD_WEIGHTS}): {detail}")
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False).to(device)


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 NxHxWx3 -> float N x 3 x 299 x 299 in [-1, 1], resized with PIL bicubic (clean-fid)."""
    out = np.empty((len(images), INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img)
        out[i] = np.asarray(pil if pil.size == (INPUT_SIZE, INPUT_SIZE)
                            else pil.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC))
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


RESIZE_SETTINGS = "PIL bicubic to 299x299 from uint8 (clean-fid), pool3 2048-d, pt_inception-2015-12-05 layout"


@torch.no_grad()
def features(net: InceptionV3Features, images: np.ndarray, batch: int = 50) -> np.ndarray:
    """Pool3 features (float64 N x 2048) of uint8 NxHxWx3 images."""
    device = next(net.parameters()).device
    out = [net(preprocess(images[i:i + batch]).to(device)).double().cpu().numpy() for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, FEATURES))
