"""FunctionsEnv: the batched ToolScale-like environment over the spec-built domains.

Tools shown to the policy: the domain's functions, ``call_expert(expert)`` (a simulated agent does the next
unfinished request, see ``experts.py``) and ``respond(message)`` (the final answer; ends the episode).
Solved = the final database equals the gold one, the final message holds every required fact, and
(``check_touched``) the written entries equal the gold ones, as in ToolScale. Writes must follow the gold
path request by request: a write that leaves it ends the episode with the error shown
(``end_on_wrong_write``). A malformed call, unknown tool or bad argument gives an error observation and
never changes the database.
"""
from __future__ import annotations

import dataclasses
import json
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from orchestra_jax.envs.base import Env, StepOutput, episode_rng
from orchestra_jax.envs.budget import Budget, Ledger, orchestrator_charge
from orchestra_jax.envs.domains.base import DB, Action, db_digest, perturb_arguments
from orchestra_jax.envs.functions.engine import Tools, build_domain, generate_db
from orchestra_jax.envs.functions import menu
from orchestra_jax.envs.functions.agent import run_expert
from orchestra_jax.envs.functions.experts import load_expert_pool
from orchestra_jax.envs.functions.requests import Recipe, RequestBuilder, RequestRecipe
from orchestra_jax.envs.functions.spec import load_spec
from orchestra_jax.envs.functions.tasks import (
    CALL_EXPERT, RESPOND, SETTING, FunctionsTask, RequestInfo, info_given, reply_text,
)
from orchestra_jax.envs.tools import load_roster
from orchestra_jax.text.chat import ToolCallError, format_tool_call, parse_tool_call

SPLITS = ("train", "val", "test", "unseen_tools", "unseen_prices", "heldout_domains")
WRONG_WRITE = "wrong_write"


def execute(domain, db: DB, actions: Sequence[Action]) -> tuple[DB, set]:
    """Runs domain calls in order (skips respond); (final db, written entries). ValueError on a failing call."""
    touched: set = set()
    for a in actions:
        if a.name == RESPOND:
            continue
        res = domain.call(a.name, a.arguments, db)
        if not res.ok:
            raise ValueError(f"gold action {a.name}({a.arguments}) failed: {res.output}")
        db = res.db
        touched.update(res.touched)
    return db, touched


@dataclasses.dataclass
class DomainRuntime:
    spec: Any
    domain: Any
    tools: Tools
    builder: RequestBuilder
    db: DB


@dataclasses.dataclass(frozen=True)
class EpisodeGold:
    db: DB                                 # gold final database
    touched: frozenset
    write_dbs: tuple[DB, ...]              # database after 0, 1, ... gold write requests
    segments: tuple[tuple[Action, ...], ...]


@dataclasses.dataclass
class FunctionsState:
    tasks: list[FunctionsTask]
    seed: int
    episode_ids: list[int]
    dbs: list[DB]
    touched: list[set]
    gold: list[EpisodeGold]
    ledger: Ledger
    writes_done: list[int]
    reads_done: list[set]                  # read-only requests done right (by anyone)
    reads_wrong: list[set]                 # read-only requests an expert read the wrong row for
    context_chars: list[int]
    final_message: list[str | None]
    checks: list[dict[str, bool]]


