"""Shared test helpers: ``podspecs`` (pod JSON as the extender leaves it) is importable from every test."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
