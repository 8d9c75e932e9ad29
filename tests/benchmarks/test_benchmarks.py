"""Every benchmark runs in a tiny mode and prints one JSON object with its keys (numbers checked for sense)."""
import importlib
import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def _run(name, argv, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        importlib.import_module(name).main(argv)
    finally:
        sys.path.remove(str(BENCH))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 1, lines
    out = json.loads(lines[0])
    assert {"machine", "date", "benchmark"} <= set(out) and out["benchmark"] == name
    return out


def test_sampling_tiny_mode_ids_equal_transformers(capsys):
    out = _run("sampling", ["--size", "nano", "--batch", "2", "--prompt", "8", "--new", "8", "--reps", "1"], capsys)
    assert out["ids_equal"] is True
    assert out["orchestra_jax_tokens_per_s"] > 0 and out["transformers_tokens_per_s"] > 0 and out["speedup"] > 0
    assert min(out["ours_prefill_s"], out["ours_decode_ms_per_step"], out["decode_matmul_floor_ms_per_step"],
               out["speedup_at_matmul_floor"]) > 0


def test_packing_tiny_mode(capsys):
    out = _run("packing", ["--sequences", "30", "--tasks", "2", "--group", "3", "--row-len", "512", "--reps", "1",
                           "--size", "nano"], capsys)
    j, g = out["jagged"], out["groups"]
    assert 50 <= j["min_len"] <= j["max_len"] <= 12_000 and j["packed_utilisation"] > j["padded_utilisation"]
    assert g["shared_tokens"] < g["episode_tokens"] and g["tokens_ratio"] > 1
    assert g["max_logp_diff"] < 1e-4 and g["unshared_step_s"] > 0 and g["shared_step_s"] > 0
    assert g["shared_rows"] <= g["whole_group_rows"] and g["whole_group_tokens"] <= g["shared_tokens"]


def test_update_step_tiny_mode(capsys):
    out = _run("update_step", ["--sizes", "nano", "--rows", "2", "--row-len", "32", "--reps", "1",
                               "--peak-n", "128"], capsys)
    r = out["sizes"]["nano"]
    assert out["peak_matmul_flops_per_s"] > 0 and r["model_flops"] > 0 and 0 < r["utilisation"]
    assert set(r) == {"params", "update_s", "tokens_per_s", "model_flops", "achieved_flops_per_s", "utilisation",
                      "flops_per_s_vs_neighbouring_peak", "compiled_temp_bytes"}
    assert len(out["peak_measurements"]) == 2 and out["peak_matmul_flops_per_s"] == max(out["peak_measurements"])
    assert out["attention_backend"] in ("block_sparse", "xla")  # auto on one CPU device / on a CPU mesh


def test_update_step_gpu_options_on_cpu(capsys):
    """The GPU figure's options: orchestra_jax's own init builds the transformers model's shape (same param
    count), bf16 compute keeps float32 params, and remat holds fewer temporaries (XLA's memory analysis)."""
    args = ["--sizes", "tiny", "--rows", "2", "--row-len", "128", "--reps", "1", "--peak-n", "128"]
    hf = _run("update_step", args, capsys)
    plain = _run("update_step", args + ["--init", "random", "--dtype", "bfloat16", "--scan-layers"], capsys)
    remat = _run("update_step", args + ["--init", "random", "--dtype", "bfloat16", "--scan-layers", "--remat"],
                 capsys)
    assert plain["sizes"]["tiny"]["params"] == hf["sizes"]["tiny"]["params"]
    assert plain["sizes"]["tiny"]["model_flops"] == hf["sizes"]["tiny"]["model_flops"]
    assert (plain["dtype"], plain["param_dtype"], plain["scan_layers"], remat["remat"]) == (
        "bfloat16", "float32", True, True)
    assert 0 < remat["sizes"]["tiny"]["compiled_temp_bytes"] < plain["sizes"]["tiny"]["compiled_temp_bytes"]
    assert hf["torch_peak_matmul_flops_per_s"] is None  # only with --torch-peak on a GPU


def test_sampling_scan_layers_and_bf16(capsys):
    args = ["--size", "nano", "--batch", "2", "--prompt", "8", "--new", "8", "--reps", "1"]
    scanned = _run("sampling", args + ["--scan-layers"], capsys)
    assert scanned["ids_equal"] is True and scanned["ids_equal_share"] == 1.0 and scanned["torch_device"] == "cpu"
    bf16 = _run("sampling", args + ["--dtype", "bfloat16"], capsys)
    assert bf16["dtype"] == "bfloat16" and 0.0 <= bf16["ids_equal_share"] <= 1.0


def test_attention_tiny_mode(capsys):
    out = _run("attention", ["--rows", "2", "--row-len", "384", "--prompt", "40", "--group", "3",
                             "--continuation", "30", "--reps", "1", "--blocks", "64,128"], capsys)
    for layout in ("shared", "causal"):
        r = out[layout]
        assert r["xla_s"] > 0 and r["block_sparse_s"] > 0 and r["max_out_diff"] < 1e-5 and r["max_grad_diff"] < 1e-4
        assert set(r["block_sparse_s_by_block"]) == {"64", "128"} and min(r["block_sparse_s_by_block"].values()) > 0
    # 6 x 6 blocks of 64 per row: causal computes 21 of 36 pairs; shared (prompt 0-39, continuations 40-129,
    # then padding): the padding query blocks 3-5 skip key blocks 0-1 (no padding key in them), 15 pairs remain
    assert out["block"] == 64
    assert out["causal"]["pairs_computed"] == pytest.approx(21 / 36)
    assert out["shared"]["pairs_computed"] == pytest.approx(15 / 36)


def test_episode_vs_turn_counts(capsys):
    out = _run("episode_vs_turn", ["--episodes", "1", "--prompt", "10", "--turns", "2,2", "--sampled", "3,3",
                                   "--obs", "4,4"], capsys)
    # packed: 10 + 3 + 4 + 3 = 20; per turn: (10 + 3) + (10 + 3 + 4 + 3) = 33
    assert out["packed_tokens_per_episode"] == 20 and out["per_turn_tokens_per_episode"] == 33
    assert out["tokens_ratio"] == pytest.approx(33 / 20)


def test_vs_trl_orchestra_side_tiny_mode(capsys):
    out = _run("vs_trl", ["--side", "orchestra_jax", "--size", "nano", "--prompts", "2", "--group", "2",
                          "--prompt-len", "8", "--completion", "8", "--steps", "1"], capsys)
    assert out["orchestra_jax"]["samples_per_s"] > 0 and "trl" not in out


def test_rollout_tiny_mode(capsys):
    out = _run("rollout", ["--steps", "1", "--warmup", "1", "--tasks", "2", "--group", "2", "model.hidden_size=16",
                           "model.intermediate_size=32", "model.num_layers=1", "rollout.max_turns=2",
                           "rollout.max_new_tokens=4"], capsys)
    assert out["episodes_per_step"] == 4 and out["weights"] == "random"
    for side in ("compact_off", "compact_on"):
        r = out[side]
        assert r["episodes_per_s"] > 0 and r["decode_calls"] >= 1 and 1 <= r["mean_turns"] <= 2
        assert r["sampled_tokens"] <= r["decode_row_steps"] and 0 < r["decode_row_utilisation"] <= 1
        shares = r["share_decode"] + r["share_prompt"] + r["share_observation"] + r["share_env"]
        assert 0 < shares <= 1 + 1e-9 and r["host_other_s"] >= -1e-6
        if r["observation_calls"]:
            assert 0 < r["observation_slot_utilisation"] <= 1
    assert out["speedup_compact"] == pytest.approx(out["compact_off"]["rollout_s"] / out["compact_on"]["rollout_s"])


def test_grpo_throughput_tiny_mode_with_row_buckets_and_loss_positions(capsys):
    """The quickstart's row buckets (a list of buckets per step) and loss positions, on a tiny random policy."""
    out = _run("grpo_throughput", ["--steps", "1", "--tasks", "2", "--group", "2", "model.hidden_size=16",
                                   "model.intermediate_size=32", "model.num_layers=1", "rollout.max_turns=2",
                                   "rollout.max_new_tokens=4"], capsys)
    assert out["row_bucket"] == 1 and out["loss_positions"] == 768 and out["episodes_per_step"] == 4
    assert out["update_s_per_step"] > 0 and out["rollout_sampled_tokens_per_s"] > 0
    assert len(out["rows_per_step"]) == 1 and 1 <= out["rows_per_step"][0] <= 4
    assert 0 < out["packing_utilisation"] <= 1


def test_rollout_compare_mode_times_one_rollout_field(capsys):
    """--compare FIELD=VALUE: the sides are the config as is and with that field changed; a smaller prefill
    window takes at least as many observation calls for the same tokens (same episodes: same keys and weights)."""
    out = _run("rollout", ["--steps", "1", "--warmup", "1", "--tasks", "2", "--group", "2", "--compare",
                           "prefill_window=4", "model.hidden_size=16", "model.intermediate_size=32",
                           "model.num_layers=1", "rollout.max_turns=2", "rollout.max_new_tokens=4"], capsys)
    base, small = out["base"], out["prefill_window=4"]
    assert base["sampled_tokens"] == small["sampled_tokens"]
    assert base["observation_tokens"] == small["observation_tokens"] > 0
    assert small["observation_calls"] >= base["observation_calls"] >= 1
    assert out["speedup"] == pytest.approx(base["rollout_s"] / small["rollout_s"])
    with pytest.raises(SystemExit, match="rollout has no field 'windw'"):
        _run("rollout", ["--compare", "windw=3"], capsys)


@pytest.mark.slow
def test_vs_trl_both_sides_tiny_mode(capsys):
    out = _run("vs_trl", ["--side", "both", "--size", "nano", "--prompts", "2", "--group", "2", "--prompt-len", "8",
                          "--completion", "8", "--steps", "1"], capsys)
    assert out["trl"]["samples_per_s"] > 0 and out["speedup"] > 0


def test_decode_step_tiny_mode(capsys):
    out = _run("decode_step", ["--rows", "2", "--cache", "64", "--filled", "8,40", "--new", "3",
                               "--window-steps", "32,16", "--reps", "1", "--vocab", "64"], capsys)
    assert set(out["ms_per_step_by_window_step"]) == {"32", "16"} and set(out["ms_per_step_by_mode"]) == {
        "greedy", "temperature_1"}
    assert all(v > 0 for d in out["ms_per_step_by_window_step"].values() for v in d.values())
    assert all(set(d) == {"8", "40"} for d in out["ms_per_step_by_mode"].values())
    assert out["windows"] == [64]
    import orchestra_jax.model.cached_attention as attention

    assert attention.WINDOW_STEP == 128 and attention.MAX_WINDOWS == 8  # restored
