"""The rollout's config and its output: RolloutConfig, Rollout (per-episode tokens, masks, log-probs, turns and
env results), why an episode ended, and the helpers that reshape a Rollout (concatenate, refused-turn tokens,
sequences for packing)."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from orchestra_jax.model.sampling import SamplingConfig
from orchestra_jax.text import chat

# Why an episode ended (Rollout.done_reason).
DONE_FINISHED = "finished"          # the env ended it (an answer was given, or the setting's own end)
DONE_TURN_BUDGET = "turn_budget"    # rollout max_turns or the env's max_turns used up
DONE_LENGTH_BUDGET = "length_budget"  # the sequence hit max_seq_len (runaway: solved False)
DONE_ENV_BUDGET = "env_budget"      # the env's token or dollar budget was exhausted
DONE_REASONS = (DONE_FINISHED, DONE_TURN_BUDGET, DONE_LENGTH_BUDGET, DONE_ENV_BUDGET)
# env end_reason recorded for episodes the rollout ends because the sequence no longer fits.
ENV_LENGTH_REASON = "max_length"


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Episode limits and batching of `rollout`.

    group_size: G, episodes per task (one group).
    max_turns: assistant turns per episode at most (the env may end episodes earlier).
    max_new_tokens: sampled tokens per turn at most; overrides sampling.max_new_tokens.
    max_seq_len: KV-cache size = the longest episode (prompt + turns + observations); a sequence that
      reaches it ends as runaway (done reason length_budget, solved False).
    prefill_window: prompts and observations are prefilled in windows of exactly this many tokens (several
      calls for a longer input), so the prefill compiles once per row count whatever the lengths; it also
      bounds the [B, window, V] logits buffer.
    tools_format: how the prompt lists the tools (text.chat.TOOLS_FORMATS): qwen (Qwen's wording, JSON schemas),
      compact (short wording, JSON without spaces) or signatures (one `name(arg: type) description` line each).
    share_prompt_prefill: prefill a group's prompt once and copy its cache row to the G episodes (when the G
      prompts are the same tokens); false prefills every episode's row (same values, G times the work).
    compact_rows: after each turn's env step, when the running episodes fit in half the cache rows (or a
      quarter, ...), keep only their rows, so the observation prefill and the later turns do not compute the
      finished episodes' rows (one decode and one
      prefill program per row count: B, ceil(B/2), ceil(B/4), ...). Each row then samples with its own key (fold_in of
      the turn's key with its episode index), so the samples do not depend on the row an episode sits in;
      the draws differ from compact_rows false (the whole batch from one key).
    compact_min_rows: compaction never shrinks the cache below this many rows. A smaller row count saves
      little per decode step at a small batch but compiles its own decode, prefill and row-gather programs
      (about 1.5 s each pair at the quickstart's shape on CPU; tried at 8 there: no gain, conf/rollout/default.yaml).
    sampling: temperature / top-p / greedy.
    """

    group_size: int = 4
    max_turns: int = 4
    max_new_tokens: int = 64
    max_seq_len: int = 1024
    prefill_window: int = 64
    tools_format: chat.ToolsFormat = chat.ToolsFormat.qwen
    share_prompt_prefill: bool = True
    compact_rows: bool = True
    compact_min_rows: int = 1
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)

    def __post_init__(self):
        for name in ("group_size", "max_turns", "max_new_tokens", "max_seq_len", "prefill_window",
                     "compact_min_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RolloutConfig.{name} must be a positive int, got {value!r}")
        if self.tools_format not in chat.TOOLS_FORMATS:  # the config checks it too; this is for direct use
            raise ValueError(f"RolloutConfig.tools_format must be one of {chat.TOOLS_FORMATS}, got {self.tools_format!r}")

    @property
    def sampling_config(self) -> SamplingConfig:
        """The sampling config actually used (max_new_tokens from this config)."""
        return dataclasses.replace(self.sampling, max_new_tokens=self.max_new_tokens)


