"""The simulated expert agent: ``run_expert(env, state, i, alias)`` does one call_expert turn of episode i.

It works on ``env.next_request`` (the first request not yet handled): it plans the request's calls from
the records (the gold program of that request, which is what a correct agent computes on the database the
episode is in, since writes off the gold path end the episode), draws success with its skill for the
domain and request kind, and on failure makes one mistake (see ``experts.py``). Every call it makes goes
through ``env.apply_call``, the same path as the policy's own calls. With every request handled it writes
the final reply from the facts the conversation holds (a failing reply drops one). It is billed for the
tokens it reads at each step (instructions + conversation + its own reads so far) and writes.
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from orchestra_jax.envs.base import episode_rng
from orchestra_jax.envs.domains.base import Action, perturb_arguments
from orchestra_jax.envs.functions.experts import draw_mistake
from orchestra_jax.envs.functions.tasks import reply_text

REPLY = "reply"


def _alternative_id(env, state, i, action: Action, seg, rng) -> Action | None:
    """The write with its entity argument (not the user) replaced by another plausible id."""
    task = state.tasks[i]
    domain, rt = env.domains[task.domain], env.runtimes[task.domain]
    spec = domain.by_name[action.name]
    refs = [p for p in spec.params if p.ref is not None and p.ref != rt.tools.user.name]
    if not refs:
        return None
    p = refs[0]
    cands = []
    db = state.dbs[i]
    for a in seg[:-1]:  # ids the request's own reads show (another train on the route, another order)
        res = domain.call(a.name, a.arguments, db)
        if res.ok:
            rows = json.loads(res.output)
            rows = rows if isinstance(rows, list) else [rows]
            cands += [r[p.name] for r in rows if isinstance(r, dict) and r.get(p.name) not in (None, action.arguments[p.name])]
    if not cands:
        keys = list(db[p.ref])
        cands = [k for k in (keys[int(j)] for j in rng.integers(len(keys), size=3)) if k != action.arguments[p.name]]
    if not cands:
        return None
    return Action(action.name, {**action.arguments, p.name: cands[int(rng.integers(len(cands)))]})


def _wrong_read(env, state, i, action: Action, rng) -> Action:
    """The read of another row (another item id, another info key)."""
    spec = env.domains[state.tasks[i].domain].by_name[action.name]
    p = spec.params[0]
    if p.enum is not None:
        choices = [v for v in p.enum if v != action.arguments[p.name]]
    elif p.ref is None:  # find by a generated name: another row's name
        table = next(t.table for t in env.runtimes[state.tasks[i].domain].spec.tools if t.name == action.name)
        names = sorted({getattr(r, p.name) for r in state.dbs[i][table].values()} - {action.arguments[p.name]})
        choices = [names[int(rng.integers(len(names)))]] if names else []
    else:
        keys = list(state.dbs[i][p.ref])
        choices = [k for k in (keys[int(j)] for j in rng.integers(len(keys), size=3)) if k != action.arguments[p.name]]
    return Action(action.name, {p.name: choices[int(rng.integers(len(choices)))]}) if choices else action


def _wrong_argument(env, state, i, action: Action, rng) -> Action:
    spec = env.domains[state.tasks[i].domain].by_name[action.name]
    plain = dataclasses.replace(spec, params=tuple(p for p in spec.params if p.ref is None))
    return Action(action.name, perturb_arguments(plain, action.arguments, state.dbs[i], rng))


def run_expert(env, state, i: int, alias: str, policy_tokens_in=None) -> tuple[str, dict]:
    task, led, fc = state.tasks[i], state.ledger, env.fcfg
    prof = env.pool.get(alias)
    scale = task.price_scales[task.aliases.index(alias)]
    rng = episode_rng(state.seed, state.episode_ids[i], int(led.turns[i]), 1)
    difficulty = fc.level_offsets[task.level]
    r = env.next_request(state, i)
    kind = REPLY if r is None else task.requests[r].kind
    p = prof.p_success(task.domain, kind, difficulty, task.hidden_difficulty)
    ok = bool(rng.random() < p)
    outcome, calls, reply = "correct", (), None
    if r is None:
        facts = env.known_facts(state, i)
        if not ok and facts:
            drop = int(rng.integers(len(facts)))
            facts, outcome = [f for k, f in enumerate(facts) if k != drop], "incomplete_reply"
        reply = reply_text(facts)
    else:
        req, seg = task.requests[r], state.gold[i].segments[r]
        calls = seg
        if not ok:
            outcome = draw_mistake(env.pool, rng, req.write)
            if outcome == "wrong_entity":
                wrong = (_alternative_id(env, state, i, seg[-1], seg, rng) or _wrong_argument(env, state, i, seg[-1], rng)
                         if req.write else _wrong_read(env, state, i, seg[-1], rng))
                calls = seg[:-1] + (wrong,)
            elif outcome == "wrong_argument":
                calls = seg[:-1] + (_wrong_argument(env, state, i, seg[-1], rng),)
            elif outcome in ("skipped_step", "premature_reply"):
                calls = seg[:-1]
                if outcome == "premature_reply":
                    reply = reply_text(env.known_facts(state, i))
    # billing: dry-run the calls (pure) to size what the agent reads at each step
    domain, db, outputs = env.domains[task.domain], state.dbs[i], []
    for a in calls:
        res = domain.call(a.name, a.arguments, db)
        db = res.db if res.ok else db
        outputs.append(res.output)
    ctx = int(policy_tokens_in[i]) if policy_tokens_in is not None else state.context_chars[i] // 4
    n_steps = len(calls) + 1
    read = 0
    tokens_in = 0
    for s in range(n_steps):
        tokens_in += env.pool.instruction_tokens + ctx + read
        read += len(outputs[s]) // 4 if s < len(outputs) else 0
    s = 0.3
    tokens_out = int(sum(max(1, round(prof.tokens_per_step * math.exp(s * rng.standard_normal() - 0.5 * s * s)))
                         for _ in range(n_steps)))
    led.record_call(i, env.alias_index[alias])
    usd = prof.cost_usd(tokens_in, tokens_out, scale)
    within, _, _ = led.charge(i, usd, tokens_in + tokens_out,
                              prof.latency_s(tokens_out, rng) + fc.function_latency_s * len(calls))
    info = {"tokens_in": tokens_in, "tokens_out": tokens_out, "expert_usd": usd, "p": p, "kind": kind,
            "request": -1 if r is None else r}
    if hasattr(led, "log_call"):  # the shared Ledger's call log (behaviour analysis only)
        led.log_call(i, {"turn": int(led.turns[i]), "tool": "call_expert", "alias": alias, "profile": prof.model.display,
                         "valid": True, "cost_usd": usd, "outcome": outcome if within else "budget", "correct": outcome == "correct"})
    if not within:
        return f"[{alias}] {env.budget_text(led.end_reason[i])}", {"outcome": "budget", **info}
    lines = []
    for a in calls:
        if led.done[i]:
            break
        out, stage = env.apply_call(state, i, a.name, a.arguments)
        cut = fc.expert_read_chars
        if cut and not domain.by_name[a.name].write and len(out) > cut:  # the expert read it, the orchestrator gets a gist
            out = f"{out[:cut]}... ({len(out) - cut} more characters)"
        # plain name(args) rather than <tool_call> tags: observations never contain the policy's markup
        lines.append(f"[{alias}] called {a.name}({json.dumps(a.arguments, sort_keys=True)}) -> {out}")
    if r is not None and outcome == "wrong_entity" and not task.requests[r].write:
        state.reads_wrong[i].add(r)
    if not led.done[i]:
        if reply is not None:
            env.finish(state, i, reply)
            lines.append(f"[{alias}] responded to the user: {reply} (conversation ended)")
        else:
            lines.append(f"[{alias}] I have taken care of this request.")
    return "\n".join(lines), {"outcome": outcome, **info}
