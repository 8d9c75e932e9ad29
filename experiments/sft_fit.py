"""How well an SFT checkpoint fits its own teacher data, per kind of action token.

    python experiments/sft_fit.py RUN_DIR N [hydra overrides of that run, e.g. env.max_turns=4 ...]

For the first N trajectories of <run_dir>/data/sft_trajectories.jsonl it prints the mean -log p of the two
tokens that carry the routing decision (the tool name, the model-slot digit of a ``model-<k>`` alias) and
of the other action tokens (the call's JSON template). The run must use slot aliases (qa_quickstart).
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from hydra import compose, initialize_config_dir

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestra_jax.checkpoint import Checkpointer  # noqa: E402
from orchestra_jax.config import to_config  # noqa: E402
from orchestra_jax.model import init_params  # noqa: E402
from orchestra_jax.sft import Trajectory, encode_trajectory, next_token_logprobs  # noqa: E402
from orchestra_jax.text.tokenizer import load_tokenizer  # noqa: E402


def main(argv) -> int:
    if len(argv) < 2:
        sys.exit(__doc__)
    run, n = argv[0], int(argv[1])
    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = to_config(compose("config", overrides=["+experiment=quickstart", f"run_dir={run}"] + list(argv[2:])))
    tok = load_tokenizer(os.path.join(run, "tokenizer"))
    mc, L = cfg.model, cfg.rollout.max_seq_len
    ck = Checkpointer(os.path.join(run, "sft"), keep=1, async_save=False)
    if ck.latest_step() is None:
        sys.exit(f"no SFT checkpoint in {run}/sft")
    state, _ = ck.restore(None, {"params": init_params(mc, jax.random.PRNGKey(0))})
    params = state["params"]
    with open(os.path.join(run, "data", "sft_trajectories.jsonl")) as f:
        rows = [json.loads(line) for line in f][:n]
    fn = jax.jit(lambda p, t, sg: next_token_logprobs(mc, p, t, jnp.arange(t.shape[1])[None], sg))
    tool, digit, other = [], [], []
    for r in rows:
        t, m = encode_trajectory(tok, Trajectory(
            messages=tuple(r["prompt"]["messages"]), tools=tuple(r["prompt"].get("tools") or ()),
            actions=tuple(r["actions"]), observations=tuple(r["observations"])), tools_format=cfg.rollout.tools_format)
        if len(t) > L:
            continue
        tp, sg = np.zeros(L, np.int32), np.zeros(L, np.int32)
        tp[:len(t)], sg[:len(t)] = t, 1
        lp = np.asarray(fn(params, jnp.asarray(tp)[None], jnp.asarray(sg)[None]))[0]
        idx = np.nonzero(m)[0]
        for a in np.split(idx, np.nonzero(np.diff(idx) > 1)[0] + 1):
            strs = [tok.decode([int(x)]) for x in t[a]]
            ti = 6  # <tool_call> \n {" name ": space" -> the tool name's first token
            di = max(i for i, s in enumerate(strs) if s == "-") + 1
            tool.append(lp[a[ti]])
            digit.append(lp[a[di]])
            other += [lp[a[i]] for i in range(len(a)) if i not in (ti, di)]
    print(f"{run}: {len(rows)} trajectories, {len(tool)} actions")
    for name, v in (("tool-name token", tool), ("model-digit token", digit), ("other action tokens", other)):
        v = np.asarray(v)
        print(f"{name:20s} mean -log p {-v.mean():.3f} nats, mean p {np.exp(v).mean():.3f}, "
              f"share with p > 0.5 {np.mean(np.exp(v) > 0.5):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
