"""What a function-calling episode shows the policy: the offered experts and their prices (the QA
setting's rules), the preference, the tool schemas and the first messages."""
from __future__ import annotations

import math
from typing import Any

from orchestra_jax.envs import preferences as prefs
from orchestra_jax.envs.functions.tasks import CALL_EXPERT, RESPOND
from orchestra_jax.envs.tools import price_text


def sample_menu(cfg, tool_aliases, rng, split: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Offered experts and their price multipliers (the QA setting's rules)."""
    aliases = list(tool_aliases)
    held = [a for a in cfg.heldout_aliases if a in aliases]
    pool = aliases if split == "unseen_tools" else ([a for a in aliases if a not in held] or aliases)
    if cfg.randomize_tools:
        chosen = {a for a, k in zip(pool, rng.random(len(pool)) < cfg.keep_prob) if k}
        if not chosen:
            chosen.add(pool[int(rng.integers(len(pool)))])
    else:
        chosen = set(pool)
    if split == "unseen_tools" and held:
        chosen.add(held[int(rng.integers(len(held)))])
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


def sample_preference(cfg, tool_aliases, rng, aliases):
    """P over [all aliases..., outcome, cost, latency] and its instruction ("" in fixed mode)."""
    if cfg.preference_mode == "fixed":
        return prefs.fixed_preference(len(tool_aliases), cfg.pref_outcome, cfg.pref_cost, cfg.pref_latency), ""
    p, text = prefs.sample_preference(rng, tool_aliases, aliases)
    return tuple(float(x) for x in p), text


def tool_schemas(env, task) -> list[dict]:
    """The domain's functions, call_expert (the offered experts, tag and price each) and respond."""
    experts = []
    for a, scale in zip(task.aliases, task.price_scales):
        m = env.pool.get(a).model
        if env.cfg.description_style == "full":
            experts.append(f"{a}: {m.display} ({m.tag}), ${price_text(m.price_in * scale)} in / "
                           f"${price_text(m.price_out * scale)} out per 1M tokens")
        else:
            experts.append(f"{a} {m.tag} ${price_text(m.price_out * scale)}")
    expert_tool = {"type": "function", "function": {
        "name": CALL_EXPERT,
        "description": "An expert agent reads the conversation and the records and carries out the next "
                       "unfinished request with the tools (or writes the final reply when all are done). "
                       "Experts: " + "; ".join(experts) + ".",
        "parameters": {"type": "object", "properties": {"expert": {
            "type": "string", "enum": list(task.aliases), "description": "Which expert."}}, "required": ["expert"]}}}
    respond_tool = {"type": "function", "function": {
        "name": RESPOND,
        "description": "Final answer to the user; ends the conversation. Include every piece of information "
                       f"the user asked for (at most {env.fcfg.max_message_chars} characters).",
        "parameters": {"type": "object", "properties": {"message": {
            "type": "string", "description": "Message to the user."}}, "required": ["message"]}}}
    return [f.json_schema() for f in env.domains[task.domain].functions] + [expert_tool, respond_tool]

def prompt(env, task) -> dict[str, Any]:
    messages = []
    if env.cfg.system_prompt:
        messages.append({"role": "system", "content": (
            f"{env.domains[task.domain].description} Carry out the user's requests in order with the "
            f"tools, one call per turn, then call {RESPOND} with the answer.")})
    messages.append({"role": "user", "content": task.instruction + (f"\n{task.preference_text}" if task.preference_text else "")})
    return {"messages": messages, "tools": env.tool_schemas(task)}
