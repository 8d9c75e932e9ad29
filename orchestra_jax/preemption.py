"""Stop requests for the training loop: SIGTERM (a preempted VM, a Kubernetes eviction, SLURM's requeue) and
SIGINT (Ctrl-C) ask the loop to save the step it is on and exit, instead of dying and losing every step since
the last periodic checkpoint.

The handler only sets a flag; the loop checks ``guard.stop_requested(step)`` once per step (after the
update), saves that step and raises ``Preempted``, whose exit status is 128 + the signal number, so
schedulers see an interrupted job (and restart it) rather than a finished one. A second Ctrl-C kills at once.

On a multi-host job JAX's own preemption notifier owns SIGTERM (orbax's ``reached_preemption`` reports it,
at a step all hosts agree on), so only SIGINT is taken here; ``stop_requested`` then ORs the flag over all
processes so every host stops at the same step.
"""
from __future__ import annotations

import signal
import sys

import jax
import numpy as np


class Preempted(SystemExit):
    """Raised by the loop after saving on a stop request; ``code`` = 128 + signal number."""

    def __init__(self, signum: int, step: int, where: str):
        self.signum, self.step, self.where = signum, step, where
        super().__init__(128 + signum)

    def __str__(self) -> str:
        return (f"{signal.Signals(self.signum).name} received: saved the checkpoint of step {self.step} at "
                f"{self.where}; rerun the same command to resume")


class PreemptionGuard:
    """Context manager installing the SIGTERM/SIGINT handlers (restored on exit)."""

    def __init__(self, multihost: bool | None = None):
        self.multihost = jax.process_count() > 1 if multihost is None else multihost
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, no save
        self.signum = signum
        print(f"{signal.Signals(signum).name} received: finishing the current step, then saving and exiting",
              file=sys.stderr, flush=True)

    def request(self, signum: int = signal.SIGTERM) -> None:
        """What the handler does (tests and callers that learn of a preemption another way)."""
        self.signum = signum

    def __enter__(self) -> "PreemptionGuard":
        signals = [signal.SIGINT] + ([] if self.multihost else [signal.SIGTERM])
        for s in signals:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: no handlers, the loop still polls orbax
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def stop_requested(self) -> bool:
        """Whether any process got a stop signal (a collective on multi-host jobs: call it on every host)."""
        local = self.signum is not None
        if not self.multihost:
            return local
        from jax.experimental import multihost_utils

        flags = np.asarray(multihost_utils.process_allgather(np.int32(self.signum or 0))).reshape(-1)
        if self.signum is None and flags.any():
            self.signum = int(flags[flags > 0][0])
        return bool(flags.any())
