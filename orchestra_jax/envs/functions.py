"""Function-calling setting (ToolScale / tau2-like): synthetic domains with a database.

Each domain (see ``envs/domains/``) has a seeded, generated database (typed records in dicts), read and
write functions with JSON schemas, and intent generators. A task is a user instruction made of 1-3
requests (plus distractor sentences), its gold action sequence (reads, writes, a final ``respond``) and
the required information (facts the final answer must contain). Tools shown to the policy: the domain's
functions, ``call_expert(expert)`` (delegates the next step to a simulated model of the roster's
"functions" menu, charged its price and latency) and ``respond(message)`` (the final answer; ends the
episode).

Solved = the final database equals the gold database (the initial one with the gold actions applied),
the final message holds every required fact, and (``check_touched``) the set of written entries equals
the gold one, as in ToolScale. A malformed call, unknown tool or bad argument gives an error
observation and never changes the database (domain calls validate fully before they write).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

@dataclasses.dataclass(frozen=True)
class FunctionsConfig:
    """Function-calling setting: domains, databases, task tiers and the simulated experts.

    Budgets, the roster (expert aliases -> models), tool subsets, prices and preferences come from the
    enclosing EnvConfig; `max_turns` here overrides env.max_turns when > 0 (tasks need more turns than QA).
    """

    domains: tuple[str, ...] = ("railway", "restaurant", "finance")
    db_seed: int = 0                      # seed of the generated databases (fixed per env)
    db_size: int = 240                    # entries in each domain's main tables (>= 200)
    min_actions: int = 1                  # fewest write actions (user requests) in a task
    max_actions: int = 3                  # most write actions (user requests) in a task
    distractor_prob: float = 0.4          # chance a task's instruction carries 1-2 distractor sentences
    level_offsets: tuple[float, ...] = (0.0, 1.0, 2.0)  # expert difficulty (logits x slope) per tier
    hidden_difficulty_std: float = 0.5    # per-task logit offset of the experts the policy never sees
    check_touched: bool = True            # success also needs the set of written entries to match gold
    wrong_action_prob: float = 0.5        # a failing expert writes a plausible wrong call (else does nothing)
    function_latency_s: float = 0.05      # seconds one domain function call takes (free of charge)
    max_message_chars: int = 600          # a longer final message fails the required-information check
    expert_context_tokens: int = 400      # expert input tokens besides the conversation (its instructions)
    max_turns: int = 16                   # > 0: overrides env.max_turns for this setting

    def __post_init__(self):
        if not self.domains:
            raise ValueError("functions.domains must name at least one domain")
        if self.db_size < 20:
            raise ValueError(f"functions.db_size must be >= 20, got {self.db_size}")
        if not 1 <= self.min_actions <= self.max_actions:
            raise ValueError(f"functions.min_actions/max_actions must satisfy 1 <= min <= max, got "
                             f"{self.min_actions}/{self.max_actions}")
        for name in ("distractor_prob", "wrong_action_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"functions.{name} must be in [0, 1], got {getattr(self, name)}")
        if len(self.level_offsets) != 3:
            raise ValueError(f"functions.level_offsets needs one offset per tier (3), got {self.level_offsets}")
        if self.max_turns < 0:
            raise ValueError(f"functions.max_turns must be >= 0, got {self.max_turns}")


# Imports below the config: envs/config.py imports FunctionsConfig from this module.
from orchestra_jax.envs import preferences as prefs  # noqa: E402
from orchestra_jax.envs.base import Env, StepOutput, episode_rng  # noqa: E402
from orchestra_jax.envs.budget import Budget, Ledger, orchestrator_charge  # noqa: E402
from orchestra_jax.envs.domains import DB, Action, Domain, db_digest, get_domain  # noqa: E402
from orchestra_jax.envs.domains.base import perturb_arguments  # noqa: E402
from orchestra_jax.envs.tools import (  # noqa: E402
    call_cost_usd, load_roster, price_text, sample_latency_s, sample_tokens_out, sigmoid, success_logit,
)
from orchestra_jax.text.chat import ToolCallError, format_tool_call, parse_tool_call  # noqa: E402

SETTING = "functions"
SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test", "unseen_tools", "unseen_prices")
RESPOND = "respond"
CALL_EXPERT = "call_expert"


# ---------------------------------------------------------------------------------------------- tasks
@dataclasses.dataclass(frozen=True)
class FunctionsTask:
    """One function-calling task. `gold_actions` ends with the gold `respond` call."""

    task_id: str
    domain: str
    user_id: str
    instruction: str
    gold_actions: tuple[Action, ...]
    required_info: tuple[str, ...]
    n_writes: int
    n_distractors: int
    level: int                            # visible difficulty tier: 0 basic, 1 standard, 2 expert
    hidden_difficulty: float              # expert logit offset the policy never sees
    db_seed: int
    db_size: int
    aliases: tuple[str, ...]              # expert aliases offered in this task
    price_scales: tuple[float, ...]       # price multiplier per offered alias
    preference: tuple[float, ...]         # P over [all aliases..., outcome, cost, latency]
    preference_text: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["gold_actions"] = [a.to_dict() for a in self.gold_actions]
        for k in ("required_info", "aliases", "price_scales", "preference"):
            d[k] = list(d[k])
        return {"setting": SETTING, "schema_version": SCHEMA_VERSION, **d}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "FunctionsTask":
        """Inverse of to_dict; a bad record raises ValueError naming the field."""
        if not isinstance(d, Mapping):
            raise ValueError(f"functions task must be a mapping, got {type(d).__name__}")
        if d.get("setting", SETTING) != SETTING:
            raise ValueError(f"functions task: setting must be {SETTING!r}, got {d.get('setting')!r}")
        if d.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ValueError(f"functions task: schema_version {d.get('schema_version')!r} is not {SCHEMA_VERSION}")
        fields = {f.name for f in dataclasses.fields(FunctionsTask)}
        missing = sorted(k for k in fields if k not in d and k != "preference_text")
        if missing:
            raise ValueError(f"functions task {d.get('task_id', '?')}: missing field(s) {missing}")
        try:
            actions = tuple(Action.from_dict(a) for a in d["gold_actions"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"functions task {d['task_id']}: bad field 'gold_actions' ({e})") from None
        if not actions or actions[-1].name != RESPOND:
            raise ValueError(f"functions task {d['task_id']}: field 'gold_actions' must end with {RESPOND!r}")
        try:
            return FunctionsTask(
                task_id=str(d["task_id"]), domain=str(d["domain"]), user_id=str(d["user_id"]),
                instruction=str(d["instruction"]), gold_actions=actions,
                required_info=tuple(str(x) for x in d["required_info"]), n_writes=int(d["n_writes"]),
                n_distractors=int(d["n_distractors"]), level=int(d["level"]),
                hidden_difficulty=float(d["hidden_difficulty"]), db_seed=int(d["db_seed"]),
                db_size=int(d["db_size"]), aliases=tuple(str(x) for x in d["aliases"]),
                price_scales=tuple(float(x) for x in d["price_scales"]),
                preference=tuple(float(x) for x in d["preference"]),
                preference_text=str(d.get("preference_text", "")))
        except (TypeError, ValueError) as e:
            raise ValueError(f"functions task {d.get('task_id', '?')}: bad field value ({e})") from None


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; functions splits are {SPLITS}")
    return SPLITS.index(split)


def _domain_seed(db_seed: int, domain: str) -> np.random.SeedSequence:
    # independent of the order of cfg.domains: each domain's database depends on (db_seed, its name)
    return np.random.SeedSequence([int(db_seed), zlib.crc32(domain.encode())])


def execute(domain: Domain, db: DB, actions: Sequence[Action]) -> tuple[DB, set, list[str]]:
    """Runs domain calls in order (skips `respond`); returns (final db, written entries, outputs).

    Raises ValueError naming the first call that fails (gold sequences must all succeed).
    """
    touched: set = set()
    outputs = []
    for a in actions:
        if a.name == RESPOND:
            continue
        res = domain.call(a.name, a.arguments, db)
        if not res.ok:
            raise ValueError(f"gold action {a.name}({a.arguments}) failed: {res.output}")
        db, outputs = res.db, outputs + [res.output]
        touched.update(res.touched)
    return db, touched, outputs


def synthesize(domain: Domain, db: DB, rng: np.random.Generator, cfg: FunctionsConfig) -> dict[str, Any]:
    """Draws one task's core (user, instruction, gold actions, required info, tiers) on `db`.

    Requests are drawn one at a time on the database as the earlier gold actions left it, and each is
    kept only if all its gold calls succeed, so the gold sequence always executes.
    """
    n_writes = int(rng.integers(cfg.min_actions, cfg.max_actions + 1))
    # the kinds of request are drawn first (uniform mix), then a user for whom all of them are feasible
    for attempt in range(2000):
        if attempt % 25 == 0:  # some combinations are infeasible together (freeze, then transfer)
            kinds = [domain.intents[int(k)] for k in rng.integers(len(domain.intents), size=n_writes)]
        user = domain.pick_user(db, rng)
        cur, used, intents = db, set(), []
        for fn in kinds:
            for _ in range(4):
                trial_used = set(used)
                intent = fn(cur, rng, user, trial_used)
                if intent is None:
                    continue
                try:
                    cur, written, _ = execute(domain, cur, intent.actions)
                except ValueError:
                    continue
                # later requests never refer to entries this task already wrote (or created: the user
                # could not know a new id)
                used = trial_used | {key for _, key in written}
                intents.append(intent)
                break
            else:
                break
        if len(intents) == n_writes:
            break
    else:
        raise ValueError(f"domain {domain.name}: could not synthesise a task with requests "
                         f"{[k.__name__ for k in kinds]}")
    sentences = [i.text for i in intents]
    if len(sentences) > 1:
        sentences = [f"First, {_lower_first(sentences[0])}"] + [f"Then, {_lower_first(s)}" for s in sentences[1:]]
    n_distractors = int(rng.integers(1, 3)) if rng.random() < cfg.distractor_prob else 0
    for _ in range(n_distractors):
        sentences.insert(int(rng.integers(len(sentences) + 1)), domain.distractor(db, rng, user, used))
    facts = tuple(dict.fromkeys(f for i in intents for f in i.facts))  # unique, in order
    message = "All done." + (" Details: " + "; ".join(facts) + "." if facts else "")
    actions = tuple(a for i in intents for a in i.actions) + (Action(RESPOND, {"message": message}),)
    level = min(2, (n_writes - 1) + (n_distractors > 0))
    return dict(domain=domain.name, user_id=user,
                instruction=domain.greeting(db, user) + " " + " ".join(sentences),
                gold_actions=actions, required_info=facts, n_writes=n_writes, n_distractors=n_distractors,
                level=level, hidden_difficulty=float(rng.normal(0.0, cfg.hidden_difficulty_std)))


def _lower_first(sentence: str) -> str:
    first = sentence.split(" ", 1)[0]
    return sentence if first in ("I", "I'm") else sentence[0].lower() + sentence[1:]


def normalise_text(text: str) -> str:
    """Lower case, no '$' or thousands commas, single spaces: how required facts are matched."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text.lower()).replace("$", "")
    return " ".join(text.split())


