"""``vllm serve`` (the OpenAI server, ``python -m vllm.entrypoints.openai.api_server``) with the
seed's ``--kv-transfer-config``: the same long prompt twice gives the same text, and the second
request is served from ucm's DRAM (vLLM's own prefix cache is off)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from tests.vllm import engine
from ucm.integration.vllm.tiny_model import random_text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_vllm_serve_second_request_hits(tiny_model, tmp_path):
    port = _free_port()
    cfg = engine.ktc(config={"max_cache_size": 5368709120 // 40, "kv_block_size": engine.BLOCK * 32 * 2 * 4})
    env = dict(os.environ)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server as users run it: engine core in its own process
    log = open(tmp_path / "server.log", "w")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model,
           "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--block-size", str(engine.BLOCK),
           "--no-enable-prefix-caching", "--dtype", "float32", "--max-model-len", "2048",
           "--enable-prompt-tokens-details", "--kv-transfer-config", json.dumps(cfg)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, "server exited:\n" + (tmp_path / "server.log").read_text()[-4000:]
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "server did not start:\n" + (tmp_path / "server.log").read_text()[-4000:]
            time.sleep(1)
        prompt = random_text(400, 7)  # 400 tokens: 12 full blocks can hit
        body = dict(model=tiny_model, prompt=prompt, max_tokens=16, temperature=0.0)
        r1 = _post(base + "/v1/completions", body)
        r2 = _post(base + "/v1/completions", body)
        assert r1["choices"][0]["text"] == r2["choices"][0]["text"]
        cached = [(r.get("usage") or {}).get("prompt_tokens_details") or {} for r in (r1, r2)]
        assert cached[0].get("cached_tokens", 0) == 0
        assert cached[1].get("cached_tokens") == 12 * engine.BLOCK
        # ucm's counters reach vLLM's Prometheus endpoint through the connector-stats channel
        deadline = time.time() + 30
        while True:
            with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
                metrics = r.read().decode()
            got = {n: _metric(metrics, f"vllm:ucm_{n}_total") for n in ("hit_tokens", "loaded_blocks", "dumped_blocks")}
            if got["loaded_blocks"] >= 12 or time.time() > deadline:
                break
            time.sleep(1)
        assert got["hit_tokens"] == 12 * engine.BLOCK, got
        assert got["loaded_blocks"] == 12 and got["dumped_blocks"] == 12, got
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
