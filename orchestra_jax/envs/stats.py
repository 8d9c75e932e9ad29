"""Properties of the QA setting, measured with scripted policies before any training.

``compute_stats(env, seed, n_tasks, reward_fn)`` runs every scripted QA policy on the same test,
``unseen_prices`` and ``unseen_tools`` tasks, computes each policy's metrics (the configured reward comes
from ``reward_fn(results: {name: EpisodeResults}) -> {name: rewards [N]}``, pooled over all policies as
``evaluate.py`` does; it is injected so this layer does not import the trainer's), and the checks:

- ``blind``: the best text-blind policy (``blind``, ``random``) reaches <= 80% of the oracle's mean reward
  and >= 10% less than the text-reading router (``rule_based``);
- ``price_blind``: the router with list prices loses >= 10% of its reward on test, more on unseen_prices;
- ``pref_blind``: the router with the mean preference loses >= 10% of its preference score;
- ``closed_loop``: the router beats its open-loop copy by >= 5 accuracy points at no higher mean cost;
- ``oracle_turns``: the oracle takes >= 2 turns on average;
- ``prices_change_choice``: the cheapest adequate model (true answer success >= 90% of the menu's best)
  under the episode's prices differs from the one at list prices in >= 30% of test episodes;
- ``hidden_share``: the hidden difficulty's share of the variance of the best model's success logit is
  >= 25% (the visible cues explain only part of a task's odds);
- ``phrasings``: >= 50 distinct preference instructions among the test tasks.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from orchestra_jax.envs.base import EpisodeResults
from orchestra_jax.envs.baselines import make_policy, run_policy
from orchestra_jax.envs.preferences import preference_score
from orchestra_jax.envs.qa_model import answer_logit, base_logit, difficulty
from orchestra_jax.envs.tools import sigmoid

POLICIES = ("oracle", "rule_based", "open_loop", "price_blind", "pref_blind", "always_strongest", "cheapest",
            "random_router", "blind", "random")
TEXT_BLIND = ("blind", "random")
SPLITS = ("test", "unseen_prices", "unseen_tools")


@dataclasses.dataclass
class Row:
    policy: str
    split: str
    n: int
    accuracy: float
    cost_usd: float
    latency_s: float
    turns: float
    preference_score: float
    reward: float


def policy_rows(split: str, results: Mapping[str, EpisodeResults], rewards: Mapping[str, np.ndarray]) -> list[Row]:
    return [Row(name, split, len(r.solved), float(r.solved.mean()), float(r.cost_usd.mean()),
                float(r.latency_s.mean()), float(r.n_turns.mean()),
                float(preference_score(r.features, r.solved, r.preference)), float(np.mean(rewards[name])))
            for name, r in results.items()]


def adequate_choice_changes(env, tasks) -> float:
    """Fraction of tasks whose cheapest adequate answer model differs between episode and list prices."""
    q, changed = env.qa, 0
    for t in tasks:
        d = difficulty(q, t.steps, t.hidden_difficulty)
        ps = [env.pool[j] for j in t.profiles]
        p = [sigmoid(answer_logit(q, base_logit(m, t.domain, d), t.domain, t.hops, t.hops, True, True)) for m in ps]
        ok = [j for j in range(len(ps)) if p[j] >= 0.9 * max(p)]
        cost = lambda j, s: s * (ps[j].price_in * q.prompt_tokens + ps[j].price_out * ps[j].mean_tokens_out("answer"))  # noqa: E731
        changed += min(ok, key=lambda j: cost(j, t.price_scale[j])) != min(ok, key=lambda j: cost(j, 1.0))
    return changed / max(len(tasks), 1)


def hidden_share(env, tasks) -> float:
    """Share of the best (true) model's success-logit variance that comes from the hidden difficulty."""
    q, vis, hid = env.qa, [], []
    for t in tasks:
        ps = [env.pool[j] for j in t.profiles]
        j = max(range(len(ps)), key=lambda k: base_logit(ps[k], t.domain, difficulty(q, t.steps, 0.0)))
        vis.append(base_logit(ps[j], t.domain, difficulty(q, t.steps, 0.0)))
        hid.append(-ps[j].slope * t.hidden_difficulty)
    v, h = float(np.var(vis)), float(np.var(hid))
    return h / max(v + h, 1e-12)


def run_split(env, split: str, seed: int, n_tasks: int, reward_fn: Callable, policies: Sequence[str] = POLICIES):
    tasks = env.sample_tasks(seed, n_tasks, split)
    results = {name: run_policy(env, make_policy(name, env), tasks, seed) for name in policies}
    return tasks, results, reward_fn(results)