def info_given(message: str, facts: Sequence[str], max_chars: int = 0) -> bool:
    """Every required fact occurs in the message as a whole token (after `normalise_text`: '155.00' does
    not contain '55.00'); a message over `max_chars` (> 0) fails, so dumping every record cannot game it."""
    if max_chars > 0 and len(message) > max_chars:
        return False
    m = normalise_text(message)
    return all(re.search(r"(?<![\w.])" + re.escape(normalise_text(f)) + r"(?!\w)", m) for f in facts)


# ---------------------------------------------------------------------------------------------- state
@dataclasses.dataclass(frozen=True)
class EpisodeGold:
    """What reset precomputes per episode from its task."""

    db: DB                                # gold final database
    touched: frozenset                    # entries the gold writes touch
    prefix_dbs: tuple[DB, ...]            # database after 0, 1, ..., n_writes gold writes
    segments: tuple[tuple[Action, ...], ...]  # gold actions split after each write; the last ends with respond


@dataclasses.dataclass
class FunctionsState:
    """Host-side state of a batch of function-calling episodes (mutated in place by step)."""

    tasks: list[FunctionsTask]
    seed: int
    episode_ids: list[int]
    dbs: list[DB]
    touched: list[set]
    gold: list[EpisodeGold]
    ledger: Ledger
    context_chars: list[int]              # characters of the conversation so far (expert input estimate)
    final_message: list[str | None]
    checks: list[dict[str, bool]]         # db_match / info_given / touched_match once answered


