"""Synthetic function-calling domains (ToolScale-like), one module per domain."""

from orchestra_jax.envs.domains.base import (
    DB, Action, CallResult, Domain, DomainError, FunctionSpec, Intent, Param, apply_writes, call_function,
    db_digest, validate_arguments,
)
from orchestra_jax.envs.domains.finance import Finance
from orchestra_jax.envs.domains.railway import Railway
from orchestra_jax.envs.domains.restaurant import RestaurantDomain

DOMAINS: dict[str, type[Domain]] = {"railway": Railway, "restaurant": RestaurantDomain, "finance": Finance}


def get_domain(name: str) -> Domain:
    """A domain instance by name; ValueError naming the known domains otherwise."""
    if name not in DOMAINS:
        raise ValueError(f"unknown function-calling domain {name!r}; known: {sorted(DOMAINS)}")
    return DOMAINS[name]()


__all__ = ["DB", "DOMAINS", "Action", "CallResult", "Domain", "DomainError", "FunctionSpec", "Intent", "Param",
           "apply_writes", "call_function", "db_digest", "get_domain", "validate_arguments"]
