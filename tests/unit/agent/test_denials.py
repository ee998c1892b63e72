"""Denied egress per container, and telling when a change of its rules made denials rise."""

from __future__ import annotations

from dynamic_asgs.agent.denials import DenialsRose, DenialTracker


def tracker() -> DenialTracker:
    return DenialTracker(window=600, min_packets=5, jump_factor=3)


def test_denials_that_start_after_a_change_are_told_once() -> None:
    t = tracker()
    assert t.observe({"a": 0, "b": 0}, now=0).rose == ()
    assert t.observe({"a": 0, "b": 0}, now=30).rose == ()
    t.rules_changed(["a"], at=40, version=7)
    assert t.observe({"a": 3, "b": 0}, now=60).rose == ()  # below min_packets
    assert t.observe({"a": 9, "b": 0}, now=90).rose == (DenialsRose("a", 40, 7, 90),)
    assert t.observe({"a": 50, "b": 0}, now=120).rose == ()  # once per change
    assert t.denied("a") == 50 and t.rose_at("a") == 90
    assert t.denied("b") == 0 and t.rose_at("b") is None


def test_a_container_whose_rules_did_not_change_is_never_told() -> None:
    t = tracker()
    t.observe({"a": 0}, now=0)
    assert t.observe({"a": 500}, now=30).rose == ()
    assert t.rose_at("a") is None and t.denied("a") == 500


def test_steady_denials_are_not_blamed_on_a_change_but_a_jump_is() -> None:
    t = tracker()
    t.observe({"a": 0}, now=0)
    t.observe({"a": 30}, now=30)  # 1/s before the change
    t.rules_changed(["a"], at=30, version=8)
    assert t.observe({"a": 40}, now=60).rose == ()  # the rewritten chain counts from 0: 40 in 30 s, 1.3/s, no jump
    assert t.observe({"a": 200}, now=90).rose == (DenialsRose("a", 30, 8, 90),)  # 200 in 60 s: 3.3/s, a jump
    assert t.denied("a") == 30 + 200


def test_a_rise_after_the_window_is_not_blamed_on_the_change() -> None:
    t = tracker()
    t.observe({"a": 0}, now=0)
    t.rules_changed(["a"], at=10, version=9)
    t.observe({"a": 0}, now=300)
    assert t.observe({"a": 100}, now=700).rose == ()


def test_a_reset_counter_adds_only_the_new_count_and_gone_containers_are_forgotten() -> None:
    t = tracker()
    t.observe({"a": 10, "b": 4}, now=0)
    t.observe({"a": 3}, now=30)  # a's chain was rewritten; b is gone
    assert t.denied("a") == 13 and t.denied("b") == 0


def test_each_reading_says_how_many_packets_were_refused_since_the_last() -> None:
    t = tracker()
    assert t.observe({"a": 4, "b": 1}, now=0).added == 5  # first reading: everything counted so far
    assert t.observe({"a": 10, "b": 1}, now=30).added == 6
    t.rules_changed(["b"], at=40, version=2)
    assert t.observe({"a": 10, "b": 2}, now=60).added == 2  # b's rewritten chain counts from zero
