"""Trace-replay simulator of ucm's eviction and admission policies (pure Python, no torch).

Command line (a Hydra app, primary config ``conf/sim.yaml``)::

    python -m ucm.sim trace=<path.jsonl> mode=raw|prefix eviction=<name> admission=<name> capacity_blocks=<N>

From Python: ``ucm.sim.core.load_trace`` and ``ucm.sim.core.simulate``.
"""
from ucm.sim.core import load_trace, resolve_capacity, simulate

__all__ = ["load_trace", "resolve_capacity", "simulate"]
