"""The end-to-end load and chaos suite, small variant (``python benchmarks/e2e.py --quick``).

Runs the real thing in a subprocess: redis-server, the controllable origin and the API under
``uvicorn --workers 4`` with the full stack, then the six scenarios (exactness, Redis outage, origin
storm, slow origin, stampede, overload). Every scenario must print PASS.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_redis_binary

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_all_scenarios_pass_under_uvicorn_workers() -> None:
    require_redis_binary()
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--quick", "--no-throughput"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=280,
    )
    report = result.stdout + "\n" + result.stderr[-4000:]
    assert result.returncode == 0, report
    assert report.count("PASS") >= 6, report