# ---------------------------------------------------------------------------------------------- env
class FunctionsEnv(Env):
    """Batched ToolScale-like environment; see the module docstring."""

    setting = SETTING
    splits = SPLITS

    def __init__(self, cfg=None):
        from orchestra_jax.envs.config import EnvConfig, env_config_from_dict

        cfg = EnvConfig(setting=SETTING) if cfg is None else env_config_from_dict(cfg)
        self.cfg, fc = cfg, cfg.functions
        self.fcfg = fc
        self.roster = load_roster(cfg.roster_path)
        self.menu = self.roster.menu(SETTING)
        self.tool_aliases = tuple(a.alias for a in self.menu)
        self.alias_index = {a: k for k, a in enumerate(self.tool_aliases)}
        self.orchestrator = self.roster.orchestrator_model
        self.budget = Budget(max_turns=fc.max_turns or cfg.max_turns, max_tokens=cfg.max_tokens,
                             max_usd=cfg.max_usd)
        self.domains = {name: get_domain(name) for name in fc.domains}
        self.initial_db = {name: d.generate_db(np.random.default_rng(_domain_seed(fc.db_seed, name)), fc.db_size)
                           for name, d in self.domains.items()}
        self.db_digests = {name: db_digest(db) for name, db in self.initial_db.items()}
        self._gold_cache: dict[tuple[str, str], EpisodeGold] = {}  # values are never mutated (copy-on-write)

    # -------------------------------------------------------------------------------- tasks
    def sample_tasks(self, seed: int, n: int, split: str = "train") -> list[FunctionsTask]:
        """`n` tasks; task i depends only on (seed, split, i) (and the env config)."""
        code = _split_code(split)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        names = list(self.domains)
        tasks = []
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919, code, i]))
            name = names[int(rng.integers(len(names)))]
            core = synthesize(self.domains[name], self.initial_db[name], rng, self.fcfg)
            aliases, scales = self._sample_menu(rng, split)
            pref, pref_text = self._sample_preference(rng, aliases)
            tasks.append(FunctionsTask(task_id=f"fn-{split}-{seed}-{i}", db_seed=self.fcfg.db_seed,
                                       db_size=self.fcfg.db_size, aliases=aliases, price_scales=scales,
                                       preference=pref, preference_text=pref_text, **core))
        return tasks

    def _sample_menu(self, rng: np.random.Generator, split: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
        """Offered expert aliases and their price multipliers (same rules as the QA setting)."""
        cfg, aliases = self.cfg, list(self.tool_aliases)
        if split == "unseen_tools":
            pool = aliases
        elif cfg.randomize_tools:
            pool = [a for a in aliases if a not in cfg.heldout_aliases] or aliases
        else:
            pool = None
        if pool is None:
            chosen = set(aliases)
        else:
            chosen = {a for a, k in zip(pool, rng.random(len(pool)) < cfg.keep_prob) if k}
            held = [a for a in cfg.heldout_aliases if a in aliases]
            if split == "unseen_tools" and held:
                chosen.add(held[int(rng.integers(len(held)))])
            if not chosen:  # at least one expert
                chosen.add(pool[int(rng.integers(len(pool)))])
        offered = tuple(a for a in aliases if a in chosen)
        scales = []
        for _ in offered:
            if split == "unseen_prices":
                lo1, hi1, lo2, hi2 = cfg.price_scale_unseen
                lo, hi = (lo1, hi1) if rng.random() < 0.5 else (lo2, hi2)
            elif cfg.randomize_prices:
                lo, hi = cfg.price_scale_train
            else:
                scales.append(1.0)
                continue
            scales.append(float(round(math.exp(rng.uniform(math.log(lo), math.log(hi))), 3)))
        return offered, tuple(scales)

    def _sample_preference(self, rng: np.random.Generator, aliases: Sequence[str]) -> tuple[tuple[float, ...], str]:
        """P over [all aliases..., outcome, cost, latency] and its instruction ("" in fixed mode)."""
        cfg = self.cfg
        if cfg.preference_mode == "fixed":
            return prefs.fixed_preference(len(self.tool_aliases), cfg.pref_outcome, cfg.pref_cost,
                                          cfg.pref_latency), ""
        p, text = prefs.sample_preference(rng, self.tool_aliases, aliases)
        return tuple(float(x) for x in p), text

    def task_from_dict(self, d: Mapping[str, Any]) -> FunctionsTask:
        return FunctionsTask.from_dict(d)

    # -------------------------------------------------------------------------------- prompts
    def tool_schemas(self, task: FunctionsTask) -> list[dict]:
        """Tools shown to the policy: domain functions, call_expert (offered aliases), respond."""
        domain = self.domains[task.domain]
        experts = []
        for a, scale in zip(task.aliases, task.price_scales):
            m = self.roster.alias_model(SETTING, a)
            if self.cfg.description_style == "full":
                typical_s = m.latency_base_s + m.mean_tokens_out(CALL_EXPERT) / m.tokens_per_s
                experts.append(f"{a}: {m.display} ({m.tag}), ${price_text(m.price_in * scale)} in / "
                               f"${price_text(m.price_out * scale)} out per 1M tokens, ~{typical_s:.0f} s")
            else:
                experts.append(f"{a} {m.tag} ${price_text(m.price_out * scale)}")
        expert_tool = {"type": "function", "function": {
            "name": CALL_EXPERT,
            "description": "Delegate the next step of the request to an expert model, who sees the whole "
                           "conversation and performs it. Experts: " + "; ".join(experts) + ".",
            "parameters": {"type": "object", "properties": {"expert": {
                "type": "string", "enum": list(task.aliases), "description": "Which expert."}},
                "required": ["expert"]}}}
        respond_tool = {"type": "function", "function": {
            "name": RESPOND,
            "description": "Final answer to the user; ends the conversation. Include every piece of "
                           f"information the user asked for (at most {self.fcfg.max_message_chars} characters).",
            "parameters": {"type": "object", "properties": {"message": {
                "type": "string", "description": "Message to the user."}}, "required": ["message"]}}}
        return [f.json_schema() for f in domain.functions] + [expert_tool, respond_tool]

    def prompt(self, task: FunctionsTask) -> dict[str, Any]:
        domain = self.domains[task.domain]
        messages = []
        if self.cfg.system_prompt:
            messages.append({"role": "system", "content": (
                f"{domain.description} Carry out the user's requests in order with the tools, one call per "
                f"turn, then call {RESPOND} with the answer.")})
        user = task.instruction + (f"\n{task.preference_text}" if task.preference_text else "")
        messages.append({"role": "user", "content": user})
        return {"messages": messages, "tools": self.tool_schemas(task)}

    # -------------------------------------------------------------------------------- episodes
    def _gold(self, task: FunctionsTask) -> EpisodeGold:
        """Gold database, touched entries, prefixes and segments (cached: a group repeats its task)."""
        key = (task.domain, json.dumps([a.to_dict() for a in task.gold_actions], sort_keys=True))
        gold = self._gold_cache.get(key)
        if gold is None:
            if len(self._gold_cache) >= 20_000:
                self._gold_cache.clear()
            gold = self._gold_cache[key] = self._compute_gold(task)
        return gold

    def _compute_gold(self, task: FunctionsTask) -> EpisodeGold:
        domain, db = self.domains[task.domain], self.initial_db[task.domain]
        prefix, segments, seg, touched = [db], [], [], set()
        for a in task.gold_actions:
            seg.append(a)
            if a.name == RESPOND:
                continue
            res = domain.call(a.name, a.arguments, db)
            if not res.ok:
                raise ValueError(f"task {task.task_id}: gold action {a.name} fails on this database "
                                 f"({res.output}); was it made with another db_seed/db_size or domain code?")
            db = res.db
            touched.update(res.touched)
            if domain.by_name[a.name].write:
                prefix.append(db)
                segments.append(tuple(seg))
                seg = []
        segments.append(tuple(seg))
        return EpisodeGold(db, frozenset(touched), tuple(prefix), tuple(segments))

    def reset(self, tasks: Sequence, seed: int, episode_ids: Sequence[int] | None = None
              ) -> tuple[FunctionsState, list[dict[str, Any]]]:
        tasks = [t if isinstance(t, FunctionsTask) else FunctionsTask.from_dict(t) for t in tasks]
        episode_ids = list(range(len(tasks))) if episode_ids is None else [int(e) for e in episode_ids]
        if len(episode_ids) != len(tasks):
            raise ValueError(f"episode_ids has {len(episode_ids)} entries for {len(tasks)} tasks")
        for t in tasks:
            if t.domain not in self.domains:
                raise ValueError(f"task {t.task_id}: domain {t.domain!r} is not in functions.domains "
                                 f"{tuple(self.domains)}")
            if (t.db_seed, t.db_size) != (self.fcfg.db_seed, self.fcfg.db_size):
                raise ValueError(f"task {t.task_id}: made for db_seed={t.db_seed} db_size={t.db_size}, env has "
                                 f"db_seed={self.fcfg.db_seed} db_size={self.fcfg.db_size}")
            bad = [a for a in t.aliases if a not in self.alias_index]
            if bad or len(t.price_scales) != len(t.aliases) or len(t.preference) != len(self.tool_aliases) + 3:
                raise ValueError(f"task {t.task_id}: aliases {list(t.aliases)} / price_scales / preference do not "
                                 f"fit this roster's aliases {self.tool_aliases}")
        prompts = [self.prompt(t) for t in tasks]
        state = FunctionsState(
            tasks=tasks, seed=int(seed), episode_ids=episode_ids,
            dbs=[self.initial_db[t.domain] for t in tasks], touched=[set() for _ in tasks],
            gold=[self._gold(t) for t in tasks],
            ledger=Ledger(len(tasks), len(self.tool_aliases), self.budget),
            context_chars=[sum(len(m["content"]) for m in p["messages"]) + 200 * len(p["tools"]) for p in prompts],
            final_message=[None] * len(tasks), checks=[{} for _ in tasks])
        return state, prompts

    def step(self, state: FunctionsState, actions: Sequence[str], policy_tokens_in: Sequence[int] | None = None,
             policy_tokens_out: Sequence[int] | None = None) -> tuple[FunctionsState, StepOutput]:
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
            # the orchestrator's own tokens, at its price (latency: its decode time), as in the QA setting
            o_usd, o_tok = orchestrator_charge(self.orchestrator.price_in, self.orchestrator.price_out,
                                               policy_tokens_in, policy_tokens_out, i)
            o_lat = (0 if policy_tokens_out is None else int(policy_tokens_out[i])) / self.orchestrator.tokens_per_s
            if led.charge(i, o_usd, o_tok, o_lat)[0]:
                obs[i], tool_index[i], valid[i], infos[i] = self._act(state, i, actions[i], policy_tokens_in)
                if not valid[i]:
                    led.n_invalid[i] += 1
            else:
                obs[i], infos[i] = self._budget_text(led.end_reason[i]), {"tool": None, "error": "budget"}
            led.end_turn(i)
            if led.done[i] and led.end_reason[i] == "max_turns":
                obs[i] += ("\n" if obs[i] else "") + self._budget_text("max_turns")
            state.context_chars[i] += len(actions[i]) if isinstance(actions[i], str) else 0
            state.context_chars[i] += len(obs[i])
            cost[i], lat[i] = led.usd[i] - usd0, led.latency[i] - lat0
            infos[i]["end_reason"] = led.end_reason[i]
        return state, StepOutput(observations=obs, done=led.done.copy(), cost_usd=cost, latency_s=lat,
                                 tool_index=tool_index, valid=valid, info=infos)

    def _budget_text(self, reason: str) -> str:
        what = {"max_usd": f"${self.budget.max_usd:g}", "max_tokens": f"{self.budget.max_tokens} tokens",
                "max_turns": f"{self.budget.max_turns} turns"}[reason]
        return f"Budget exceeded ({what}): episode ended."

    def _act(self, state: FunctionsState, i: int, action: Any, policy_tokens_in) -> tuple[str, int, bool, dict]:
        """Runs one parsed action of episode i: (observation, alias index, valid, info)."""
        task, domain = state.tasks[i], self.domains[state.tasks[i].domain]
        call = parse_tool_call(action)
        if isinstance(call, ToolCallError):
            return f"Error: {call.message}", -1, False, {"tool": None, "error": "parse"}
        name, args = call.name, call.arguments
        if name == RESPOND:
            if not isinstance(args, dict) or set(args) != {"message"} or not isinstance(args["message"], str):
                return ("Error: respond takes exactly one argument 'message' (a string)", -1, False,
                        {"tool": RESPOND, "error": "arguments"})
            self._finish(state, i, args["message"])
            return "The conversation has ended.", -1, True, {"tool": RESPOND, **state.checks[i]}
        if name == CALL_EXPERT:
            if not isinstance(args, dict) or set(args) != {"expert"} or args["expert"] not in task.aliases:
                return (f"Error: call_expert takes exactly one argument 'expert', one of {list(task.aliases)}",
                        -1, False, {"tool": CALL_EXPERT, "error": "arguments"})
            k = self.alias_index[args["expert"]]
            obs, info = self._expert(state, i, args["expert"], policy_tokens_in)
            return obs, k, True, {"tool": CALL_EXPERT, "alias": args["expert"], **info}
        res = domain.call(name, args, state.dbs[i])
        if res.stage == "unknown":
            tools = [f.name for f in domain.functions] + [CALL_EXPERT, RESPOND]
            return (f"Error: unknown tool {name[:40]!r}; available: {tools}", -1, False,
                    {"tool": name[:40], "error": "unknown"})
        state.ledger.charge(i, 0.0, 0, self.fcfg.function_latency_s)
        if res.ok:
            state.dbs[i] = res.db
            state.touched[i].update(res.touched)
        return res.output, -1, res.stage in ("ok", "precondition"), {"tool": name, "stage": res.stage}

    def _finish(self, state: FunctionsState, i: int, message: str) -> None:
        gold = state.gold[i]
        checks = {"db_match": state.dbs[i] == gold.db,
                  "info_given": info_given(message, state.tasks[i].required_info, self.fcfg.max_message_chars),
                  "touched_match": frozenset(state.touched[i]) == gold.touched}
        state.checks[i], state.final_message[i] = checks, message
        solved = checks["db_match"] and checks["info_given"] and (checks["touched_match"] or not self.fcfg.check_touched)
        state.ledger.finish(i, solved=solved, reason="answer")

    def progress(self, state: FunctionsState, i: int) -> int | None:
        """Number of gold writes the episode's database reflects, or None when it matches no gold prefix."""
        for j in range(len(state.gold[i].prefix_dbs) - 1, -1, -1):
            if state.dbs[i] == state.gold[i].prefix_dbs[j]:
                return j
        return None

    def _expert(self, state: FunctionsState, i: int, alias: str, policy_tokens_in) -> tuple[str, dict]:
        """Simulated expert: charges its call, then does the next gold step with P(skill, difficulty)."""
        task, led = state.tasks[i], state.ledger
        model = self.roster.alias_model(SETTING, alias)
        scale = task.price_scales[task.aliases.index(alias)]
        rng = episode_rng(state.seed, state.episode_ids[i], int(led.turns[i]), 1)
        ctx = int(policy_tokens_in[i]) if policy_tokens_in is not None else state.context_chars[i] // 4
        tokens_in = self.fcfg.expert_context_tokens + ctx
        tokens_out = sample_tokens_out(model, CALL_EXPERT, rng)
        led.record_call(i, self.alias_index[alias])
        usd = call_cost_usd(model, tokens_in, tokens_out, scale)
        ok, _, _ = led.charge(i, usd, tokens_in + tokens_out, sample_latency_s(model, tokens_out, rng))
        info = {"tokens_in": tokens_in, "tokens_out": tokens_out, "expert_usd": usd}
        if not ok:
            return f"[{alias}] {self._budget_text(led.end_reason[i])}", {"outcome": "budget", **info}
        p = sigmoid(success_logit(model, task.domain, self.fcfg.level_offsets[task.level], task.hidden_difficulty))
        info["p"] = p
        j = self.progress(state, i)
        if j is None:
            return (f"[{alias}] The records no longer match a consistent way to fulfil the request; "
                    f"no action taken."), {"outcome": "off_track", **info}
        segment = state.gold[i].segments[j]
        if rng.random() < p:
            return self._run_calls(state, i, alias, segment), {"outcome": "correct", **info}
        *_, last = segment
        if rng.random() >= self.fcfg.wrong_action_prob:
            return f"[{alias}] I am not sure how to proceed; no action taken.", {"outcome": "nothing", **info}
        if last.name == RESPOND:
            facts = task.required_info
            if not facts:
                return f"[{alias}] I am not sure how to proceed; no action taken.", {"outcome": "nothing", **info}
            drop = int(rng.integers(len(facts)))
            kept = [f for k, f in enumerate(facts) if k != drop]
            wrong = Action(RESPOND, {"message": "All done." + (" Details: " + "; ".join(kept) + "." if kept else "")})
        else:
            spec = self.domains[task.domain].by_name[last.name]
            wrong = Action(last.name, perturb_arguments(spec, last.arguments, state.dbs[i], rng))
        return self._run_calls(state, i, alias, (wrong,)), {"outcome": "wrong", **info}

    def _run_calls(self, state: FunctionsState, i: int, alias: str, calls: Sequence[Action]) -> str:
        domain, lines = self.domains[state.tasks[i].domain], []
        for a in calls:
            if a.name == RESPOND:
                self._finish(state, i, a.arguments["message"])
                lines.append(f"[{alias}] responded to the user: {a.arguments['message']} (conversation ended)")
                break
            res = domain.call(a.name, a.arguments, state.dbs[i])
            if res.ok:
                state.dbs[i] = res.db
                state.touched[i].update(res.touched)
            # plain name(args) rather than <tool_call> tags: observations never contain the policy's markup
            lines.append(f"[{alias}] called {a.name}({json.dumps(a.arguments, sort_keys=True)}) -> {res.output}")
        return "\n".join(lines)

    def results(self, state: FunctionsState):
        pref = np.array([t.preference for t in state.tasks], np.float32).reshape(len(state.tasks), -1)
        return state.ledger.results(self.tool_aliases, pref, [t.task_id for t in state.tasks],
                                    [t.domain for t in state.tasks])

    # -------------------------------------------------------------------------------- helpers
    def gold_texts(self, task: FunctionsTask) -> list[str]:
        """The gold action sequence as assistant turns (tool-call texts), for tests and scripted teachers."""
        return [format_tool_call(a.name, a.arguments) for a in task.gold_actions]

    def db_digest(self, state: FunctionsState, i: int) -> str:
        """Content hash of episode i's database."""
        return db_digest(state.dbs[i])


# ---------------------------------------------------------------------------------------------- policies
# Scripted policies for the function-calling setting, with the interface of envs/baselines.py
# (``act(prompt, history, rng) -> str``, acting only on what a policy sees), under the same names, so
# the factory and the stats CLI can use them when ``env.setting == "functions"`` (see make_function_policy).

_ID_RE = re.compile(r"\b[A-Z]{2}\d{5}\b")
_COMPACT_ITEM_RE = re.compile(r"(expert-[\w-]+) ([\w-]+) \$(\d+(?:\.\d+)?)")
_FULL_ITEM_RE = re.compile(r"(expert-[\w-]+): .*? \(([\w-]+)\), \$[\d.]+ in / \$(\d+(?:\.\d+)?) out")


@dataclasses.dataclass(frozen=True)
class ExpertItem:
    """One offered expert as the policy reads it from the call_expert description."""

    alias: str
    tag: str
    price_out: float


def parse_experts(tools: Sequence[Mapping[str, Any]]) -> list[ExpertItem]:
    """The experts offered in a prompt's tool list (both description styles); [] if none."""
    for tool in tools:
        fn = tool.get("function", tool)
        if fn.get("name") == CALL_EXPERT:
            desc = fn.get("description", "")
            found = _FULL_ITEM_RE.findall(desc) or _COMPACT_ITEM_RE.findall(desc)
            return [ExpertItem(a, t, float(p)) for a, t, p in found]
    return []


def request_count(prompt: Mapping[str, Any]) -> int:
    """The visible cue of a task's size: how many requests the user's message makes."""
    user = prompt["messages"][-1]["content"]
    return 1 + user.count("Then, ")


def _strongest(items: Sequence[ExpertItem]) -> ExpertItem:
    top = [m for m in items if m.tag == "general-top"]
    return top[0] if top else max(items, key=lambda m: (m.price_out, m.alias))


def _cheapest(items: Sequence[ExpertItem]) -> ExpertItem:
    return min(items, key=lambda m: (m.price_out, m.alias))


def _rule(n_requests: int, items: Sequence[ExpertItem]) -> ExpertItem:
    """Cheap experts for short requests, the strongest for long ones (errors compound per step)."""
    if n_requests <= 1:
        return _cheapest(items)
    if n_requests == 2:
        mid = [m for m in items if m.tag in ("general-mid", "general-top")]
        return _cheapest(mid) if mid else _strongest(items)
    return _strongest(items)


@dataclasses.dataclass
class ExpertRouter:
    """Delegates every step to an expert chosen by ``choose(n_requests, items, rng)``."""

    name: str
    choose: Any

    def act(self, prompt: Mapping[str, Any], history, rng: np.random.Generator) -> str:
        items = parse_experts(prompt["tools"])
        if not items:
            return format_tool_call(RESPOND, {"message": "I cannot help with this."})
        return format_tool_call(CALL_EXPERT, {"expert": self.choose(request_count(prompt), items, rng).alias})


@dataclasses.dataclass
class RandomFunctionPolicy:
    """A random call each turn: an expert, a domain function with random well-typed arguments (ids taken
    from the conversation), or respond."""

    name: str = "random"

    def act(self, prompt: Mapping[str, Any], history, rng: np.random.Generator) -> str:
        u = rng.random()
        items = parse_experts(prompt["tools"])
        if u < 0.4 and items:
            return format_tool_call(CALL_EXPERT, {"expert": items[int(rng.integers(len(items)))].alias})
        if u < 0.5:
            return format_tool_call(RESPOND, {"message": "Done."})
        text = prompt["messages"][-1]["content"] + " ".join(o for _, o in history)
        ids = sorted(set(_ID_RE.findall(text))) or ["XX00000"]
        fns = [t["function"] for t in prompt["tools"] if t["function"]["name"] not in (CALL_EXPERT, RESPOND)]
        fn = fns[int(rng.integers(len(fns)))]
        args = {}
        for name, p in fn["parameters"]["properties"].items():
            if "enum" in p:
                args[name] = p["enum"][int(rng.integers(len(p["enum"])))]
            elif p["type"] == "integer":
                args[name] = int(rng.integers(p.get("minimum", 0), p.get("maximum", 10) + 1))
            elif p["type"] == "number":
                args[name] = round(float(rng.uniform(p.get("minimum", 0), min(p.get("maximum", 1e3), 1e3))), 2)
            elif p["type"] == "boolean":
                args[name] = bool(rng.random() < 0.5)
            else:
                args[name] = ids[int(rng.integers(len(ids)))]
        return format_tool_call(fn["name"], args)


@dataclasses.dataclass
class NoisyFunctionPolicy:
    """``base`` with probability ``1 - eps``, else ``RandomFunctionPolicy``."""

    base: Any
    eps: float
    name: str = ""

    def __post_init__(self):
        if not 0 <= self.eps <= 1:
            raise ValueError(f"eps must be in [0, 1], got {self.eps}")
        self.name = self.name or f"{self.base.name}_eps{self.eps:g}"

    def act(self, prompt, history, rng):
        if rng.random() < self.eps:
            return RandomFunctionPolicy().act(prompt, history, rng)
        return self.base.act(prompt, history, rng)


FUNCTION_POLICIES = {
    "always_strongest": lambda: ExpertRouter("always_strongest", lambda n, items, rng: _strongest(items)),
    "cheapest": lambda: ExpertRouter("cheapest", lambda n, items, rng: _cheapest(items)),
    "random_router": lambda: ExpertRouter("random_router", lambda n, items, rng: items[int(rng.integers(len(items)))]),
    "rule_based": lambda: ExpertRouter("rule_based", lambda n, items, rng: _rule(n, items)),
    "random": RandomFunctionPolicy,
}


def make_function_policy(name: str):
    """A scripted policy for this setting by the baselines' names (always_strongest | cheapest | random |
    random_router | rule_based, or ``<name>_eps<p>`` for a noisy variant)."""
    if name in FUNCTION_POLICIES:
        return FUNCTION_POLICIES[name]()
    if "_eps" in name:
        base, eps = name.rsplit("_eps", 1)
        if base in FUNCTION_POLICIES:
            try:
                return NoisyFunctionPolicy(FUNCTION_POLICIES[base](), float(eps))
            except ValueError:
                pass
    raise ValueError(f"unknown function-calling policy {name!r}; known {sorted(FUNCTION_POLICIES)} "
                     "(+ '_eps<p>' variants)")
