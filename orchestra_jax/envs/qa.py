"""QA setting: tools search(model), enhance_reasoning(model), answer(model) over a per-episode model menu.

Each episode offers ``qa.menu_size`` models drawn from a pool of synthetic profiles (``envs.pool``) under
fresh aliases, at prices scaled per episode (``envs.menu``); the user message lists them with a
description generated from the profile, then the problem (``envs.qa_problems``: domain and difficulty show
through the text), then the stated preference. With ``base = skill_m[domain] - slope_m * D`` and
``D = difficulty_step * (steps - 1) + hidden``:
- ``search``: on a factual task with documents still needed, finds the next hop's document with
  probability sigmoid(base + retrieval_bonus), else returns a look-alike document (a visible miss);
  elsewhere it finds nothing useful.
- ``enhance_reasoning``: on math / code / science the model works the problem and reports a candidate,
  right with probability sigmoid(base + reasoning_bonus). A wrong math/code candidate crashes visibly
  with ``crash_prob``; otherwise the observation carries a self-check that passes with
  ``check_pass_if_right`` / ``check_pass_if_wrong``: informative, imperfect evidence. Two candidates that
  agree are almost surely right. On factual tasks it adds nothing.
- ``answer``: ends the episode; right with probability sigmoid(base + context): factual loses
  ``missing_doc_penalty`` x the fraction of hop documents missing (gains ``doc_bonus`` with all of them);
  math/code/science gain ``candidate_bonus`` when the best candidate (an agreed value, else the last one)
  is right, lose ``wrong_candidate_penalty`` when it is wrong; math/code lose ``no_candidate_penalty``
  without any candidate.
Costs: tokens x the episode's $/1M prices; latency base + tokens / speed with a log-normal tail.

Features (F = menu_size + 3): ``calls:slot<j>`` counts the calls to the j-th model of the episode's menu
(in the order listed), then outcome, cost $, latency s. Preferences weight those slots (``preferences``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

import numpy as np

from orchestra_jax.envs import preferences as prefs
from orchestra_jax.envs.base import Env, EpisodeResults, StepOutput, episode_rng
from orchestra_jax.envs.budget import Budget, Ledger, orchestrator_charge
from orchestra_jax.envs.config import EnvConfig
from orchestra_jax.envs.menu import alias_names, budget_text, log_uniform, pick_subset, sample_price_scales
from orchestra_jax.envs.pool import DOMAINS, Profile, describe, describe_facts, fact_separator, make_pool, size_index
from orchestra_jax.envs.qa_model import (QATask, answer_logit, base_logit, best_candidate, difficulty,  # noqa: F401
                                         wrong_value)
from orchestra_jax.envs.qa_problems import generate
from orchestra_jax.envs.tools import load_roster, sigmoid

SPLITS = ("train", "val", "test", "unseen_tools", "unseen_prices")
TOOLS = ("search", "enhance_reasoning", "answer")
TOOL_PURPOSE = {
    "search": "Search documents.",
    "enhance_reasoning": "Work the problem.",
    "answer": "Final answer; ends the task.",
}
SYSTEM_PROMPT = "Route the task: one tool call per turn; answer ends it."
HIDDEN_CLIP = 2.5          # hidden difficulty is truncated at +-2.5 std
FAIR_CHANCE = 0.3         # every task has a route with at least this chance (``route_chance``)
MAX_REDRAWS = 50
STRONG_SIZE = 4            # every menu has a model of size index >= 4 (70B or frontier)


class QAEnv(Env):
    """Batched QA environment; see the module docstring for the simulation and ``base.py`` for the API."""

    setting = "qa"
    splits = SPLITS

    def __init__(self, cfg: EnvConfig):
        self.cfg, self.qa = cfg, cfg.qa
        q = self.qa
        unknown = sorted(set(q.domains) - set(DOMAINS))
        if unknown:
            raise ValueError(f"env.qa.domains: no problem generator for {unknown}; have {list(DOMAINS)}")
        self.pool: tuple[Profile, ...] = make_pool(q.pool_seed)
        self.train_pool = tuple(i for i, p in enumerate(self.pool) if not p.heldout)
        self.heldout_pool = tuple(i for i, p in enumerate(self.pool) if p.heldout)
        if q.menu_size > len(self.train_pool):
            raise ValueError(f"env.qa.menu_size {q.menu_size} > {len(self.train_pool)} training profiles")
        self.K = q.menu_size
        self.tool_aliases = tuple(f"slot{j}" for j in range(self.K))
        self.budget = Budget(cfg.max_turns, cfg.max_tokens, cfg.max_usd)
        self.orchestrator = load_roster(cfg.roster_path).orchestrator_model
        rng = np.random.default_rng(np.random.SeedSequence([q.pool_seed, 7]))
        self.fixed_menu = self._menu(rng, "train")          # used when randomize_tools is off
        self.fixed_aliases = alias_names(rng, self.K)
        self._seen: dict[str, QATask] = {}                  # tasks of recent resets, for the oracle

    # ------------------------------------------------------------ task sampling

    def _menu(self, rng: np.random.Generator, split: str) -> tuple[int, ...]:
        if split == "unseen_tools":  # about half the menu from held-out skill mixes, at least one
            n_held = max(1, self.K // 2)
            held = [self.heldout_pool[j] for j in pick_subset(rng, len(self.heldout_pool), min(n_held, len(self.heldout_pool)))]
            rest = [self.train_pool[j] for j in pick_subset(rng, len(self.train_pool), self.K - len(held))]
            menu = held + rest
        else:
            menu = [self.train_pool[j] for j in pick_subset(rng, len(self.train_pool), self.K)]
        if not any(size_index(self.pool[i].size) >= STRONG_SIZE for i in menu):
            strong = [i for i in (self.heldout_pool if split == "unseen_tools" else self.train_pool)
                      if size_index(self.pool[i].size) >= STRONG_SIZE and i not in menu]
            menu[int(rng.integers(len(menu)))] = strong[int(rng.integers(len(strong)))]
        order = rng.permutation(len(menu))
        return tuple(int(menu[j]) for j in order)

    def sample_tasks(self, seed: int, n: int, split: str = "train") -> list[QATask]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; QA splits are {SPLITS}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        sid = SPLITS.index(split)
        return [self._sample_task(seed, split, i, np.random.default_rng(np.random.SeedSequence([seed, 1000 + sid, i])))
                for i in range(n)]

    def _sample_task(self, seed: int, split: str, i: int, rng: np.random.Generator) -> QATask:
        q, cfg = self.qa, self.cfg
        dw = np.asarray(q.domain_weights, np.float64)
        sw = np.asarray(q.step_weights, np.float64)
        domain = q.domains[int(rng.choice(len(dw), p=dw / dw.sum()))]
        steps = 1 + int(rng.choice(4, p=sw / sw.sum()))
        prob = generate(rng, domain, steps, q.filler_prob)
        # every task keeps a route with a fair chance: redraw the hidden difficulty and the menu otherwise
        for _ in range(MAX_REDRAWS):
            hidden = float(round(np.clip(rng.normal(), -HIDDEN_CLIP, HIDDEN_CLIP) * q.hidden_difficulty_std, 4))
            if cfg.randomize_tools or split == "unseen_tools":
                profiles = self._menu(rng, split)
            else:
                profiles = self.fixed_menu
            if self.route_chance(domain, steps, hidden, prob.hops, profiles) >= FAIR_CHANCE:
                break
        else:
            hidden = min(hidden, 0.0)
        aliases = alias_names(rng, self.K) if (cfg.randomize_tools or split == "unseen_tools") else self.fixed_aliases
        if q.alias_style == "slot":  # drawn above all the same, so both styles see the same tasks
            aliases = tuple(f"model-{j + 1}" for j in range(self.K))
        scales = sample_price_scales(rng, self.K, split, cfg.price_scale_train, cfg.price_scale_unseen,
                                     cfg.randomize_prices)
        max_usd = 0.0
        if q.task_budget_usd:
            floor = 1.2 * self.fair_route_cost(domain, steps, hidden, prob.hops, profiles, scales)
            max_usd = float(round(min(max(log_uniform(rng, *q.task_budget_usd), floor), cfg.max_usd), 4))
        if cfg.preference_mode == "random":
            sp = prefs.sample_stated_preference(rng, aliases, [self.pool[j].local for j in profiles], q.tool_prob)
            preference, ptext = sp.vector, sp.text
        else:
            preference, ptext = prefs.fixed_preference(self.K, cfg.pref_outcome, cfg.pref_cost, cfg.pref_latency), ""
        return QATask(task_id=f"qa-{split}-{seed}-{i}", split=split, domain=domain, steps=steps,
                      hidden_difficulty=hidden, question=prob.question, answer=prob.answer, docs=prob.docs,
                      hops=prob.hops, profiles=profiles, aliases=aliases, price_scale=scales,
                      preference=tuple(preference), preference_text=ptext, max_usd=max_usd)

    def route_chance(self, domain: str, steps: int, hidden: float, hops: int, profiles: Sequence[int]) -> float:
        """P(success) of the best route using one preparation model and one answer model within the turn
        budget, with the hidden difficulty known (evidence ignored): the generator's fairness floor."""
        q, n = self.qa, max(0, self.cfg.max_turns - 1)
        d = difficulty(q, steps, hidden)
        bases = [base_logit(self.pool[j], domain, d) for j in profiles]
        pa = max(sigmoid(answer_logit(q, b, domain, hops, hops, True, True)) for b in bases)
        if domain == "factual":
            ps = max(sigmoid(b + q.retrieval_bonus) for b in bases)
            prep = sum(math.comb(n, m) * ps ** m * (1 - ps) ** (n - m) for m in range(hops, n + 1))
        else:
            prep = 1 - (1 - max(sigmoid(b + q.reasoning_bonus) for b in bases)) ** n
        return prep * pa

    def fair_route_cost(self, domain: str, steps: int, hidden: float, hops: int, profiles: Sequence[int],
                        scales: Sequence[float]) -> float:
        """Mean $ of the cheapest route with a fair chance: as many preparation calls as the turn budget
        allows (hops for factual) with the cheapest model whose route chance is >= FAIR_CHANCE, then an
        answer with the cheapest adequate answer model."""
        q = self.qa
        n = hops if domain == "factual" else max(0, self.cfg.max_turns - 1)
        tool = "search" if domain == "factual" else "enhance_reasoning"

        def call(j, s, t, k):
            p = self.pool[j]
            tin = q.prompt_tokens + (q.doc_tokens if domain == "factual" else q.candidate_tokens) * k
            return s * (tin * p.price_in + p.mean_tokens_out(t) * p.price_out) / 1e6

        best = math.inf
        for j, sj in zip(profiles, scales):
            for a, sa in zip(profiles, scales):
                if self.route_chance(domain, steps, hidden, hops, [j, a]) < FAIR_CHANCE:
                    continue
                best = min(best, sum(call(j, sj, tool, k) for k in range(n)) + call(a, sa, "answer", n))
        if not math.isfinite(best):  # no pair alone is fair: the whole menu's costliest route
            best = max(sum(call(j, s, tool, k) for k in range(n)) + call(j, s, "answer", n)
                       for j, s in zip(profiles, scales))
        return best

    def task_from_dict(self, d: dict[str, Any]) -> QATask:
        t = QATask.from_dict(d)
        if len(t.preference) != self.num_features:
            raise ValueError(f"task {t.task_id!r}: preference has {len(t.preference)} entries, env expects "
                             f"{self.num_features} (menu slots + 3)")
        if not (len(t.profiles) == len(t.aliases) == len(t.price_scale) == self.K):
            raise ValueError(f"task {t.task_id!r}: menu must have {self.K} profiles, aliases and prices")
        if any(not 0 <= j < len(self.pool) for j in t.profiles):
            raise ValueError(f"task {t.task_id!r}: profile index out of the pool (0..{len(self.pool) - 1})")
        if t.domain not in self.qa.domains or not 1 <= t.steps <= 4:
            raise ValueError(f"task {t.task_id!r}: domain {t.domain!r} / steps {t.steps} not in this env")
        return t

    # ------------------------------------------------------------ prompts

    def menu_lines(self, task: QATask) -> list[str]:
        style = self.cfg.description_style
        menu = list(zip(task.aliases, task.profiles, task.price_scale))
        if self.qa.menu_layout == "name_after_facts":
            sep = fact_separator(style)
            return [f"{a}: " + sep.join(f"{fact} {a}" for fact in describe_facts(self.pool[j], s, style))
                    for a, j, s in menu]
        lines = [(a, describe(self.pool[j], s, style)) for a, j, s in menu]
        if self.qa.menu_layout == "name_last":
            return [f"{d} = {a}" for a, d in lines]
        return [f"{a}: {d}" for a, d in lines]

    def prompt(self, task: QATask) -> dict[str, Any]:
        user = "Models:\n" + "\n".join(self.menu_lines(task)) + f"\nTask: {task.question}"
        if task.preference_text:
            user += f"\n{task.preference_text}"
        if task.max_usd > 0:
            user += f"\nBudget: ${task.max_usd:g}."
        messages = ([{"role": "system", "content": SYSTEM_PROMPT}] if self.cfg.system_prompt else []) + [
            {"role": "user", "content": user}]
        tools = []
        for tool in TOOLS:
            model_prop: dict[str, Any] = {"type": "string"}
            if self.cfg.description_style == "full":
                model_prop["enum"] = list(task.aliases)
            tools.append({"type": "function", "function": {
                "name": tool, "description": TOOL_PURPOSE[tool],
                "parameters": {"type": "object", "properties": {"model": model_prop}, "required": ["model"]}}})
        return {"messages": messages, "tools": tools, "task_id": task.task_id}

    def lookup(self, task_id: str) -> QATask:
        """A task of a recent ``reset`` by id (the oracle reads the hidden state through this)."""
        if task_id not in self._seen:
            raise ValueError(f"task {task_id!r} was not reset in this env")
        return self._seen[task_id]

    # ------------------------------------------------------------ episodes

    def reset(self, tasks: Sequence[QATask], seed: int, episode_ids: Sequence[int] | None = None):
        tasks = list(tasks)
        if episode_ids is None:
            episode_ids = list(range(len(tasks)))
        if len(episode_ids) != len(tasks):
            raise ValueError(f"reset: {len(episode_ids)} episode ids for {len(tasks)} tasks")
        for t in tasks:
            if not isinstance(t, QATask):
                raise ValueError(f"QAEnv.reset expects QATask objects, got {type(t).__name__}")
        if len(self._seen) > 50_000:
            self._seen.clear()
        self._seen.update((t.task_id, t) for t in tasks)
        B = len(tasks)
        state = QAState(tasks=tasks, seed=int(seed), episode_ids=[int(e) for e in episode_ids],
                        ledger=Ledger(B, self.K, self.budget, [t.max_usd or self.budget.max_usd for t in tasks]), found=[0] * B, candidates=[[] for _ in range(B)])
        return state, [self.prompt(t) for t in tasks]

    def step(self, state: "QAState", actions: Sequence[str], policy_tokens_in=None, policy_tokens_out=None):
        from orchestra_jax.text.chat import ToolCallError, parse_tool_call

        B = len(state.tasks)
        if len(actions) != B:
            raise ValueError(f"step: {len(actions)} actions for a batch of {B}")
        for name, arr in (("policy_tokens_in", policy_tokens_in), ("policy_tokens_out", policy_tokens_out)):
            if arr is not None and len(arr) != B:
                raise ValueError(f"step: {name} has {len(arr)} entries for a batch of {B}")
        led, orch = state.ledger, self.orchestrator
        obs = [""] * B
        cost, lat = np.zeros(B, np.float64), np.zeros(B, np.float64)
        tool_index, valid = np.full(B, -1, np.int32), np.zeros(B, bool)
        info: list[dict[str, Any]] = [{} for _ in range(B)]
        for i in range(B):
            if led.done[i]:
                continue
            task = state.tasks[i]
            rng = episode_rng(state.seed, state.episode_ids[i], int(led.turns[i]))
            usd, tok = orchestrator_charge(orch.price_in, orch.price_out, policy_tokens_in, policy_tokens_out, i)
            tout = 0 if policy_tokens_out is None else int(policy_tokens_out[i])
            ok, c, l = led.charge(i, usd, tok, tout / orch.tokens_per_s)
            cost[i] += c
            lat[i] += l
            if not ok:
                obs[i] = budget_text(led.end_reason[i], self.budget, led.max_usd[i])
                led.end_turn(i)
                continue
            call = parse_tool_call(actions[i])
            err = None
            if isinstance(call, ToolCallError):
                err = call.message
            elif call.name not in TOOLS:
                err = f"unknown tool {call.name!r}; tools are {', '.join(TOOLS)}"
            elif set(call.arguments) != {"model"} or not isinstance(call.arguments["model"], str):
                err = f"bad arguments for {call.name}: expected {{\"model\": <alias>}}, got {json.dumps(call.arguments)[:80]}"
            elif call.arguments["model"] not in task.aliases:
                err = f"model {call.arguments['model'][:40]!r} is not on the menu; choose one of {', '.join(task.aliases)}"
            if err is not None:
                obs[i] = f"Error: {err}"
                led.n_invalid[i] += 1
                info[i] = {"error": err}
                led.end_turn(i)
                continue
            slot = task.aliases.index(call.arguments["model"])
            valid[i], tool_index[i] = True, slot
            text, c, l, extra = self._run_tool(state, i, call.name, slot, rng)
            obs[i] = text
            cost[i] += c
            lat[i] += l
            info[i] = {"tool": call.name, "alias": task.aliases[slot], **extra}
            led.end_turn(i)
            if led.done[i] and led.end_reason[i] == "max_turns":
                obs[i] += "\n" + budget_text("max_turns", self.budget)
        return state, StepOutput(observations=obs, done=led.done.copy(), cost_usd=cost, latency_s=lat,
                                 tool_index=tool_index, valid=valid, info=info)

    def _run_tool(self, state: "QAState", i: int, tool: str, slot: int, rng: np.random.Generator):
        """Simulates one call; returns (observation, $ charged, s charged, info)."""
        q, led, task = self.qa, state.ledger, state.tasks[i]
        p, alias = self.pool[task.profiles[slot]], task.aliases[slot]
        tokens_in = q.prompt_tokens + q.doc_tokens * state.found[i] + q.candidate_tokens * len(state.candidates[i])
        s = 0.3
        tokens_out = max(1, int(round(p.mean_tokens_out(tool) * math.exp(s * rng.standard_normal() - 0.5 * s * s))))
        usd = task.price_scale[slot] * (tokens_in * p.price_in + tokens_out * p.price_out) / 1e6
        latency = (p.latency_base_s + tokens_out / p.tokens_per_s) * math.exp(p.latency_sigma * rng.standard_normal())
        u, u2, u3 = rng.random(), rng.random(), rng.random()   # fixed stream layout
        ok, usd_c, lat_c = led.charge(i, usd, tokens_in + tokens_out, latency)
        led.record_call(i, slot)
        log = {"turn": int(led.turns[i]), "tool": tool, "alias": alias, "slot": slot, "profile": p.name,
               "valid": True, "price": task.price_scale[slot] * p.price_out,  # $ / 1M out as shown
               "cost_usd": usd_c, "latency_s": lat_c, "outcome": "budget", "correct": None}
        extra = {"profile": p.name, "tokens_in": tokens_in, "tokens_out": tokens_out}
        if not ok:
            led.log_call(i, log)
            return budget_text(led.end_reason[i], self.budget, led.max_usd[i]), usd_c, lat_c, extra
        base = base_logit(p, task.domain, difficulty(q, task.steps, task.hidden_difficulty))
        if tool == "search":
            if task.domain == "factual" and state.found[i] < task.hops:
                hop = state.found[i]
                if u < sigmoid(base + q.retrieval_bonus):
                    state.found[i] += 1
                    ent, text = task.docs[hop]
                    log.update(outcome="found", correct=True)
                else:
                    ent, text = task.docs[task.hops + hop]
                    log.update(outcome="missed", correct=False)
                obs = f"{alias}: [{ent}] {text}"
            else:
                obs = f"{alias}: nothing relevant found."
                log.update(outcome="nothing")
        elif tool == "enhance_reasoning":
            if task.domain == "factual":
                obs = f"{alias}: nothing to compute; documents are needed."
                log.update(outcome="nothing")
            else:
                right = u < sigmoid(base + q.reasoning_bonus)
                if not right and task.domain != "science" and u2 < q.crash_prob:
                    obs = f"{alias}: code crashed ({('IndexError', 'ValueError', 'ZeroDivisionError')[int(u3 * 3)]})."
                    log.update(outcome="crashed", correct=False)
                else:
                    value = task.answer if right else wrong_value(task.answer, rng)
                    passed = u3 < (q.check_pass_if_right if right else q.check_pass_if_wrong)
                    state.candidates[i].append(value)
                    if task.domain == "science":
                        obs = f"{alias}: notes point to {value}, confidence {'high' if passed else 'low'}."
                    else:
                        obs = f"{alias}: result {value}, check {'passed' if passed else 'failed'}."
                    log.update(outcome="passed" if passed else "failed", correct=right)
        else:  # answer: ends the episode
            best = best_candidate(state.candidates[i])
            cand = None if best is None else best == task.answer
            logit = answer_logit(q, base, task.domain, task.hops, state.found[i], cand, bool(state.candidates[i]))
            pc = sigmoid(logit)
            solved = u < pc
            led.finish(i, solved=solved, reason="answer")
            given = task.answer if solved else (wrong_value(task.answer, rng) if task.domain != "factual" else "unknown")
            obs = f"{alias} answered: {given}"
            log.update(outcome="answered", correct=bool(solved), p_correct=pc)
            extra.update(p_correct=pc, solved=solved)
        led.log_call(i, log)
        return obs, usd_c, lat_c, extra

    def results(self, state: "QAState") -> EpisodeResults:
        pref = np.array([t.preference for t in state.tasks], np.float32).reshape(len(state.tasks), self.num_features)
        return state.ledger.results(self.tool_aliases, pref, [t.task_id for t in state.tasks],
                                    [t.domain for t in state.tasks])


@dataclasses.dataclass
class QAState:
    """Host-side state of a batch of QA episodes (mutated in place by ``QAEnv.step``)."""

    tasks: list[QATask]
    seed: int
    episode_ids: list[int]
    ledger: Ledger
    found: list[int]                 # hop documents retrieved so far (in order)
    candidates: list[list[str]]      # candidate values reported by enhance_reasoning (crashes excluded)
