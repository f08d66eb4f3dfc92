"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real datasets: ``$EMBEDKIT_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    folder = Path(os.environ.get("EMBEDKIT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not folder.is_dir():
        pytest.fail(
            f"shared data folder {folder} not found; set EMBEDKIT_SHARED_DATA to the folder holding MANIFEST.md"
        )
    return folder
