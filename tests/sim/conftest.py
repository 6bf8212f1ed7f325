from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"


@pytest.fixture
def fixture_trace() -> str:
    return str(DATA / "synthetic_head300.jsonl")


def run_sim(args: list, cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "ucm.sim", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
