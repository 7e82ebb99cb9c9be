"""The generated synchronous twins are up to date with their async source (``.ci/unasync.py --check``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "unasync.py"


@pytest.mark.skipif(not SCRIPT.exists(), reason="the generator is not shipped in the sdist")
def test_generated_sync_twins_are_up_to_date() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
