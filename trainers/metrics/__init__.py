"""Metrics: FID/KID on InceptionV3 features (local weights only) and per-tag accuracy with an independent judge."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where real statistics and tag judges are cached: $GANRAY_CACHE_DIR, $GANRAY_HOME/cache or ~/.cache/ganray."""
    if os.environ.get("GANRAY_CACHE_DIR"):
        root = Path(os.environ["GANRAY_CACHE_DIR"])
    elif os.environ.get("GANRAY_HOME"):
        root = Path(os.environ["GANRAY_HOME"]) / "cache"
    else:
        root = Path.home() / ".cache" / "ganray"
    root.mkdir(parents=True, exist_ok=True)
    return root
