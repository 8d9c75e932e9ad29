"""QA setting (HLE / FRAMES-like): tools search(model), enhance_reasoning(model), answer(model).

The orchestrator picks (tool, model alias) each turn; the simulated model does the work:
- ``search``: the model writes a query over the task's document pool; it finds the next needed relevant
  document with probability sigmoid(skill - slope*level - hidden + retrieval_bonus), else a distractor.
- ``enhance_reasoning``: the model writes a program; it is correct with probability
  sigmoid(skill - slope*level - hidden), else a mutated one; the code sandbox runs it and the output
  becomes context ("code result").
- ``answer``: the model answers and the episode ends; correct with probability sigmoid(logit) where
  logit = skill - slope*level - hidden + context terms: search domains (factual) lose
  ``missing_doc_penalty`` x fraction of needed documents missing (gain ``doc_bonus`` when complete);
  code domains (math, code) gain ``code_bonus`` with a correct code result, lose ``wrong_code_penalty``
  with a wrong one.
The problem text carries the cues the policy can read: ``[domain, level] question``. The hidden
difficulty is a per-task logit offset. Every call is charged tokens x the model's $/1M prices (times the
task's price multiplier) and takes base + tokens/speed seconds with a log-normal tail.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Sequence

import numpy as np

from orchestra_jax.envs import preferences as prefs
from orchestra_jax.envs.base import Env, EpisodeResults, StepOutput, episode_rng
from orchestra_jax.envs.budget import Budget, Ledger, orchestrator_charge
from orchestra_jax.envs.config import EnvConfig
from orchestra_jax.envs.sandbox import run_program
from orchestra_jax.envs.tools import (AliasSpec, Roster, call_cost_usd, load_roster, price_text,
                                      sample_latency_s, sample_tokens_out, sigmoid, success_logit)

SPLITS = ("train", "val", "test", "unseen_tools", "unseen_prices")
TOOLS = ("search", "enhance_reasoning", "answer")
TOOL_PURPOSE = {
    "search": "Search documents with a model.",
    "enhance_reasoning": "A model writes and runs code.",
    "answer": "A model answers; ends the task.",
}
SYSTEM_PROMPT = "Route the task: call one tool per turn, end with answer."


# ---------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True)
class QATask:
    """One QA task. ``level``/``hidden_difficulty``/``answer``/``program``/relevance are hidden from the
    policy except through the question's cue words and tool observations."""

    task_id: str
    split: str
    domain: str
    level: int
    hidden_difficulty: float
    question: str
    answer: str
    program: str                         # correct program for code domains ("" otherwise)
    docs: tuple[tuple[str, str], ...]    # (title, text) pool: relevant documents and distractors
    relevant: tuple[int, ...]            # indices into docs, in hop order (empty if no retrieval needed)
    available: tuple[str, ...]           # aliases offered in this episode
    price_scale: tuple[tuple[str, float], ...]  # (model, multiplier) of this episode's prices
    preference: tuple[float, ...]
    preference_text: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["docs"] = [list(x) for x in self.docs]
        d["relevant"] = list(self.relevant)
        d["available"] = list(self.available)
        d["price_scale"] = {m: s for m, s in self.price_scale}
        d["preference"] = list(self.preference)
        d["setting"] = "qa"
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "QATask":
        if not isinstance(d, dict):
            raise ValueError(f"QA task record must be a dict, got {type(d).__name__}")
        d = dict(d)
        if d.pop("setting", "qa") != "qa":
            raise ValueError(f"task {d.get('task_id')!r} is not a QA task")
        names = {f.name for f in dataclasses.fields(QATask)}
        missing = sorted(names - set(d) - {"preference_text"})
        if missing:
            raise ValueError(f"QA task record {d.get('task_id')!r} is missing field(s) {missing}")
        extra = sorted(set(d) - names)
        if extra:
            raise ValueError(f"QA task record {d.get('task_id')!r} has unknown field(s) {extra}")
        try:
            return QATask(
                task_id=str(d["task_id"]), split=str(d["split"]), domain=str(d["domain"]), level=int(d["level"]),
                hidden_difficulty=float(d["hidden_difficulty"]), question=str(d["question"]),
                answer=str(d["answer"]), program=str(d["program"]),
                docs=tuple((str(t), str(x)) for t, x in d["docs"]),
                relevant=tuple(int(i) for i in d["relevant"]), available=tuple(str(a) for a in d["available"]),
                price_scale=tuple((str(m), float(s)) for m, s in dict(d["price_scale"]).items()),
                preference=tuple(float(x) for x in d["preference"]),
                preference_text=str(d.get("preference_text", "")))
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"QA task record {d.get('task_id')!r}: bad field value ({e})") from None

    def scale_of(self, model: str) -> float:
        for m, s in self.price_scale:
            if m == model:
                return s
        return 1.0


