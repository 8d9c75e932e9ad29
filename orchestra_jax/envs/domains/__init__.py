"""Function-calling domains: the engine's building blocks (``base``) and one declarative spec per domain
(``<name>.yaml``, loaded and validated by ``orchestra_jax.envs.functions.spec``)."""

from orchestra_jax.envs.domains.base import (
    DB, Action, CallResult, Domain, DomainError, FunctionSpec, Param, apply_writes, call_function, db_digest,
    validate_arguments,
)

__all__ = ["DB", "Action", "CallResult", "Domain", "DomainError", "FunctionSpec", "Param", "apply_writes",
           "call_function", "db_digest", "validate_arguments"]
