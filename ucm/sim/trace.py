"""Traces: a flat list of block ids cut into requests.

A ``Trace`` holds every request's block ids back to back in ``keys`` with ``starts[r]`` the
index of request ``r``'s first id (``starts[-1] == len(keys)``) and ``tokens[r]`` its prompt
length in tokens. The Mooncake JSONL format (one request a line, ``hash_ids`` = its block ids in
order, ``input_length`` = prompt tokens) is read by ``load_jsonl``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


@dataclass
class Trace:
    name: str
    keys: list
    starts: list  # len(requests) + 1 offsets into keys
    tokens: list  # prompt tokens per request
    meta: dict = field(default_factory=dict)

    @property
    def n_requests(self) -> int:
        return len(self.starts) - 1

    @property
    def n_accesses(self) -> int:
        return len(self.keys)

    def distinct(self) -> int:
        return len(set(self.keys))

    def requests(self):
        keys, starts = self.keys, self.starts
        for r in range(len(starts) - 1):
            yield keys[starts[r]:starts[r + 1]]

    def head(self, n_requests: int) -> "Trace":
        """The first ``n_requests`` requests (a prefix of the trace)."""
        n = min(n_requests, self.n_requests)
        end = self.starts[n]
        return Trace(f"{self.name}[:{n}]", self.keys[:end], self.starts[:n + 1], self.tokens[:n], dict(self.meta))


def from_requests(name: str, requests, block_tokens: int = 512, tokens=None) -> Trace:
    keys: list = []
    starts = [0]
    toks = []
    for i, ids in enumerate(requests):
        keys.extend(ids)
        starts.append(len(keys))
        toks.append(tokens[i] if tokens is not None else len(ids) * block_tokens)
    return Trace(name, keys, starts, toks)


def load_jsonl(path: str, block_tokens: int = 512, limit_requests: int | None = None) -> Trace:
    """Read a Mooncake-format trace. ``input_length`` missing: ``len(hash_ids) * block_tokens``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"trace file not found: {path!r} (give trace=<path to a .jsonl>)")
    keys: list = []
    starts = [0]
    tokens = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                ids = rec["hash_ids"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a trace line with 'hash_ids' ({exc})") from None
            keys.extend(ids)
            starts.append(len(keys))
            n_tok = rec.get("input_length")
            tokens.append(int(n_tok) if n_tok is not None else len(ids) * block_tokens)
            if limit_requests is not None and len(tokens) >= limit_requests:
                break
    return Trace(os.path.basename(path), keys, starts, tokens, {"path": os.path.abspath(path)})