class FunctionsEnv(Env):
    setting = SETTING
    splits = SPLITS

    def __init__(self, cfg=None):
        from orchestra_jax.envs.config import EnvConfig, env_config_from_dict  # config imports this package

        cfg = EnvConfig(setting=SETTING) if cfg is None else env_config_from_dict(cfg)
        self.cfg, self.fcfg = cfg, cfg.functions
        fc = self.fcfg
        self.pool = load_expert_pool(fc.experts_path)
        self.tool_aliases = self.pool.aliases
        self.alias_index = {a: k for k, a in enumerate(self.tool_aliases)}
        self.orchestrator = load_roster(cfg.roster_path).orchestrator_model
        self.budget = Budget(max_turns=fc.max_turns or cfg.max_turns, max_tokens=cfg.max_tokens, max_usd=cfg.max_usd)
        self.runtimes: dict[str, DomainRuntime] = {}
        for name in fc.domains:
            spec = load_spec(name)
            domain, tools = build_domain(spec)
            rng = np.random.default_rng(np.random.SeedSequence([int(fc.db_seed), zlib.crc32(name.encode())]))
            self.runtimes[name] = DomainRuntime(spec, domain, tools, RequestBuilder(spec, tools),
                                                generate_db(spec, rng, fc.db_size))
        self.domains = {n: r.domain for n, r in self.runtimes.items()}
        self.initial_db = {n: r.db for n, r in self.runtimes.items()}
        self.db_digests = {n: db_digest(db) for n, db in self.initial_db.items()}
        self.train_domains = tuple(d for d in fc.domains if d not in fc.heldout_domains)
        self._gold_cache: dict[str, EpisodeGold] = {}

    # ------------------------------------------------------------------------------------------ tasks
    def sample_tasks(self, seed: int, n: int, split: str = "train") -> list[FunctionsTask]:
        """`n` tasks; task i depends only on (seed, split, i) and the env config."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; functions splits are {SPLITS}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        names = list(self.fcfg.heldout_domains if split == "heldout_domains" else self.train_domains)
        if not names:
            raise ValueError(f"split {split!r} has no domains (functions.heldout_domains is empty)")
        out = []
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919, SPLITS.index(split), i]))
            out.append(self._task(rng, names[int(rng.integers(len(names)))], f"fn-{split}-{seed}-{i}", split))
        return out

    def _task(self, rng, name: str, task_id: str, split: str) -> FunctionsTask:
        rt, fc = self.runtimes[name], self.fcfg
        w = np.array(fc.level_weights, float)
        level = int(rng.choice(3, p=w / w.sum()))
        for _ in range(200):
            user = sorted(rt.db[rt.tools.user.name])[int(rng.integers(len(rt.db[rt.tools.user.name])))]
            k = int(rng.integers(fc.min_requests, fc.max_requests + 1))
            recipe = Recipe(user, tuple(RequestRecipe(rt.builder.draw_kind(rng), int(rng.integers(2**31)),
                                                      frozenset({"ask"}) if rng.random() < 0.3 else frozenset())
                                        for _ in range(k)),
                            (int(rng.integers(len(rt.spec.phrases.distractors))),) if rng.random() < fc.distractor_prob else ())
            reqs = self._build(rt, recipe)
            while reqs is not None and recipe.level < level:
                for _ in range(10):
                    cand = rt.builder.evolve(recipe, rng, max_requests=fc.max_requests + 2)
                    cand_reqs = self._build(rt, cand) if cand is not None else None
                    if cand_reqs is not None:
                        recipe, reqs = cand, cand_reqs
                        break
                else:
                    reqs = None
            if reqs is not None and any(r.write for r in reqs):
                break
        else:
            raise ValueError(f"domain {name}: could not synthesise a task at level {level}")
        facts = tuple(dict.fromkeys(f for r in reqs for f in r.facts))
        actions = tuple(a for r in reqs for a in r.actions) + (Action(RESPOND, {"message": reply_text(facts)}),)
        aliases, scales = self._sample_menu(rng, split)
        pref, pref_text = self._sample_preference(rng, aliases)
        return FunctionsTask(
            task_id=task_id, domain=name, user_id=recipe.user,
            instruction=rt.builder.instruction(rt.db, recipe, reqs), gold_actions=actions,
            requests=tuple(RequestInfo(r.kind, len(r.actions), r.write, r.facts) for r in reqs),
            required_info=facts, level=recipe.level, n_distractors=len(recipe.distractors),
            hidden_difficulty=float(rng.normal(0.0, fc.hidden_difficulty_std)), db_seed=fc.db_seed,
            db_size=fc.db_size, aliases=aliases, price_scales=scales, preference=pref, preference_text=pref_text)

    def _build(self, rt: DomainRuntime, recipe: Recipe):
        return rt.builder.build(rt.db, recipe, lambda db, actions: execute(rt.domain, db, actions))

    def _sample_menu(self, rng, split: str):
        return menu.sample_menu(self.cfg, self.tool_aliases, rng, split)

    def _sample_preference(self, rng, aliases):
        return menu.sample_preference(self.cfg, self.tool_aliases, rng, aliases)

    def task_from_dict(self, d: Mapping[str, Any]) -> FunctionsTask:
        return FunctionsTask.from_dict(d)

    # ------------------------------------------------------------------------------------------ prompts
    def tool_schemas(self, task: FunctionsTask) -> list[dict]:
        """Tools shown to the policy: the domain's functions, call_expert (offered experts), respond."""
        return menu.tool_schemas(self, task)

    def prompt(self, task: FunctionsTask) -> dict[str, Any]:
        return menu.prompt(self, task)

    # ------------------------------------------------------------------------------------------ episodes
    def _gold(self, task: FunctionsTask) -> EpisodeGold:
        key = task.domain + json.dumps([a.to_dict() for a in task.gold_actions], sort_keys=True)
        gold = self._gold_cache.get(key)
        if gold is None:
            if len(self._gold_cache) >= 20_000:
                self._gold_cache.clear()
            rt = self.runtimes[task.domain]
            db, dbs, touched = rt.db, [rt.db], set()
            for req, seg in zip(task.requests, task.segments()):
                try:
                    db, t = execute(rt.domain, db, seg)
                except ValueError as e:
                    raise ValueError(f"task {task.task_id}: {e}; was it made with another db_seed/db_size or spec?") from None
                touched |= t
                if req.write:
                    dbs.append(db)
            gold = self._gold_cache[key] = EpisodeGold(db, frozenset(touched), tuple(dbs), tuple(task.segments()))
        return gold

    def reset(self, tasks: Sequence, seed: int, episode_ids: Sequence[int] | None = None):
        tasks = [t if isinstance(t, FunctionsTask) else FunctionsTask.from_dict(t) for t in tasks]
        episode_ids = list(range(len(tasks))) if episode_ids is None else [int(e) for e in episode_ids]
        if len(episode_ids) != len(tasks):
            raise ValueError(f"episode_ids has {len(episode_ids)} entries for {len(tasks)} tasks")
        for t in tasks:
            if t.domain not in self.runtimes:
                raise ValueError(f"task {t.task_id}: domain {t.domain!r} is not in functions.domains {list(self.runtimes)}")
            if (t.db_seed, t.db_size) != (self.fcfg.db_seed, self.fcfg.db_size):
                raise ValueError(f"task {t.task_id}: made for db_seed={t.db_seed} db_size={t.db_size}, env has "
                                 f"db_seed={self.fcfg.db_seed} db_size={self.fcfg.db_size}")
            if any(a not in self.alias_index for a in t.aliases) or len(t.price_scales) != len(t.aliases) \
                    or len(t.preference) != len(self.tool_aliases) + 3:
                raise ValueError(f"task {t.task_id}: aliases {list(t.aliases)} / price_scales / preference do not fit "
                                 f"this expert pool {self.tool_aliases}")
        prompts = [self.prompt(t) for t in tasks]
        B = len(tasks)
        state = FunctionsState(
            tasks=tasks, seed=int(seed), episode_ids=episode_ids, dbs=[self.initial_db[t.domain] for t in tasks],
            touched=[set() for _ in tasks], gold=[self._gold(t) for t in tasks],
            ledger=Ledger(B, len(self.tool_aliases), self.budget), writes_done=[0] * B,
            reads_done=[set() for _ in tasks], reads_wrong=[set() for _ in tasks],
            context_chars=[sum(len(m["content"]) for m in p["messages"]) + 160 * len(p["tools"]) for p in prompts],
            final_message=[None] * B, checks=[{} for _ in tasks])
        return state, prompts

    def step(self, state: FunctionsState, actions: Sequence[str], policy_tokens_in=None, policy_tokens_out=None):
        B = len(state.tasks)
        if len(actions) != B:
            raise ValueError(f"step: got {len(actions)} actions for a batch of {B} episodes")
        for name, arr in (("policy_tokens_in", policy_tokens_in), ("policy_tokens_out", policy_tokens_out)):
            if arr is not None and len(arr) != B:
                raise ValueError(f"step: {name} has {len(arr)} entries for a batch of {B} episodes")
        led = state.ledger
        obs, infos = [""] * B, [{} for _ in range(B)]
        cost, lat = np.zeros(B), np.zeros(B)
        tool_index, valid = np.full(B, -1, np.int32), np.zeros(B, bool)
        for i in range(B):
            if led.done[i]:
                continue
            usd0, lat0 = led.usd[i], led.latency[i]
            text = actions[i] if isinstance(actions[i], str) else ""
            tin, tout = policy_tokens_in, policy_tokens_out
            if tin is None and tout is None and self.fcfg.estimate_orchestrator_tokens:
                tin, tout, i_ = [0] * B, [0] * B, i
                tin[i_], tout[i_] = state.context_chars[i] // 4, len(text) // 4
            o_usd, o_tok = orchestrator_charge(self.orchestrator.price_in, self.orchestrator.price_out, tin, tout, i)
            o_lat = (0 if tout is None else int(tout[i])) / self.orchestrator.tokens_per_s
            if led.charge(i, o_usd, o_tok, o_lat)[0]:
                obs[i], tool_index[i], valid[i], infos[i] = self._act(state, i, actions[i], policy_tokens_in)
                if not valid[i]:
                    led.n_invalid[i] += 1
            else:
                obs[i], infos[i] = self.budget_text(led.end_reason[i]), {"tool": None, "error": "budget"}
            led.end_turn(i)
            if led.done[i] and led.end_reason[i] == "max_turns":
                obs[i] += ("\n" if obs[i] else "") + self.budget_text("max_turns")
            state.context_chars[i] += len(text) + len(obs[i])
            cost[i], lat[i] = led.usd[i] - usd0, led.latency[i] - lat0
            infos[i]["end_reason"] = led.end_reason[i]
        return state, StepOutput(observations=obs, done=led.done.copy(), cost_usd=cost, latency_s=lat,
                                 tool_index=tool_index, valid=valid, info=infos)

    def budget_text(self, reason: str) -> str:
        what = {"max_usd": f"${self.budget.max_usd:g}", "max_tokens": f"{self.budget.max_tokens} tokens",
                "max_turns": f"{self.budget.max_turns} turns"}[reason]
        return f"Budget exceeded ({what}): episode ended."

    def _act(self, state: FunctionsState, i: int, action: Any, policy_tokens_in):
        task = state.tasks[i]
        call = parse_tool_call(action)
        if isinstance(call, ToolCallError):
            return f"Error: {call.message}", -1, False, {"tool": None, "error": "parse"}
        name, args = call.name, call.arguments
        if name == RESPOND:
            if not isinstance(args, dict) or set(args) != {"message"} or not isinstance(args["message"], str):
                return "Error: respond takes exactly one argument 'message' (a string)", -1, False, {"tool": RESPOND, "error": "arguments"}
            self.finish(state, i, args["message"])
            return "The conversation has ended.", -1, True, {"tool": RESPOND, **state.checks[i]}
        if name == CALL_EXPERT:
            if not isinstance(args, dict) or set(args) != {"expert"} or args["expert"] not in task.aliases:
                return (f"Error: call_expert takes exactly one argument 'expert', one of {list(task.aliases)}", -1, False,
                        {"tool": CALL_EXPERT, "error": "arguments"})
            obs, info = run_expert(self, state, i, args["expert"], policy_tokens_in)
            return obs, self.alias_index[args["expert"]], True, {"tool": CALL_EXPERT, "alias": args["expert"], **info}
        domain = self.domains[task.domain]
        state.ledger.charge(i, 0.0, 0, self.fcfg.function_latency_s)
        out, stage = self.apply_call(state, i, name, args)
        if stage == "unknown":
            tools = [f.name for f in domain.functions] + [CALL_EXPERT, RESPOND]
            return f"Error: unknown tool {str(name)[:40]!r}; available: {tools}", -1, False, {"tool": str(name)[:40], "error": "unknown"}
        return out, -1, stage in ("ok", "precondition", WRONG_WRITE), {"tool": name, "stage": stage}

    def apply_call(self, state: FunctionsState, i: int, name: str, args: Any) -> tuple[str, str]:
        """Runs one domain call of episode i (by the policy or an expert) and keeps the gold-path bookkeeping:
        a correct write advances it, a read with the gold arguments of an open read-only request completes
        it, a write off the gold path ends the episode (end_on_wrong_write). Returns (output, stage)."""
        task, domain = state.tasks[i], self.domains[state.tasks[i].domain]
        res = domain.call(name, args, state.dbs[i])
        if not res.ok:
            return res.output, res.stage
        state.dbs[i] = res.db
        state.touched[i].update(res.touched)
        if domain.by_name[name].write:
            gold, j = state.gold[i], state.writes_done[i]
            if j + 1 < len(gold.write_dbs) and res.db == gold.write_dbs[j + 1]:
                state.writes_done[i] = j + 1
            elif self.fcfg.end_on_wrong_write:
                state.ledger.finish(i, solved=False, reason=WRONG_WRITE)
                state.checks[i] = {"db_match": False, "info_given": False, "touched_match": False}
                return (res.output + "\nError: this change is not what the user asked for; the user ended the "
                        "conversation."), WRONG_WRITE
        else:
            for r, (req, seg) in enumerate(zip(task.requests, state.gold[i].segments)):
                if not req.write and r not in state.reads_done[i] and seg[-1].name == name and seg[-1].arguments == args:
                    state.reads_done[i].add(r)
                    state.reads_wrong[i].discard(r)
                    break
        return res.output, "ok"

    def finish(self, state: FunctionsState, i: int, message: str) -> None:
        gold = state.gold[i]
        checks = {"db_match": state.dbs[i] == gold.db,
                  "info_given": info_given(message, state.tasks[i].required_info, self.fcfg.max_message_chars),
                  "touched_match": frozenset(state.touched[i]) == gold.touched}
        state.checks[i], state.final_message[i] = checks, message
        solved = checks["db_match"] and checks["info_given"] and (checks["touched_match"] or not self.fcfg.check_touched)
        state.ledger.finish(i, solved=solved, reason="answer")

    def next_request(self, state: FunctionsState, i: int) -> int | None:
        """Index of the first request an expert would still work on (None: all handled)."""
        w = 0
        for r, req in enumerate(state.tasks[i].requests):
            if req.write:
                if w >= state.writes_done[i]:
                    return r
                w += 1
            elif r not in state.reads_done[i] and r not in state.reads_wrong[i]:
                return r
        return None

    def known_facts(self, state: FunctionsState, i: int) -> list[str]:
        """Facts the conversation holds: of every write request done and every read request done right."""
        out, w = [], 0
        for r, req in enumerate(state.tasks[i].requests):
            if req.write:
                if w < state.writes_done[i]:
                    out += req.facts
                w += 1
            elif r in state.reads_done[i]:
                out += req.facts
        return list(dict.fromkeys(out))

    def results(self, state: FunctionsState):
        pref = np.array([t.preference for t in state.tasks], np.float32).reshape(len(state.tasks), -1)
        return state.ledger.results(self.tool_aliases, pref, [t.task_id for t in state.tasks],
                                    [t.domain for t in state.tasks])

    def gold_texts(self, task: FunctionsTask) -> list[str]:
        return [format_tool_call(a.name, a.arguments) for a in task.gold_actions]

    def db_digest(self, state: FunctionsState, i: int) -> str:
        return db_digest(state.dbs[i])

    def perturb(self, task: FunctionsTask, action: Action, db: DB, rng) -> dict:
        return perturb_arguments(self.domains[task.domain].by_name[action.name], action.arguments, db, rng)
