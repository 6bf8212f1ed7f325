"""The slow-tier hit gate: disk hits load only while reading them beats recomputing them."""
import pytest

from ucm.tiers.hit_gate import SlowHitGate


def test_fixed_modes_ignore_the_rates():
    always, never = SlowHitGate("always"), SlowHitGate("never")
    for g in (always, never):
        g.note_read(1, 1.0)
        g.note_compute(10**12, 1.0)
    assert always.allow() and not never.allow()
    assert all(not never.allow() for _ in range(100)), "never probes"


def test_auto_lets_hits_through_until_both_rates_are_known():
    g = SlowHitGate("auto")
    assert g.allow()
    g.note_compute(2_000, 1.0)
    assert g.allow(), "no read measured yet"
    g.note_read(1_000, 1.0)
    assert not g.allow(), "reading 1 kB/s loses to computing 2 kB/s"


def test_auto_reads_only_while_reading_beats_recomputing_by_the_margin():
    g = SlowHitGate("auto", weight=1.0, margin=1.5)  # the last measurement only
    g.note_compute(2e9, 1.0)
    g.note_read(3e9, 1.0)
    assert g.allow()
    g.note_read(2.9e9, 1.0)
    assert not g.allow(), "faster than recomputing, but not by the margin"
    assert SlowHitGate("auto").margin == 1.0
    g.note_compute(0.5e9, 1.0)
    assert g.allow()


def test_a_refusing_gate_probes_every_nth_first_lookup_only():
    g = SlowHitGate("auto", probe_every=4)
    g.note_compute(2e9, 1.0)
    g.note_read(1e9, 1.0)
    decisions = [g.allow() for _ in range(8)]
    assert decisions == [False, False, False, True] * 2
    assert g.counters == {"allowed_lookups": 2, "refused_lookups": 6, "probes": 2}
    assert not any(g.allow(count=False) for _ in range(20)), "repeated asks get the plain decision"
    assert g.counters["refused_lookups"] == 6, "and do not count"


def test_the_averages_move_by_their_weight_and_ignore_empty_measurements():
    g = SlowHitGate("auto", weight=0.5)
    g.note_read(4e9, 1.0)
    g.note_read(2e9, 1.0)
    g.note_read(10**9, 0.0)
    g.note_read(0, 1.0)
    assert g.read_bps == pytest.approx(3e9)
    assert g.stats()["read_gbps"] == pytest.approx(3.0) and g.stats()["compute_gbps"] is None


def test_an_unknown_mode_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"'disk.hits' must be one of \['auto', 'always', 'never'\]"):
        SlowHitGate("sometimes")
