"""Hostile config values through the public orchestra_jax.config.to_config (what Hydra overrides and YAML
files become): each is accepted and lands unchanged in the Config, or is refused with one line
'config error ...' naming the key. Few examples: one to_config is ~0.1-0.2 s (OmegaConf structured merge)."""
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestra_jax.config import to_config, to_dict
from orchestra_jax.run_dir import flatten

DEFAULT = flatten(to_dict(to_config({})))
KEYS = sorted(DEFAULT)
HOSTILE = [None, -1, 0, 2**63, 1e308, float("nan"), float("inf"), -0.5, "", "abc", "3", "1e-3", "true",
           "${oc.env:HOME}", "???", [], [1, "x"], {}, {"a": 1}, True, "k9", "cosin", "gs://b/x", "\x00", "é" * 300]


def _set(tree, dotted, value):
    *parents, leaf = dotted.split(".")
    for p in parents:
        if not isinstance(tree.get(p), dict):  # a later "a.b.c" replaces an earlier scalar "a.b"
            tree[p] = {}
        tree = tree[p]
    tree[leaf] = value


def _same(expected, got):
    """The accepted value is the given one, up to the coercions a command line needs ("3" -> 3.0,
    "true" -> True, list -> tuple, enum -> its value)."""
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        return [str(x) for x in expected] == [str(x) for x in got]
    got = getattr(got, "value", got)
    if isinstance(got, bool):
        return expected is got or (isinstance(expected, str) and expected.lower() == str(got).lower())
    if isinstance(got, (int, float)) and isinstance(expected, str):
        try:
            return float(expected) == float(got)
        except ValueError:
            return False
    return got == expected or str(got) == str(expected)


def known_gap(overrides, problem) -> bool:
    """Gaps of config.py found by this fuzz (reported to its owner, issue 10), tolerated here so the rest of
    the contract stays enforced: a bool field takes any integer; a list field given a mapping or a
    wrong-length list fails without naming the key; ${...} interpolations are resolved (env vars read); a
    string field takes a NaN as the text 'nan'."""
    (key, value), = overrides if len(overrides) == 1 else [(None, None)]
    if key is None:
        return any(known_gap([o], problem) for o in overrides)
    if isinstance(DEFAULT.get(key), bool) and isinstance(value, (int, str)):
        return True
    parent = key.rsplit(".", 1)[0]
    if (isinstance(DEFAULT.get(key), (list, tuple)) or isinstance(DEFAULT.get(parent), (list, tuple))) and \
            ("ListConfig" in problem or "unpack" in problem):
        return True
    if isinstance(value, str) and value.startswith("${"):
        return True
    # a NaN given to a string field (str or Optional[str], default None) is kept as the text 'nan'
    return isinstance(value, float) and math.isnan(value) and (isinstance(DEFAULT.get(key), str) or
                                                               (key in DEFAULT and DEFAULT[key] is None))


def check(overrides, tolerate_known=True):
    raw = {}
    for key, value in overrides:
        _set(raw, key, value)
    try:
        cfg = to_config(raw)
    except ValueError as e:
        msg = str(e)
        ok = msg.startswith("config error") and "\n" not in msg and \
            any(key.split(".")[-1] in msg or key.split(".")[0] in msg for key, _ in overrides)
        assert ok or (tolerate_known and known_gap(overrides, msg)), (overrides, msg)
        return None
    got = flatten(to_dict(cfg))
    shadowed = {k for i, (k, _) in enumerate(overrides) for later, _ in overrides[i + 1:] if later.startswith(k + ".")}
    for key, value in dict(overrides).items():  # a key given twice: the last value is the one that counts
        if key in got and value != "???" and key not in shadowed:  # "???" is OmegaConf's MISSING: merging it keeps the default
            problem = f"{key}={value!r} was accepted as {got[key]!r}"
            assert _same(value, got[key]) or (tolerate_known and known_gap([(key, value)], problem)), problem
    return cfg


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1))
def test_hostile_config_values(seed):
    rng = random.Random(seed)
    overrides = []
    for _ in range(rng.randint(1, 2)):
        key = rng.choice(KEYS)
        if rng.random() < 0.15:
            key = key + rng.choice(["_typo", ".nested"]) if rng.random() < 0.5 else rng.choice(["trian.steps", "model.hiden_size", "foo"])
        overrides.append((key, rng.choice(HOSTILE)))
    check(overrides)


@pytest.mark.xfail(strict=True, reason="config.py gaps found by the fuzz (owner: trainer, issue 10)")
@pytest.mark.parametrize("key, value", [("model.remat", 3), ("eval.greedy", -1), ("env.price_scale_train", []),
                                        ("sft.teachers", {"a": 1})])
def test_known_config_gaps(key, value):
    check([(key, value)], tolerate_known=False)


def test_choice_fields_refuse_interpolations():
    """Fixed by the enums of issue 10: a choice field no longer takes an environment-variable interpolation."""
    check([("reward.kind", "${oc.env:HOME}")], tolerate_known=False)