def compute_stats(env, seed: int, n_tasks: int, reward_fn: Callable, splits: Sequence[str] = SPLITS) -> dict:
    rows, by = [], {}
    test_tasks = None
    for split in splits:
        tasks, results, rewards = run_split(env, split, seed, n_tasks, reward_fn)
        rows += policy_rows(split, results, rewards)
        by[split] = {r.policy: r for r in rows if r.split == split}
        if split == "test":
            test_tasks = tasks
    c: dict = {}
    t = by.get("test")
    if t:
        best_blind = max(TEXT_BLIND, key=lambda n: t[n].reward)
        rb, orc, bl = t["rule_based"].reward, t["oracle"].reward, t[best_blind].reward
        c["blind"] = {"policy": best_blind, "blind_reward": bl, "oracle_reward": orc, "router_reward": rb,
                      "of_oracle": bl / orc, "below_router": 1 - bl / rb,
                      "pass": bool(bl <= 0.8 * orc and bl <= 0.9 * rb)}
        loss = 1 - t["price_blind"].reward / rb
        c["price_blind"] = {"loss_test": loss, "pass": bool(loss >= 0.10)}
        if "unseen_prices" in by:
            u = by["unseen_prices"]
            lu = 1 - u["price_blind"].reward / u["rule_based"].reward
            c["price_blind"].update(loss_unseen_prices=lu, pass_=bool(loss >= 0.10 and lu > loss))
            c["price_blind"]["pass"] = c["price_blind"].pop("pass_")
        pl = 1 - t["pref_blind"].preference_score / t["rule_based"].preference_score
        c["pref_blind"] = {"loss": pl, "pass": bool(pl >= 0.10)}
        gap = t["rule_based"].accuracy - t["open_loop"].accuracy
        c["closed_loop"] = {"acc_gap_points": 100 * gap, "cost_closed": t["rule_based"].cost_usd,
                            "cost_open": t["open_loop"].cost_usd,
                            "pass": bool(gap >= 0.05 and t["rule_based"].cost_usd <= t["open_loop"].cost_usd)}
        c["oracle_turns"] = {"turns": t["oracle"].turns, "pass": bool(t["oracle"].turns >= 2)}
        ch = adequate_choice_changes(env, test_tasks)
        c["prices_change_choice"] = {"fraction": ch, "pass": bool(ch >= 0.30)}
        hs = hidden_share(env, test_tasks)
        c["hidden_share"] = {"hidden": hs, "visible": 1 - hs, "pass": bool(hs >= 0.25)}
        n_ph = len({x.preference_text for x in test_tasks if x.preference_text})
        c["phrasings"] = {"distinct": n_ph, "pass": bool(n_ph >= 50)}
    return {"rows": rows, "checks": c, "n_tasks": n_tasks}


def format_rows(rows: Sequence[Row]) -> str:
    lines = [f"{'policy':18s} {'split':14s} {'n':>5s} {'acc':>6s} {'mean $':>9s} {'lat s':>7s} {'turns':>6s} "
             f"{'pref':>6s} {'reward':>7s}"]
    for r in rows:
        lines.append(f"{r.policy:18s} {r.split:14s} {r.n:5d} {100 * r.accuracy:5.1f}% {r.cost_usd:9.5f} "
                     f"{r.latency_s:7.1f} {r.turns:6.2f} {r.preference_score:6.3f} {r.reward:7.4f}")
    return "\n".join(lines)


def format_checks(c: dict) -> str:
    L = []
    f = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    if "blind" in c:
        x = c["blind"]
        L.append(f"[{f(x['pass'])}] best text-blind ({x['policy']}) reward {x['blind_reward']:.4f} = "
                 f"{100 * x['of_oracle']:.1f}% of oracle {x['oracle_reward']:.4f} (<= 80%), "
                 f"{100 * x['below_router']:.1f}% below rule_based {x['router_reward']:.4f} (>= 10%)")
        x = c["price_blind"]
        L.append(f"[{f(x['pass'])}] price_blind loses {100 * x['loss_test']:.1f}% of rule_based's reward on test "
                 f"(>= 10%)" + (f", {100 * x['loss_unseen_prices']:.1f}% on unseen_prices (more)"
                                if "loss_unseen_prices" in x else ""))
        x = c["pref_blind"]
        L.append(f"[{f(x['pass'])}] pref_blind loses {100 * x['loss']:.1f}% of rule_based's preference score (>= 10%)")
        x = c["closed_loop"]
        L.append(f"[{f(x['pass'])}] closed loop - open loop = {x['acc_gap_points']:.1f} accuracy points (>= 5) at "
                 f"${x['cost_closed']:.5f} vs ${x['cost_open']:.5f} (no higher)")
        x = c["oracle_turns"]
        L.append(f"[{f(x['pass'])}] oracle takes {x['turns']:.2f} turns on average (>= 2)")
        x = c["prices_change_choice"]
        L.append(f"[{f(x['pass'])}] episode prices change the cheapest adequate model in {100 * x['fraction']:.1f}% "
                 "of episodes (>= 30%)")
        x = c["hidden_share"]
        L.append(f"[{f(x['pass'])}] best model's success logit variance: {100 * x['visible']:.1f}% visible cues, "
                 f"{100 * x['hidden']:.1f}% hidden difficulty (hidden >= 25%)")
        x = c["phrasings"]
        L.append(f"[{f(x['pass'])}] {x['distinct']} distinct preference instructions (>= 50)")
    return "\n".join(L)
