"""RolloutProfile: where a rollout's time goes (filled by rl.rollout.rollout(profile=...), for benchmarks)."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class RolloutProfile:
    """Where a rollout's time goes, summed over the rollout calls it was passed to (benchmarks/rollout.py)."""

    total_s: float = 0.0
    prompt_s: float = 0.0       # env.reset, prompt tokenizing and the prompt prefill
    observation_s: float = 0.0  # the observations' prefills
    decode_s: float = 0.0       # sampling the turns
    env_s: float = 0.0          # env.step and the results it needs
    episodes: int = 0
    decode_calls: int = 0
    decode_row_steps: int = 0   # rows x loop steps the decode computed
    sampled_tokens: int = 0     # of which were sampled tokens of running rows
    observation_calls: int = 0  # prefill calls (windows) for observations
    observation_slots: int = 0  # rows x window tokens those calls computed
    observation_tokens: int = 0  # of which were observation tokens

    def add_decode(self, seconds: float, rows: int, num_generated_B) -> None:
        num_generated_B = np.asarray(num_generated_B)
        self.decode_s += seconds
        self.decode_calls += 1
        self.decode_row_steps += rows * int(np.max(num_generated_B, initial=0))
        self.sampled_tokens += int(np.sum(num_generated_B))

    def add_observation(self, seconds: float, rows: int, num_new_B, window: int) -> None:
        num_new_B = np.asarray(num_new_B)
        calls = -(-int(np.max(num_new_B, initial=0)) // window)
        self.observation_s += seconds
        self.observation_calls += calls
        self.observation_slots += calls * rows * window
        self.observation_tokens += int(np.sum(num_new_B))

    def as_dict(self) -> dict[str, float]:
        other = self.total_s - self.prompt_s - self.observation_s - self.decode_s - self.env_s
        return {"rollout_s": self.total_s, "episodes_per_s": self.episodes / max(self.total_s, 1e-9),
                "prompt_s": self.prompt_s, "observation_s": self.observation_s, "decode_s": self.decode_s,
                "env_s": self.env_s, "host_other_s": other,
                "share_decode": self.decode_s / max(self.total_s, 1e-9),
                "share_prompt": self.prompt_s / max(self.total_s, 1e-9),
                "share_observation": self.observation_s / max(self.total_s, 1e-9),
                "share_env": self.env_s / max(self.total_s, 1e-9),
                "decode_calls": self.decode_calls, "decode_row_steps": self.decode_row_steps,
                "sampled_tokens": self.sampled_tokens,
                "decode_row_utilisation": self.sampled_tokens / max(self.decode_row_steps, 1),
                "observation_calls": self.observation_calls, "observation_tokens": self.observation_tokens,
                "observation_slot_utilisation": self.observation_tokens / max(self.observation_slots, 1)}