_SYL = ("ka", "lo", "mi", "ra", "ven", "tor", "sel", "dun", "ar", "bel", "cor", "fin", "gal", "hor", "is",
        "jun", "lem", "nor", "pas", "quin", "ros", "tal", "ul", "vor", "wen", "yar", "zel")
_CITIES = ("Aldmoor", "Brenna", "Castor", "Dunfall", "Elmsby", "Fairholt", "Gorran", "Hestia", "Ivory Bay",
           "Jarrow", "Kelden", "Lysport")
_SCI_TOPICS = ("enzyme kinetics", "orbital mechanics", "plate tectonics", "gene regulation", "thermodynamics",
               "optics", "quantum spin", "ecology", "organic synthesis", "fluid dynamics")


def _word(rng: np.random.Generator, n: int = 2) -> str:
    return "".join(_SYL[int(i)] for i in rng.integers(len(_SYL), size=n)).capitalize()


def _math_problem(rng, level: int) -> tuple[str, str]:
    if level == 0:
        a, b, c = (int(x) for x in rng.integers(2, 60, size=3))
        return f"What is {a} * {b} + {c}?", f"{a} * {b} + {c}"
    if level == 1:
        n = int(rng.integers(5, 40))
        return (f"What is the sum of i*i for i from 1 to {n}?",
                f"s = 0\nfor i in range(1, {n + 1}):\n    s += i * i\ns")
    n, p, q = int(rng.integers(60, 300)), int(rng.integers(3, 8)), int(rng.integers(9, 14))
    return (f"How many integers below {n} are divisible by {p} or {q}?",
            f"c = 0\nfor i in range(1, {n}):\n    if i % {p} == 0 or i % {q} == 0:\n        c += 1\nc")


def _code_problem(rng, level: int) -> tuple[str, str]:
    if level == 0:
        xs = [int(x) for x in rng.integers(1, 99, size=5)]
        return f"Write code returning the largest of {xs}.", f"max({xs})"
    if level == 1:
        n, k = int(rng.integers(20, 120)), int(rng.integers(3, 9))
        return (f"Write code counting the numbers below {n} divisible by {k}.",
                f"c = 0\nfor i in range({n}):\n    if i % {k} == 0:\n        c += 1\nc")
    n, m = int(rng.integers(20, 80)), int(rng.integers(50, 1000))
    return (f"Write code for the {n}-th Fibonacci number modulo {m}.",
            f"a, b = 0, 1\nfor i in range({n}):\n    a, b = b, (a + b) % {m}\na")


def _mutate_program(program: str, rng: np.random.Generator) -> str:
    """A plausible wrong program: one integer literal changed by a small amount."""
    nums = [m for m in re.finditer(r"\b\d+\b", program)]
    if not nums:
        return program + " + 1"
    m = nums[int(rng.integers(len(nums)))]
    v = int(m.group()) + int(rng.choice([-2, -1, 1, 2]))
    return program[: m.start()] + str(max(v, 0)) + program[m.end():]


