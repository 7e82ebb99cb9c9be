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

from asgi_resilience.testing import stop_process
from tests.conftest import require_redis_binary

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_all_scenarios_pass_under_uvicorn_workers(tmp_path: Path) -> None:
    require_redis_binary()
    # Output goes to a file, not a pipe, and the run is its own process group: a server left behind by
    # a crashed run can neither hold our pipe open (a hang in communicate()) nor outlive the test.
    log = tmp_path / "e2e.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--quick", "--no-throughput"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=280)
        finally:
            stop_process(process, group=True)
    report = log.read_text(errors="replace")
    print(report)  # shown in full when the test fails
    assert returncode == 0, "a scenario failed: see the captured output"
    assert report.count("PASS") >= 6
