"""The QA planner and its beliefs: what the scripted QA policies (envs.qa_policies) think and decide.

A *belief* holds per menu slot a success logit, a slope, $ and seconds per call (read from the prompt's
text by ``text_belief``, or from the hidden state by ``oracle_belief``), and a weight over the hidden
difficulty that ``update_belief`` moves with each observation. ``Planner`` scores every short call sequence
(up to MAX_PREP preparation calls, then an answer) by its expected preference score
(``preferences.preference_score``'s per-episode term) under a belief.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np

from orchestra_jax.envs.pool import SIZES, TOKENS_OUT, STRONG_BONUS, WEAK_PENALTY, size_index
from orchestra_jax.envs.preferences import ScoreScales
from orchestra_jax.envs.qa_model import answer_logit, base_logit, difficulty
from orchestra_jax.envs.qa_read import read_domain, read_hops, read_preference, read_steps

SPEED_TPS = {"fast": 170.0, "medium speed": 100.0, "slow": 60.0}
MAX_PREP = 3
EXPECTIMAX_DEPTH = 1    # adaptive look-ahead of the closed-loop policies (then a fixed continuation)
BUDGET_MARGIN = 0.8     # token counts vary: keep the mean cost of a plan under 80% of the budget
MAX_MODELS = 4          # preparation models kept per plan (Pareto front on success, cost, preference)


@dataclasses.dataclass
class Belief:
    """What a policy assumes about this episode."""

    domain: str
    hops: int
    base: list[float]           # per slot: success logit before context
    slope: list[float]          # per slot: logit drop per unit of hidden difficulty
    price_in: list[float]
    price_out: list[float]
    verbosity: list[float]
    latency_base: list[float]
    tps: list[float]
    pref: tuple[float, ...]     # [slots..., outcome, cost, latency]
    budget_usd: float = math.inf   # plans whose mean cost exceeds BUDGET_MARGIN x this are worth 0
    h_pts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1))   # hidden difficulty grid
    h_w: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(1))      # its belief weights

    cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def p(self, j: int, extra: float) -> float:
        """P(success) of a call with logit base_j - slope_j * h + extra, averaged over the belief on h."""
        key = (j, extra)
        v = self.cache.get(key)
        if v is None:
            x = self.base[j] - self.slope[j] * self.h_pts + extra
            v = self.cache[key] = float(np.dot(self.h_w, 1.0 / (1.0 + np.exp(-x))))
        return v

    def p_h(self, j: int, extra: float) -> np.ndarray:
        x = self.base[j] - self.slope[j] * self.h_pts + extra
        return 1.0 / (1.0 + np.exp(-x))


def hidden_prior(std: float, n: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """A grid over the hidden difficulty ~ N(0, std) truncated at 2.5 std, and its weights."""
    z = np.linspace(-2.5, 2.5, n)
    w = np.exp(-0.5 * z ** 2)
    return z * std, w / w.sum()


class Planner:
    def __init__(self, env):
        self.q, self.scales, self.max_turns = env.qa, ScoreScales(), env.cfg.max_turns
        self.K = env.K

    def cost(self, b: Belief, j: int, tool: str, n_docs: float, n_cand: float) -> tuple[float, float]:
        q = self.q
        tin = q.prompt_tokens + q.doc_tokens * n_docs + q.candidate_tokens * n_cand
        tout = TOKENS_OUT[tool] * b.verbosity[j]
        return (tin * b.price_in[j] + tout * b.price_out[j]) / 1e6, b.latency_base[j] + tout / b.tps[j]

    def utility(self, b: Belief, usd: float, lat: float, calls: Sequence[int]) -> float:
        if usd > BUDGET_MARGIN * b.budget_usd:
            return 0.0
        p = b.pref
        k = self.K
        s = self.scales
        tot = sum(p)
        if tot <= 0:
            return 0.0
        v = p[k] + p[k + 1] * (1 - min(usd / s.cost_usd, 1.0)) + p[k + 2] * (1 - min(lat / s.latency_s, 1.0))
        v += sum(p[j] for j in set(calls))
        return v / tot

    def p_answer(self, b: Belief, j: int, found: int, cand) -> float:
        """cand: None (no candidate) or the probability that the best candidate is right."""
        q = self.q
        if b.domain == "factual" or cand is None:
            return b.p(j, answer_logit(q, 0.0, b.domain, b.hops, found, None, False))
        right = b.p(j, answer_logit(q, 0.0, b.domain, b.hops, found, True, True))
        wrong = b.p(j, answer_logit(q, 0.0, b.domain, b.hops, found, False, True))
        return cand * right + (1 - cand) * wrong

    def p_prep(self, b: Belief, j: int) -> float:
        bonus = self.q.retrieval_bonus if b.domain == "factual" else self.q.reasoning_bonus
        return b.p(j, bonus)

    def plan(self, b: Belief, found: int, cand, calls: Sequence[int], usd: float, lat: float, n_cand: int,
             turns_left: int, allowed: Sequence[int], max_prep: int = MAX_PREP) -> list[tuple[str, int]]:
        """The best fixed sequence [(tool, slot), ..., ("answer", slot)] from the current belief state."""
        tool = "search" if b.domain == "factual" else "enhance_reasoning"
        need = b.hops - found if b.domain == "factual" else MAX_PREP
        n_max = max(0, min(max_prep, turns_left - 1, need))
        preps = self._prep_candidates(b, tool, allowed)
        best, best_v = None, -1.0
        for n in range(n_max + 1):
            for seq in itertools.product(preps, repeat=n):
                for a in allowed:
                    v = self._evaluate(b, seq, a, found, cand, calls, usd, lat, n_cand)
                    if v > best_v + 1e-12:
                        best, best_v = [(tool, j) for j in seq] + [("answer", a)], v
        return best

    def _evaluate(self, b: Belief, seq, a: int, found: int, cand, calls, usd, lat, n_cand) -> float:
        """Expected utility of preparation calls ``seq`` then answering with ``a``, without observations:
        a distribution over (documents found, P(best candidate right)) and a mean-cost estimate."""
        tool = "search" if b.domain == "factual" else "enhance_reasoning"
        crash = self.q.crash_prob if b.domain in ("math", "code") else 0.0
        dist = {(found, cand): 1.0}
        u, l, nd, nc = usd, lat, found, n_cand
        for j in seq:
            c, t = self.cost(b, j, tool, nd, nc)
            u, l = u + c, l + t
            p = self.p_prep(b, j)
            new: dict = {}
            for (f, cd), w in dist.items():
                if tool == "search":
                    new[(f + 1, cd)] = new.get((f + 1, cd), 0.0) + w * p
                    new[(f, cd)] = new.get((f, cd), 0.0) + w * (1 - p)
                else:
                    new[(f, 1.0)] = new.get((f, 1.0), 0.0) + w * p
                    new[(f, cd)] = new.get((f, cd), 0.0) + w * (1 - p) * crash
                    new[(f, 0.0)] = new.get((f, 0.0), 0.0) + w * (1 - p) * (1 - crash)
            dist = new
            if tool == "search":
                nd += p
            else:
                nc += 1
        c, t = self.cost(b, a, "answer", nd, nc)
        pa = sum(w * self.p_answer(b, a, min(f, b.hops) if b.hops else f, cd) for (f, cd), w in dist.items())
        return pa * self.utility(b, u + c, l + t, list(calls) + list(seq) + [a])

    def expectimax(self, b: Belief, found: int, cand, calls: tuple, usd: float, lat: float, n_cand: int,
                   turns_left: int, allowed: Sequence[int], depth: int, oracle: bool) -> tuple[float, tuple]:
        """(value, first action) of the best *adaptive* plan: after each preparation call the policy sees
        its outcome (a found / missed document; a candidate's self-check, or for the oracle whether it is
        right) and chooses again. Leaves continue with the best fixed sequence of at most one more call."""
        best_v, best_a = -1.0, None
        for a in allowed:
            c, t = self.cost(b, a, "answer", found, n_cand)
            v = self.p_answer(b, a, found, cand) * self.utility(b, usd + c, lat + t, calls + (a,))
            if v > best_v:
                best_v, best_a = v, ("answer", a)
        tool = "search" if b.domain == "factual" else "enhance_reasoning"
        if turns_left <= 1 or (tool == "search" and found >= b.hops):
            return best_v, best_a
        for j in self._prep_candidates(b, tool, allowed):
            c, t = self.cost(b, j, tool, found, n_cand)
            branches = self.branches(b, j, tool, found, cand, n_cand, oracle)
            v = 0.0
            for w, bb, f, cd, nc in branches:
                if w <= 1e-9:
                    continue
                if depth > 1:
                    sub, _ = self.expectimax(bb, f, cd, calls + (j,), usd + c, lat + t, nc, turns_left - 1, allowed,
                                             depth - 1, oracle)
                else:
                    plan = self.plan(bb, f, cd, calls + (j,), usd + c, lat + t, nc, min(turns_left - 1, 2), allowed,
                                     max_prep=1)
                    sub = self.sequence_value(bb, plan, f, cd, calls + (j,), usd + c, lat + t, nc)
                v += w * sub
            if v > best_v + 1e-12:
                best_v, best_a = v, (tool, j)
        return best_v, best_a

    def branches(self, b: Belief, j: int, tool: str, found: int, cand, n_cand: int, oracle: bool):
        """Outcomes of one preparation call: [(prob, belief after it, found, cand, n_cand)]. A text belief
        is updated on the hidden-difficulty grid by the outcome (Bayes); the oracle knows the truth."""
        q = self.q
        crash = q.crash_prob if b.domain in ("math", "code") else 0.0
        if tool == "search":
            ps = b.p_h(j, q.retrieval_bonus)
            outs = [(ps, found + 1, cand, n_cand), (1 - ps, found, cand, n_cand)]
            return [(float(np.dot(b.h_w, lik)), _reweight(b, lik), f, cd, nc) for lik, f, cd, nc in outs]
        pr = b.p_h(j, q.reasoning_bonus)
        if oracle:
            p = float(pr[0])
            return [(p, b, found, 1.0, n_cand + 1), ((1 - p) * crash, b, found, cand, n_cand),
                    ((1 - p) * (1 - crash), b, found, 0.0, n_cand + 1)]
        out = [(float(np.dot(b.h_w, (1 - pr) * crash)), _reweight(b, (1 - pr) * crash), found, cand, n_cand)]
        for good in (True, False):
            l_r = pr * (q.check_pass_if_right if good else 1 - q.check_pass_if_right)
            l_w = (1 - pr) * (1 - crash) * (q.check_pass_if_wrong if good else 1 - q.check_pass_if_wrong)
            tot = float(np.dot(b.h_w, l_r + l_w))
            if tot > 0:
                out.append((tot, _reweight(b, l_r + l_w), found, float(np.dot(b.h_w, l_r)) / tot, n_cand + 1))
        return out

    def sequence_value(self, b: Belief, plan, found: int, cand, calls, usd: float, lat: float, n_cand: int) -> float:
        """Expected utility of a fixed sequence ending with an answer (no observation used)."""
        return self._evaluate(b, [j for _, j in plan[:-1]], plan[-1][1], found, cand, calls, usd, lat, n_cand)

    def _prep_candidates(self, b: Belief, tool: str, allowed: Sequence[int]) -> list[int]:
        pts = []
        for j in allowed:
            c, _ = self.cost(b, j, tool, 0, 0)
            pts.append((j, self.p_prep(b, j), c, b.pref[j]))
        front = [x for x in pts if not any(y[1] >= x[1] and y[2] <= x[2] and y[3] >= x[3] and y != x and
                                           (y[1], y[2], y[3]) != (x[1], x[2], x[3]) for y in pts)]
        front.sort(key=lambda x: -x[1])
        return [x[0] for x in front[:MAX_MODELS]]


# ---------------------------------------------------------------- beliefs


def text_belief(env, r, price_blind: bool = False, pref_blind: bool = False) -> Belief:
    q = env.qa
    domain = read_domain(r.question)
    steps = read_steps(r.question, domain)
    d_vis = difficulty(q, steps, 0.0)
    base, slope, pin, pout, lb, tps = [], [], [], [], [], []
    for d in r.described:
        s = SIZES[size_index(d.size)]
        skill = s[1] + STRONG_BONUS * (domain in d.strong) - WEAK_PENALTY * (domain in d.weak)
        base.append(skill - s[2] * d_vis)
        slope.append(s[2])
        if price_blind:  # what the size class costs at list price
            pin.append(s[3] * (0.6 if d.local else 1.0) / 5.5)
            pout.append(s[3] * (0.6 if d.local else 1.0))
        else:
            pin.append(d.price_in)
            pout.append(d.price_out)
        lb.append(s[5] * (0.6 if d.local else 1.0))
        tps.append(SPEED_TPS[d.speed])
    k = len(r.aliases)
    pref = (0.0,) * k + (0.85, 0.4, 0.4) if pref_blind else read_preference(r)
    h_pts, h_w = hidden_prior(q.hidden_difficulty_std)
    return Belief(domain, read_hops(r.question) if domain == "factual" else 0, base, slope, pin, pout,
                  [1.0] * k, lb, tps, pref, min(r.budget_usd or env.cfg.max_usd, env.cfg.max_usd), h_pts, h_w)


def oracle_belief(env, task) -> Belief:
    q = env.qa
    d = difficulty(q, task.steps, task.hidden_difficulty)
    ps = [env.pool[j] for j in task.profiles]
    return Belief(task.domain, task.hops, [base_logit(p, task.domain, d) for p in ps], [0.0] * len(ps),
                  [p.price_in * s for p, s in zip(ps, task.price_scale)],
                  [p.price_out * s for p, s in zip(ps, task.price_scale)], [p.verbosity for p in ps],
                  [p.latency_base_s * math.exp(p.latency_sigma ** 2 / 2) for p in ps],
                  [p.tokens_per_s for p in ps], tuple(task.preference), task.max_usd or env.cfg.max_usd)


# ---------------------------------------------------------------- policies


def _reweight(b: Belief, lik: np.ndarray) -> Belief:
    w = b.h_w * lik
    tot = w.sum()
    return b if tot <= 0 or len(w) == 1 else dataclasses.replace(b, h_w=w / tot, cache={})


def update_belief(b: Belief, events, q) -> tuple[Belief, float | None]:
    """Bayes on the hidden-difficulty grid from each observed outcome; also P(the last candidate is right)
    given its self-check, under the belief just before it."""
    w = b.h_w.copy()
    crash = q.crash_prob if b.domain in ("math", "code") else 0.0
    pr_, fr = q.check_pass_if_right, q.check_pass_if_wrong
    q_last = None
    for tool, j, outcome, _ in events:
        if tool == "search" and outcome in ("found", "missed"):
            ps = b.p_h(j, q.retrieval_bonus)
            lik = ps if outcome == "found" else 1 - ps
        elif tool == "enhance_reasoning" and outcome != "nothing":
            pr = b.p_h(j, q.reasoning_bonus)
            if outcome == "crashed":
                lik = (1 - pr) * crash
            else:
                good = outcome in ("passed", "high")
                l_r = pr * (pr_ if good else 1 - pr_)
                l_w = (1 - pr) * (1 - crash) * (fr if good else 1 - fr)
                lik = l_r + l_w
                q_last = float(np.dot(w, l_r) / max(np.dot(w, lik), 1e-12))
        else:
            continue
        w = w * lik
        w = w / max(w.sum(), 1e-300)
    return dataclasses.replace(b, h_w=w, cache={}), q_last