class QAEnv(Env):
    """Batched QA environment. See the module docstring for the simulation and ``base.py`` for the API."""

    setting = "qa"
    splits = SPLITS

    def __init__(self, cfg: EnvConfig, roster: Roster | None = None):
        self.cfg = cfg
        self.qa = cfg.qa
        self.roster = roster or load_roster(cfg.roster_path)
        self.menu: tuple[AliasSpec, ...] = self.roster.menu("qa")
        self.tool_aliases = tuple(a.alias for a in self.menu)
        self._alias = {a.alias: a for a in self.menu}
        self._alias_index = {a.alias: i for i, a in enumerate(self.menu)}
        self.budget = Budget(cfg.max_turns, cfg.max_tokens, cfg.max_usd)
        q = self.qa
        if len(q.domain_weights) != len(q.domains):
            raise ValueError(f"env.qa.domain_weights has {len(q.domain_weights)} entries for {len(q.domains)} domains")
        if not (len(q.levels) == len(q.level_weights) == len(q.level_offsets)):
            raise ValueError("env.qa.levels, level_weights and level_offsets must have the same length")
        for name in ("domain_weights", "level_weights"):
            w = getattr(q, name)
            if any(x < 0 for x in w) or sum(w) <= 0:
                raise ValueError(f"env.qa.{name} must be >= 0 with a positive sum, got {w}")
        unknown = sorted(set(q.domains) - {"math", "science", "factual", "code"})
        if unknown:
            raise ValueError(f"env.qa.domains: no problem generator for {unknown}")
        bad = sorted(set(cfg.heldout_aliases) - set(self.tool_aliases))
        if bad:
            raise ValueError(f"env.heldout_aliases: unknown alias(es) {bad}; menu has {list(self.tool_aliases)}")
        for tool in TOOLS:
            if not any(a.tool == tool for a in self.menu):
                raise ValueError(f"roster's qa menu has no alias for tool {tool!r}")

    # ------------------------------------------------------------ task sampling

    def sample_tasks(self, seed: int, n: int, split: str = "train") -> list[QATask]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; QA splits are {SPLITS}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        split_id = SPLITS.index(split)
        return [self._sample_task(seed, split, i, np.random.default_rng(np.random.SeedSequence([seed, 1000 + split_id, i])))
                for i in range(n)]

    def _sample_menu(self, rng, split: str) -> tuple[str, ...]:
        cfg = self.cfg
        aliases = list(self.tool_aliases)
        if split == "unseen_tools":
            pool = aliases
        elif cfg.randomize_tools:
            pool = [a for a in aliases if a not in cfg.heldout_aliases]
        else:
            return tuple(aliases)
        keep = rng.random(len(pool)) < cfg.keep_prob
        chosen = {a for a, k in zip(pool, keep) if k}
        if split == "unseen_tools" and cfg.heldout_aliases:
            chosen.add(cfg.heldout_aliases[int(rng.integers(len(cfg.heldout_aliases)))])
        for tool in TOOLS:  # at least one alias per tool
            of_tool = [a for a in pool if self._alias[a].tool == tool]
            if of_tool and not any(a in chosen for a in of_tool):
                chosen.add(of_tool[int(rng.integers(len(of_tool)))])
        return tuple(a for a in aliases if a in chosen)

    def _sample_prices(self, rng, split: str) -> tuple[tuple[str, float], ...]:
        cfg = self.cfg
        models = sorted({a.model for a in self.menu})
        if split == "unseen_prices":
            lo1, hi1, lo2, hi2 = cfg.price_scale_unseen
            out = []
            for m in models:
                lo, hi = (lo1, hi1) if rng.random() < 0.5 else (lo2, hi2)
                out.append((m, float(round(math.exp(rng.uniform(math.log(lo), math.log(hi))), 3))))
            return tuple(out)
        if not cfg.randomize_prices:
            return tuple((m, 1.0) for m in models)
        lo, hi = cfg.price_scale_train
        return tuple((m, float(round(math.exp(rng.uniform(math.log(lo), math.log(hi))), 3))) for m in models)

    def _sample_task(self, seed: int, split: str, i: int, rng: np.random.Generator) -> QATask:
        q = self.qa
        dw = np.asarray(q.domain_weights, np.float64)
        lw = np.asarray(q.level_weights, np.float64)
        domain = q.domains[int(rng.choice(len(dw), p=dw / dw.sum()))]
        level = int(rng.choice(len(lw), p=lw / lw.sum()))
        hidden = float(round(rng.normal(0.0, q.hidden_difficulty_std), 4))
        program, answer = "", ""
        docs: list[tuple[str, str]] = []
        relevant: list[int] = []
        if domain == "math":
            body, program = _math_problem(rng, level)
        elif domain == "code":
            body, program = _code_problem(rng, level)
        elif domain == "science":
            topic = _SCI_TOPICS[int(rng.integers(len(_SCI_TOPICS)))]
            body = f"Which option is right about {topic} in the {_word(rng)} case? (A/B/C/D)"
            answer = "ABCD"[int(rng.integers(4))]
        else:  # factual
            org, person, city = _word(rng) + " Corp", _word(rng, 2) + " " + _word(rng, 1), _CITIES[int(rng.integers(len(_CITIES)))]
            year = int(rng.integers(1820, 1990))
            hops = q.expert_hops if level == len(q.levels) - 1 else 1
            if hops >= 2:
                body = f"In which year was the founder of {org} born?"
                docs = [(org, f"{org} was founded by {person}."), (person, f"{person} was born in {year}.")]
                answer = str(year)
            else:
                body = f"In which city is {org} based?"
                docs = [(org, f"{org} is based in {city}.")]
                answer = city
            relevant = list(range(len(docs)))
        if program:
            res = run_program(program)
            if not res.ok:  # generator bug, not user input
                raise RuntimeError(f"task program failed: {res.error}\n{program}")
            answer = res.text()
        for _ in range(q.n_distractors):
            name = _word(rng) + (" Corp" if domain == "factual" else "")
            docs.append((name, f"{name} is unrelated background ({_word(rng)})."))
        question = f"[{domain}, {q.levels[level]}] {body}"
        available = self._sample_menu(rng, split)
        price_scale = self._sample_prices(rng, split)
        if self.cfg.preference_mode == "random":
            preference, ptext = prefs.sample_preference(rng, self.tool_aliases, available)
        else:
            preference = prefs.fixed_preference(len(self.tool_aliases), self.cfg.pref_outcome, self.cfg.pref_cost,
                                                self.cfg.pref_latency)
            ptext = ""
        return QATask(task_id=f"qa-{split}-{seed}-{i}", split=split, domain=domain, level=level,
                      hidden_difficulty=hidden, question=question, answer=answer, program=program,
                      docs=tuple(docs), relevant=tuple(relevant), available=available,
                      price_scale=price_scale, preference=tuple(preference), preference_text=ptext)

    def task_from_dict(self, d: dict[str, Any]) -> QATask:
        t = QATask.from_dict(d)
        if len(t.preference) != self.num_features:
            raise ValueError(f"task {t.task_id!r}: preference has {len(t.preference)} entries, env expects "
                             f"{self.num_features} (aliases + 3)")
        bad = sorted(set(t.available) - set(self.tool_aliases))
        if bad:
            raise ValueError(f"task {t.task_id!r}: unknown alias(es) {bad}")
        if t.domain not in self.qa.domains or not 0 <= t.level < len(self.qa.levels):
            raise ValueError(f"task {t.task_id!r}: domain {t.domain!r} / level {t.level} not in this env")
        return t

    # ------------------------------------------------------------ prompts

    def tool_schemas(self, task: QATask) -> list[dict[str, Any]]:
        """JSON schemas of the three tools with this episode's aliases and prices in the descriptions."""
        full = self.cfg.description_style == "full"
        out = []
        for tool in TOOLS:
            aliases = [a for a in task.available if self._alias[a].tool == tool]
            items = []
            for a in aliases:
                m = self.roster.model(self._alias[a].model)
                s = task.scale_of(m.name)
                if full:
                    typical_s = m.latency_base_s + m.mean_tokens_out(tool) / m.tokens_per_s
                    items.append(f"{a}: {m.display} ({m.tag}), ${price_text(m.price_in * s)} in / "
                                 f"${price_text(m.price_out * s)} out per 1M tokens, ~{typical_s:.0f} s")
                else:
                    items.append(f"{a} {m.tag} ${price_text(m.price_out * s)}")
            desc = TOOL_PURPOSE[tool] + " Models: " + "; ".join(items) + "."
            model_prop: dict[str, Any] = {"type": "string"}
            if full:
                model_prop["enum"] = aliases
            out.append({"type": "function", "function": {
                "name": tool, "description": desc,
                "parameters": {"type": "object", "properties": {"model": model_prop}, "required": ["model"]}}})
        return out

    def prompt(self, task: QATask) -> dict[str, Any]:
        user = task.question + (f"\n{task.preference_text}" if task.preference_text else "")
        messages = ([{"role": "system", "content": SYSTEM_PROMPT}] if self.cfg.system_prompt else []) + [
            {"role": "user", "content": user}]
        return {"messages": messages, "tools": self.tool_schemas(task)}

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
        state = QAState(tasks=tasks, seed=int(seed), episode_ids=[int(e) for e in episode_ids],
                        ledger=Ledger(len(tasks), len(self.tool_aliases), self.budget),
                        found=[[] for _ in tasks], shown=[set() for _ in tasks], code=[None] * len(tasks),
                        n_docs=[0] * len(tasks), n_code=[0] * len(tasks))
        return state, [self.prompt(t) for t in tasks]

    def step(self, state: "QAState", actions: Sequence[str], policy_tokens_in=None, policy_tokens_out=None):
        from orchestra_jax.text.chat import ToolCallError, parse_tool_call

        B = len(state.tasks)
        if len(actions) != B:
            raise ValueError(f"step: {len(actions)} actions for a batch of {B}")
        for name, arr in (("policy_tokens_in", policy_tokens_in), ("policy_tokens_out", policy_tokens_out)):
            if arr is not None and len(arr) != B:
                raise ValueError(f"step: {name} has {len(arr)} entries for a batch of {B}")
        led = state.ledger
        obs = [""] * B
        cost = np.zeros(B, np.float64)
        lat = np.zeros(B, np.float64)
        tool_index = np.full(B, -1, np.int32)
        valid = np.zeros(B, bool)
        info: list[dict[str, Any]] = [{} for _ in range(B)]
        orch = self.roster.orchestrator_model
        for i in range(B):
            if led.done[i]:
                continue
            task = state.tasks[i]
            rng = episode_rng(state.seed, state.episode_ids[i], int(led.turns[i]))
            # the orchestrator's own tokens, at its price
            usd, tok = orchestrator_charge(orch.price_in, orch.price_out, policy_tokens_in, policy_tokens_out, i)
            tout = 0 if policy_tokens_out is None else int(policy_tokens_out[i])
            ok, c, l = led.charge(i, usd, tok, tout / orch.tokens_per_s)
            cost[i] += c
            lat[i] += l
            if not ok:
                obs[i] = self._budget_text(led.end_reason[i])
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
            else:
                alias = call.arguments["model"]
                offered = [a for a in task.available if self._alias[a].tool == call.name]
                if alias not in offered:
                    err = f"model {alias[:40]!r} is not available for {call.name}; choose one of {', '.join(offered)}"
            if err is not None:
                obs[i] = f"Error: {err}"
                led.n_invalid[i] += 1
                info[i] = {"error": err}
                led.end_turn(i)
                continue
            valid[i] = True
            tool_index[i] = self._alias_index[alias]
            text, c, l, extra = self._run_tool(state, i, call.name, alias, rng)
            obs[i] = text
            cost[i] += c
            lat[i] += l
            info[i] = {"tool": call.name, "alias": alias, **extra}
            led.end_turn(i)
            if led.done[i] and led.end_reason[i] == "max_turns":
                obs[i] += f"\n{self._budget_text('max_turns')}"
        return state, StepOutput(observations=obs, done=led.done.copy(), cost_usd=cost, latency_s=lat,
                                 tool_index=tool_index, valid=valid, info=info)

    def _budget_text(self, reason: str) -> str:
        what = {"max_usd": f"${self.budget.max_usd:g}", "max_tokens": f"{self.budget.max_tokens} tokens",
                "max_turns": f"{self.budget.max_turns} turns"}[reason]
        return f"Budget exceeded ({what}): episode ended."

    def _run_tool(self, state: "QAState", i: int, tool: str, alias: str, rng: np.random.Generator):
        """Simulates one call; returns (observation, $ charged, s charged, info)."""
        q, led, task = self.qa, state.ledger, state.tasks[i]
        model = self.roster.model(self._alias[alias].model)
        fees = self.roster.basic_fees
        tokens_in = q.prompt_tokens + q.doc_tokens * state.n_docs[i] + q.code_tokens * state.n_code[i]
        tokens_out = sample_tokens_out(model, tool, rng)
        usd = call_cost_usd(model, tokens_in, tokens_out, task.scale_of(model.name))
        lat = sample_latency_s(model, tokens_out, rng)
        if tool == "search":
            usd += fees.search_usd_per_call
            lat += fees.search_latency_s
        elif tool == "enhance_reasoning":
            usd += fees.sandbox_usd_per_s * fees.sandbox_latency_s
            lat += fees.sandbox_latency_s
        u = rng.random()  # the call's success draw (drawn even when unused: fixed stream layout)
        ok, usd_c, lat_c = led.charge(i, usd, tokens_in + tokens_out, lat)
        led.record_call(i, self._alias_index[alias])
        extra = {"model": model.name, "tokens_in": tokens_in, "tokens_out": tokens_out}
        if not ok:
            return self._budget_text(led.end_reason[i]), usd_c, lat_c, extra
        difficulty = q.level_offsets[task.level]
        base = success_logit(model, task.domain, difficulty, task.hidden_difficulty)
        if tool == "search":
            needed = [d for d in task.relevant if d not in state.found[i]]
            if needed and u < sigmoid(base + q.retrieval_bonus):
                doc = needed[0]
                state.found[i].append(doc)
            else:
                pool = [d for d in range(len(task.docs)) if d not in task.relevant]
                fresh = [d for d in pool if d not in state.shown[i]] or pool
                if not fresh:
                    extra["retrieved_relevant"] = False
                    return f"{alias}: no documents found.", usd_c, lat_c, extra
                doc = fresh[int(rng.integers(len(fresh)))]
            state.shown[i].add(doc)
            state.n_docs[i] += 1
            title, text = task.docs[doc]
            extra["retrieved_relevant"] = doc in task.relevant
            return f"{alias}: [{title}] {text}", usd_c, lat_c, extra
        if tool == "enhance_reasoning":
            correct = bool(task.program) and u < sigmoid(base)
            program = task.program if correct else (_mutate_program(task.program, rng) if task.program else "")
            if program:
                result = run_program(program).text()
                state.code[i] = correct
            else:  # nothing to compute: the model writes notes, no code result
                result = "no computation needed"
            state.n_code[i] += 1
            extra["code_correct"] = correct
            shown = f"\n{program}\n" if self.cfg.description_style == "full" and program else " "
            return f"{alias} ran code:{shown}-> {result}", usd_c, lat_c, extra
        # answer: ends the episode
        logit = base
        if task.domain in q.search_domains and task.relevant:
            missing = len([d for d in task.relevant if d not in state.found[i]]) / len(task.relevant)
            logit += q.doc_bonus if missing == 0 else -q.missing_doc_penalty * missing
        if task.domain in q.code_domains and state.code[i] is not None:
            logit += q.code_bonus if state.code[i] else -q.wrong_code_penalty
        p = sigmoid(logit)
        solved = u < p
        led.finish(i, solved=solved, reason="answer")
        extra["p_correct"] = p
        extra["solved"] = solved
        given = task.answer if solved else self._wrong_answer(task, rng)
        return f"{alias} answered: {given}", usd_c, lat_c, extra

    @staticmethod
    def _wrong_answer(task: QATask, rng: np.random.Generator) -> str:
        a = task.answer
        if re.fullmatch(r"-?\d+", a):
            return str(int(a) + int(rng.choice([-3, -2, -1, 1, 2, 3])))
        if a in ("A", "B", "C", "D"):
            return str(rng.choice([x for x in "ABCD" if x != a]))
        others = [c for c in _CITIES if c != a]
        return others[int(rng.integers(len(others)))]

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
    found: list[list[int]]          # relevant documents retrieved, in hop order
    shown: list[set[int]]           # every document shown
    code: list[bool | None]         # last code result correct? None = no code result
    n_docs: list[int]               # documents in context (input tokens of later calls)
    n_code: list[int]               # code results in context


