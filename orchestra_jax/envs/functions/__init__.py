"""Function-calling setting (ToolScale / tau2-like): one schema-driven domain engine, one declarative spec
per domain (``envs/domains/*.yaml``), multi-intent / conditional / evolved tasks with gold actions, and
simulated experts that act (and can fail).

    spec.py      load and validate a domain spec (errors name the field)
    engine.py    spec -> seeded database, tool implementations, JSON schemas
    requests.py  request kinds, their gold action programs, task recipes and evolution
    experts.py   the expert pool (skills per domain and request kind, prices, speed)
    agent.py     the simulated expert behind call_expert
    tasks.py     FunctionsTask and the required-information check
    env.py       FunctionsEnv (the batched Env)
    policies.py  scripted routers (make_function_policy); stats.py the per-domain tables and checks
"""
from orchestra_jax.envs.functions.config import HELDOUT_DOMAINS, TRAIN_DOMAINS, FunctionsConfig  # noqa: F401  (leaf)
from orchestra_jax.envs.functions.tasks import (  # noqa: E402
    CALL_EXPERT, RESPOND, SETTING, FunctionsTask, RequestInfo, info_given, normalise_text,
)
from orchestra_jax.envs.functions.env import SPLITS, FunctionsEnv, FunctionsState, execute  # noqa: E402
from orchestra_jax.envs.functions.policies import (  # noqa: E402
    FUNCTION_POLICIES, ExpertRouter, make_function_policy, parse_experts,
)

__all__ = ["CALL_EXPERT", "FUNCTION_POLICIES", "HELDOUT_DOMAINS", "RESPOND", "SETTING", "SPLITS", "TRAIN_DOMAINS",
           "ExpertRouter", "FunctionsConfig", "FunctionsEnv", "FunctionsState", "FunctionsTask", "RequestInfo",
           "execute", "info_given", "make_function_policy", "normalise_text", "parse_experts"]
