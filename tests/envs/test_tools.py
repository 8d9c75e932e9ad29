"""Roster YAML: paper prices, per-call cost ordering, latency tail, validation errors."""
import math

import numpy as np
import pytest

from orchestra_jax.envs.tools import (call_cost_usd, expected_call_cost_usd, load_roster, roster_from_dict,
                                      sample_latency_s, sample_tokens_out)

PAPER_PRICES = {  # $ per 1M tokens in / out (paper's evaluation table)
    "gpt-5": (1.25, 10.0), "gpt-5-mini": (0.25, 2.0), "qwen3-32b": (0.8, 0.8), "qwen2.5-coder-32b": (0.8, 0.8),
    "llama-3.3-70b": (0.9, 0.9), "qwen2.5-math-72b": (0.9, 0.9), "qwen2.5-math-7b": (0.2, 0.2),
    "orchestrator": (0.2, 0.2),
}


def test_paper_prices_and_aliases():
    r = load_roster()
    for name, (pin, pout) in PAPER_PRICES.items():
        assert (r.model(name).price_in, r.model(name).price_out) == (pin, pout)
    aliases = [a.alias for a in r.menu("qa")]
    assert aliases == ["search-1", "search-2", "search-3", "reasoner-1", "reasoner-2", "reasoner-3",
                       "answer-1", "answer-2", "answer-3", "answer-4", "answer-math-1", "answer-math-2"]
    assert r.orchestrator_model.price_in == 0.2


def test_strongest_model_is_most_expensive_per_call():
    r = load_roster()
    for tool in ("search", "enhance_reasoning", "answer"):
        costs = {m: expected_call_cost_usd(r.model(m), tool, 500) for m in PAPER_PRICES if m != "orchestrator"}
        assert max(costs, key=costs.get) == "gpt-5"
        assert costs["gpt-5"] > 3 * sorted(costs.values())[-2]


def test_call_cost_hand_computed():
    m = load_roster().model("gpt-5")
    assert call_cost_usd(m, 1000, 2000) == pytest.approx((1000 * 1.25 + 2000 * 10) / 1e6)
    assert call_cost_usd(m, 1000, 2000, price_scale=0.5) == pytest.approx(0.5 * 0.02125)


def test_tokens_and_latency_distribution():
    m = load_roster().model("gpt-5")
    rng = np.random.default_rng(0)
    toks = np.array([sample_tokens_out(m, "answer", rng) for _ in range(4000)])
    assert abs(toks.mean() / m.mean_tokens_out("answer") - 1) < 0.03       # mean preserved
    lat = np.array([sample_latency_s(m, 1800, rng) for _ in range(4000)])
    median = m.latency_base_s + 1800 / m.tokens_per_s
    assert abs(np.median(lat) / median - 1) < 0.05
    assert np.quantile(lat, 0.99) > 3 * median                              # heavy log-normal tail


def _minimal():
    return {"models": {"a": {"price_in": 1, "price_out": 2, "skill": {"default": 1.0}}},
            "aliases": {"qa": {"x-1": {"tool": "answer", "model": "a"}}}, "orchestrator": "a"}


def test_new_model_from_yaml_dict_without_code():
    d = _minimal()
    d["models"]["b"] = {"price_in": 0.1, "price_out": 0.1, "skill": {"math": 5.0, "default": 0.0}}
    d["aliases"]["qa"]["x-2"] = {"tool": "answer", "model": "b"}
    r = roster_from_dict(d)
    assert r.alias_model("qa", "x-2").skill_in("math") == 5.0
    assert r.alias_model("qa", "x-2").skill_in("code") == 0.0


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d["models"]["a"].update(price_in="cheap"), "models.a.price_in"),
    (lambda d: d["models"]["a"].update(colour=1), "colour"),
    (lambda d: d["aliases"]["qa"]["x-1"].update(model="zzz"), "aliases.qa.x-1"),
    (lambda d: d["models"]["a"].pop("skill"), "skill"),
    (lambda d: d.update(orchestrator="nope"), "orchestrator"),
    (lambda d: d["models"]["a"].update(price_out=-1), "price_out"),
])
def test_bad_roster_errors_name_the_key(mutate, needle):
    d = _minimal()
    mutate(d)
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        roster_from_dict(d, "r.yaml")


def test_missing_roster_file():
    with pytest.raises(ValueError, match="not found"):
        load_roster("/nonexistent/roster.yaml")
