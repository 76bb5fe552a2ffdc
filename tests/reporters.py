"""In-process reporters for tests: what Ray Train's report does, kept in a folder and a list."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


class DirectoryReporter:
    """Keeps every report's metrics and copies each checkpoint into root/NAME."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.metrics: list[dict[str, Any]] = []
        self.checkpoints: list[Path] = []

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None, name: str | None) -> None:
        """Appends a copy of metrics; copies checkpoint_dir (if any) to root/name and remembers the copy."""
        self.metrics.append(dict(metrics))
        if checkpoint_dir:
            dest = self.root / (name or f"checkpoint_{len(self.checkpoints):09d}")
            shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)
            self.checkpoints.append(dest)
