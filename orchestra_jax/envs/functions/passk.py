"""pass@k filtering of function-calling tasks through the factory API: keep the tasks some teacher solves
in k tries and not every try of every teacher solves (ToolScale keeps tasks that are solvable but not
trivial)."""
from __future__ import annotations

from typing import Sequence

from orchestra_jax.envs.factory import teacher_trajectories

DEFAULT_TEACHERS = ("tools_first", "rule_based", "cheapest")


def pass_at_k_tasks(env, tasks: Sequence, seed: int, k: int = 4, teachers: Sequence[str] = DEFAULT_TEACHERS
                    ) -> tuple[list, list[float]]:
    """(kept tasks, solve rate of every task over all teacher tries)."""
    per_task = teacher_trajectories(env, tasks, seed, k=k, teachers=teachers)
    rates = [sum(t.solved for t in trajs) / len(trajs) for trajs in per_task]
    return [t for t, r in zip(tasks, rates) if 0 < r < 1], rates