@dataclasses.dataclass
class Rollout:
    """N = n_groups * group_size episodes; episode i belongs to group i // group_size."""

    tokens: list              # N x int32 [T_i]: prompt, sampled turns, appended <|im_end|>, observations
    assistant_mask: list      # N x int32 [T_i]: 1 on sampled policy tokens, 0 elsewhere
    sampled_logp: list        # N x float32 [T_i]: policy log-prob (temperature 1) of token t at index t; 0 off-mask
    sampling_logp: list       # N x float32 [T_i]: log-prob under the sampling distribution (0 if greedy / off-mask)
    prompt_len: np.ndarray    # [N] int32
    turn_cost_usd: np.ndarray   # [N, max_turns] float64: env $ per turn (0 for turns not taken)
    turn_latency_s: np.ndarray  # [N, max_turns] float64
    turn_new_tokens: np.ndarray  # [N, max_turns] int32: tokens sampled per turn
    turn_start: np.ndarray    # [N, max_turns] int32: index in tokens of the turn's first sampled token
    turn_valid: np.ndarray    # [N, max_turns] bool: the env took the turn's action as a well-formed call (True
                              # for turns not sent to the env: not taken, or cut off as runaway)
    n_turns: np.ndarray       # [N] int32: assistant turns taken
    done_reason: list         # N x str in DONE_REASONS
    actions: list             # N x list[str]: decoded text of each turn's sampled ids (what env.step got)
    observations: list        # N x list[str]: env observation after each turn (inside <tool_response>)
    results: Any              # envs.EpisodeResults, flat over N episodes (solved forced False for runaways)
    n_groups: int
    group_size: int

    @property
    def num_episodes(self) -> int:
        return len(self.tokens)

    def grouped(self, array) -> np.ndarray:
        """[N, ...] -> [n_groups, group_size, ...]."""
        array = np.asarray(array)
        return array.reshape((self.n_groups, self.group_size) + array.shape[1:])

    @property
    def features(self) -> np.ndarray:
        """[groups, G, F] float64, raw units (calls per alias, outcome, cost $, latency s)."""
        return self.grouped(self.results.features)

    @property
    def solved(self) -> np.ndarray:
        """[groups, G] bool."""
        return self.grouped(self.results.solved)

    @property
    def preference(self) -> np.ndarray:
        """[groups, F] float32: the group's preference vector (the same for every episode of a task)."""
        return self.grouped(self.results.preference)[:, 0]

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.tokens], np.int32)


def concatenate_rollouts(parts: Sequence[Rollout]) -> Rollout:
    """One Rollout of several (same group size), episodes in order."""
    from orchestra_jax.envs.base import EpisodeResults

    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    if len({p.group_size for p in parts}) != 1:
        raise ValueError(f"concatenate_rollouts: group sizes differ {[p.group_size for p in parts]}")
    out = {}
    for f in dataclasses.fields(Rollout):
        values = [getattr(p, f.name) for p in parts]
        if f.name == "results":
            out[f.name] = EpisodeResults.concatenate(values)
        elif f.name == "n_groups":
            out[f.name] = sum(values)
        elif f.name == "group_size":
            out[f.name] = values[0]
        elif isinstance(values[0], list):
            out[f.name] = [x for v in values for x in v]
        else:
            out[f.name] = np.concatenate(values, axis=0)
    return Rollout(**out)


def invalid_turn_tokens(ro: Rollout) -> list[np.ndarray]:
    """Per episode, bool [T_i]: True on the sampled tokens of the turns the env refused (an action that was
    not a well-formed call of an available tool)."""
    out = []
    for i, mask in enumerate(ro.assistant_mask):
        bad = np.zeros(len(mask), bool)
        for t in np.flatnonzero(~ro.turn_valid[i]):
            start = int(ro.turn_start[i, t])
            bad[start:start + int(ro.turn_new_tokens[i, t])] = True
        out.append(bad & (mask == 1))
    return out


def rollout_to_sequences(ro: Rollout):
    """(sequences, fields) ready for data.packing.pack: fields = {"loss_mask", "sampled_logp"} per episode.

    loss_mask is the assistant mask (never 1 on the first token of a sequence: every episode starts with
    its prompt); sampled_logp is the GRPO old_logp in the ARCHITECTURE.md convention.
    """
    fields = {"loss_mask": list(ro.assistant_mask), "sampled_logp": list(ro.sampled_logp)}
    return list(ro.tokens), fields
