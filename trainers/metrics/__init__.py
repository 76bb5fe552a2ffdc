"""Metrics: FID/KID on InceptionV3 features (local weights only) and per-tag accuracy with an independent judge."""
from __future__ import annotations

from pathlib import Path

from trainers import settings


def cache_dir() -> Path:
    """Where real statistics and tag judges are cached: $GANRAY_CACHE_DIR, $GANRAY_HOME/cache or ~/.cache/ganray.

    A path in it that holds a dataset hash is built with ``trainers.cache_paths.under_root``.
    """
    if settings.get("GANRAY_CACHE_DIR"):
        root = Path(settings.get("GANRAY_CACHE_DIR"))
    elif settings.get("GANRAY_HOME"):
        root = settings.ganray_home() / "cache"
    else:
        root = Path.home() / ".cache" / "ganray"
    root.mkdir(parents=True, exist_ok=True)
    return root
