"""Behaviour flags on hand-written call logs (each behaviour present and absent)."""
import pytest

from orchestra_jax.analysis.behaviours import behaviour_frequencies, episode_behaviours


def call(tool, alias, valid=True, price=None, cost=0.0, error=""):
    e = {"tool": tool, "alias": alias, "valid": valid, "cost_usd": cost, "error": error}
    if price is not None:
        e["price"] = price
    return e


def test_escalation_and_double_check_are_told_apart_by_price():
    esc = episode_behaviours([call("answer", "a-cheap", price=1.0), call("answer", "a-top", price=15.0)])
    assert esc["escalation"] and not esc["double_check"] and not esc["giving_up"]
    dbl = episode_behaviours([call("search", "s-top", price=15.0), call("search", "s-cheap", price=1.0),
                              call("answer", "a", price=2.0)])
    assert dbl["double_check"] and not dbl["escalation"]
    # without logged prices the turn's $ decides
    assert episode_behaviours([call("search", "x", cost=0.001), call("search", "y", cost=0.01)])["escalation"]


def test_repeated_identical_retry_and_giving_up():
    f = episode_behaviours([call("search", "s1"), call("search", "s1"), call("answer", "a1")])
    assert f["repeated_identical"] and not f["escalation"] and not f["double_check"] and not f["giving_up"]
    g = episode_behaviours([call("", "", valid=False, error="Error: invalid json"), call("search", "s1")])
    assert g["retry_after_error"] and g["giving_up"]
    h = episode_behaviours([call("answer", "a1", valid=False, error="timeout")])  # the answer never ran
    assert h["giving_up"] and not h["retry_after_error"]
    assert not any(episode_behaviours([call("answer", "a1")]).values())


def test_frequencies_and_bad_entries():
    log = [[call("answer", "a")], [call("search", "s"), call("search", "s")], []]
    fr = behaviour_frequencies(log)
    assert fr["repeated_identical"] == pytest.approx(1 / 3) and fr["giving_up"] == pytest.approx(2 / 3)
    assert fr["episodes"] == 3
    with pytest.raises(ValueError, match="lacks 'tool'"):
        episode_behaviours([{"alias": "x"}])
    with pytest.raises(ValueError, match="empty"):
        behaviour_frequencies([])
