"""Fault injection for the crash tests: ``ORCHESTRA_FAULT=phase:step[,phase:step...]`` makes the training
process kill itself at that point of that step, as a preemption or an OOM kill would.

Phases the loop marks: ``rollout`` (rollouts done, update not started), ``update`` (parameters updated,
checkpoint not started), ``save`` (an async save just started, its files still being written). The action
is SIGKILL, or SIGTERM with ``phase:step:term`` (the graceful path). Unset (the default) it does nothing.
"""
from __future__ import annotations

import os
import signal

ENV_VAR = "ORCHESTRA_FAULT"
PHASES = ("rollout", "update", "save")


def parse_faults(text: str | None) -> dict[tuple[str, int], int]:
    """``"update:3,save:2:term"`` -> ``{("update", 3): SIGKILL, ("save", 2): SIGTERM}``."""
    out = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        bits = part.split(":")
        if len(bits) not in (2, 3) or bits[0] not in PHASES or not bits[1].isdigit() or \
                (len(bits) == 3 and bits[2] not in ("kill", "term")):
            raise ValueError(f"{ENV_VAR}={text!r}: expected phase:step[:kill|term] with phase in {PHASES}")
        out[(bits[0], int(bits[1]))] = signal.SIGTERM if len(bits) == 3 and bits[2] == "term" else signal.SIGKILL
    return out


def maybe_fault(phase: str, step: int) -> None:
    """Sends the configured signal to this process if ``ORCHESTRA_FAULT`` names ``phase`` at ``step``."""
    text = os.environ.get(ENV_VAR)
    if not text:
        return
    signum = parse_faults(text).get((phase, int(step)))
    if signum is not None:
        os.kill(os.getpid(), signum)
