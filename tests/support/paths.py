"""Where the repository is, for tests and helpers at any depth under tests/."""

from __future__ import annotations

from pathlib import Path

#: The repository root (the folder holding pyproject.toml).
REPO = Path(__file__).resolve().parents[2]