# ---------------------------------------------------------------- reading prompts (for scripted policies)

_COMPACT_ITEM = re.compile(r"([\w.-]+) ([\w-]+) \$([\d.]+)")
_FULL_ITEM = re.compile(r"([\w.-]+): [^;]*?\(([\w-]+)\), \$([\d.]+) in / \$([\d.]+) out")
_CUE = re.compile(r"^\[(\w+), (\w+)\]")


@dataclasses.dataclass(frozen=True)
class MenuItem:
    alias: str
    tag: str
    price_out: float      # $ per 1M output tokens as shown


def parse_menu(tools: Sequence[dict[str, Any]]) -> dict[str, list[MenuItem]]:
    """The alias menu a policy reads in the tool descriptions: tool -> [MenuItem]."""
    menu: dict[str, list[MenuItem]] = {}
    for t in tools:
        fn = t.get("function", t)
        desc = fn.get("description", "")
        models = desc.split("Models:", 1)[-1]
        items = []
        for part in models.split(";"):
            part = part.strip().rstrip(".")
            m = _FULL_ITEM.search(part)
            if m:
                items.append(MenuItem(m.group(1), m.group(2), float(m.group(4))))
                continue
            m = _COMPACT_ITEM.search(part)
            if m:
                items.append(MenuItem(m.group(1), m.group(2), float(m.group(3))))
        menu[fn["name"]] = items
    return menu


def parse_cue(prompt: dict[str, Any]) -> tuple[str, str]:
    """(domain, level word) from the problem text's ``[domain, level]`` cue; ("", "") when absent."""
    for m in prompt["messages"]:
        if m["role"] == "user":
            c = _CUE.match(m["content"])
            if c:
                return c.group(1), c.group(2)
    return "", ""
