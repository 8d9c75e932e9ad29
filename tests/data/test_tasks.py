"""grain task pipeline: seeded shuffle, every record once per epoch, exact resume from get_state()."""
import json
import re

import pytest

from orchestra_jax.data.tasks import read_jsonl, task_iterator, write_jsonl


def _records(n):
    return [{"task_id": f"t{i}", "question": f"q{i}", "answer": i} for i in range(n)]


def test_jsonl_roundtrip(tmp_path):
    path = str(tmp_path / "tasks.jsonl")
    assert write_jsonl(path, _records(7)) == 7
    assert read_jsonl(path) == _records(7)


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"a": 1}\n{not json\n')
    with pytest.raises(ValueError, match=r"tasks.jsonl:2: not valid JSON"):
        read_jsonl(str(path))
    path.write_text(json.dumps({"_schema": 99, "a": 1}) + "\n")
    with pytest.raises(ValueError, match="schema version 99"):
        read_jsonl(str(path))


def test_each_epoch_is_a_permutation_and_seed_matters():
    recs = _records(12)
    it = task_iterator(recs, batch_size=4, seed=0)
    epoch1 = [r["answer"] for _ in range(3) for r in next(it)]
    epoch2 = [r["answer"] for _ in range(3) for r in next(it)]
    assert sorted(epoch1) == list(range(12)) and sorted(epoch2) == list(range(12))
    assert epoch1 != list(range(12)) and epoch1 != epoch2  # shuffled, reshuffled per epoch
    other = task_iterator(recs, batch_size=4, seed=1)
    assert [r["answer"] for r in next(other)] != epoch1[:4]
    same = task_iterator(recs, batch_size=4, seed=0)
    assert [r["answer"] for r in next(same)] == epoch1[:4]


def test_resume_from_state_is_exact():
    recs = _records(10)
    it = task_iterator(recs, batch_size=3, seed=5)
    for _ in range(4):  # cross an epoch boundary (10 records, batches of 3)
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # must survive JSON, as in the checkpoint
    expected = [next(it) for _ in range(6)]
    resumed = task_iterator(recs, batch_size=3, seed=5, state=state)
    assert [next(resumed) for _ in range(6)] == expected


def test_shards_are_disjoint():
    recs = _records(10)
    a = task_iterator(recs, batch_size=5, seed=0, shard_index=0, shard_count=2)
    b = task_iterator(recs, batch_size=5, seed=0, shard_index=1, shard_count=2)
    ids_a = {r["task_id"] for r in next(a)}
    ids_b = {r["task_id"] for r in next(b)}
    assert len(ids_a) == 5 and len(ids_b) == 5 and not ids_a & ids_b


# ------------------------------------------------------------------------------------- hostile input
import os  # noqa: E402
import random  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from orchestra_jax.data.tasks import RecordFileError, decode_text, parse_jsonl, read_trajectories  # noqa: E402

FIELDS = {"task_id": str, "answer": int, "weight": float}
WRONG = {"task_id": [1, None, ["x"]], "answer": ["1", 1.5, True, None], "weight": ["0.5", None, [0.5], False]}
KINDS = ("none", "cut", "not_object", "schema", "missing", "wrong_type", "truncated_last", "blank_lines")
PROBLEM = {"cut": "not valid JSON", "not_object": "expected a JSON object", "schema": "schema version",
           "missing": "missing field", "wrong_type": "expected", "truncated_last": "truncated"}
ALPHABET = "aZ0 _-\"\\/\n\t{}[]:,é€\u2028\x00😀"


def _value(rng, depth=0):
    r = rng.random()
    if depth < 2 and r < 0.15:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if depth < 2 and r < 0.3:
        return {_text(rng, 4): _value(rng, depth + 1) for _ in range(rng.randrange(3))}
    return rng.choice([None, True, False, rng.randint(-10**6, 10**6), rng.uniform(-1e3, 1e3), _text(rng, 8)])


def _text(rng, n):
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(n + 1)))


def _case(seed):
    """(records, kind, file text, defective 1-based line) from one seed; the generator knows the defect.
    One drawn seed per example: per-field hypothesis draws made 10,000 examples ~10x slower."""
    rng = random.Random(seed)
    records = []
    for _ in range(rng.randint(1, 5)):
        rec = {"task_id": _text(rng, 10), "answer": rng.randint(-99, 99),
               "weight": rng.choice([rng.uniform(-1, 1), rng.randint(-3, 3)])}
        if rng.random() < 0.5:
            rec["extra"] = _value(rng)
        records.append(rec)
    lines = [json.dumps({"_schema": 1, **r}, ensure_ascii=rng.random() < 0.5) for r in records]
    kind = KINDS[seed % len(KINDS)]
    k = rng.randrange(len(lines))
    if kind == "cut":
        lines[k] = lines[k][: rng.randint(1, len(lines[k]) - 1)]  # a strict prefix of an object is never JSON
    elif kind == "not_object":
        lines[k] = json.dumps(rng.choice([[1, "a"], "text", 3, None, True, []]))
    elif kind == "schema":
        lines[k] = json.dumps({"_schema": rng.choice([0, 2, "1", 1.5, None, True]), **records[k]})
    elif kind in ("missing", "wrong_type"):
        field = rng.choice(sorted(FIELDS))
        rec = dict(records[k])
        if kind == "missing":
            del rec[field]
        else:
            rec[field] = rng.choice(WRONG[field])
        lines[k] = json.dumps({"_schema": 1, **rec})
    text = "\n".join(lines) + "\n"
    line_no = k + 1
    if kind == "truncated_last":
        line_no = len(lines)
        text = "\n".join(lines[:-1] + [lines[-1][: rng.randint(1, len(lines[-1]) - 1)]])
    elif kind == "blank_lines":
        text = "\n \n".join(lines) + "\n\n"
    return records, kind, text, line_no


def _check_case(records, kind, line_no, load, path):
    if kind in ("none", "blank_lines"):
        assert load() == records
        return
    with pytest.raises(RecordFileError) as err:
        load()
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line_no}: ") and PROBLEM[kind] in msg and "\n" not in msg, (kind, msg)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1))
def test_task_file_fuzz_one_clear_error_naming_file_and_line(seed):
    """Valid files read back exactly; a file with one defect at line k raises one RecordFileError naming
    path:k and the defect; nothing else ever escapes. In memory (the loader minus open(): file writes made
    10,000 examples 4x slower); the file path itself is fuzzed below."""
    records, kind, text, line_no = _case(seed)
    src = "/data/tasks.jsonl"
    _check_case(records, kind, line_no, lambda: parse_jsonl(decode_text(text.encode(), src), src, FIELDS), src)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1))
def test_task_file_fuzz_through_files_changes_nothing(tmp_path, seed):
    records, kind, text, line_no = _case(seed)
    path = tmp_path / "tasks.jsonl"
    path.write_text(text, encoding="utf-8")
    before = path.read_bytes()
    _check_case(records, kind, line_no, lambda: read_jsonl(str(path), FIELDS), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["tasks.jsonl"]


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1))
def test_task_file_arbitrary_bytes_never_escape(seed):
    rng = random.Random(seed)
    if seed % 2:
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(60)))
    else:  # near-JSON: a valid line with random bytes flipped
        line = bytearray(json.dumps({"_schema": 1, "task_id": _text(rng, 6), "x": _value(rng)}).encode())
        for _ in range(rng.randint(1, 3)):
            line[rng.randrange(len(line))] = rng.randrange(256)
        raw = bytes(line) + b"\n"
    path = "/data/junk.jsonl"
    try:
        recs = parse_jsonl(decode_text(raw, path), path, {"task_id": str})
    except RecordFileError as e:
        assert str(e).startswith(path) and "\n" not in str(e)
    else:
        assert all(isinstance(r, dict) and isinstance(r["task_id"], str) for r in recs)


def test_trajectory_file_checks(tmp_path):
    good = {"prompt": {"messages": [{"role": "user", "content": "q"}]}, "actions": ["a"], "observations": ["o"]}
    path = tmp_path / "sft_trajectories.jsonl"
    write_jsonl(str(path), [good, good])
    assert read_trajectories(str(path)) == [good, good]
    cases = [({**good, "actions": "a"}, "field 'actions' is string, expected array"),
             ({**good, "observations": ["o", 3]}, "observations[1] is integer, expected string"),
             ({**good, "prompt": {"msgs": []}}, "prompt: missing field 'messages'"),
             ({k: v for k, v in good.items() if k != "prompt"}, "missing field 'prompt'")]
    for bad, problem in cases:
        write_jsonl(str(path), [good, bad])
        with pytest.raises(RecordFileError, match=rf"sft_trajectories.jsonl:2: .*{re.escape(problem)}"):
            read_trajectories(str(path))


def test_empty_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(RecordFileError, match="task file not found: .*nope.jsonl"):
        read_jsonl(str(tmp_path / "nope.jsonl"))
    (tmp_path / "e.jsonl").write_text("\n \n")
    with pytest.raises(RecordFileError, match=r"e.jsonl: no records"):
        read_jsonl(str(tmp_path / "e.jsonl"))
    (tmp_path / "b.jsonl").write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(RecordFileError, match=r"b.jsonl:2: not UTF-8"):
        read_jsonl(str(tmp_path / "b.jsonl"))


def test_run_dir_files_go_through_epath_so_gs_urls_work(tmp_path, monkeypatch):
    """A gs:// run_dir: task files, SFT trajectories and the tokenizer are written and read through etils.epath
    (mocked here onto a local folder); plain open/os.path would have made a local 'gs:' folder instead."""
    from etils.epath import testing as epath_testing

    from orchestra_jax.envs.factory import read_records
    from orchestra_jax.text.tokenizer import load_tokenizer, train_tokenizer

    bucket = tmp_path / "bucket"
    to_local = lambda p: os.fspath(p).replace("gs://", str(bucket) + "/")  # noqa: E731

    def redirect(original, path, *args, **kwargs):
        return original(to_local(path), *args, **kwargs)

    def redirect2(original, path, dst, *args, **kwargs):
        return original(to_local(path), to_local(dst), *args, **kwargs)

    monkeypatch.chdir(tmp_path)
    fns = {n: redirect for n in ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "stat", "glob")}
    fns.update(rename=redirect2, replace=redirect2)
    with epath_testing.mock_epath(**fns):
        run = "gs://runs/exp1"
        tasks = [{"id": i, "question": f"q{i}"} for i in range(3)]
        assert write_jsonl(f"{run}/data/train_tasks.jsonl", tasks) == 3
        assert read_jsonl(f"{run}/data/train_tasks.jsonl") == tasks
        traj = {"prompt": {"messages": [{"role": "user", "content": "x"}]}, "actions": ["a"], "observations": ["o"]}
        write_jsonl(f"{run}/data/sft_trajectories.jsonl", [traj])
        assert read_trajectories(f"{run}/data/sft_trajectories.jsonl")[0]["actions"] == ["a"]
        tok = train_tokenizer(["hello world", "tool call"], vocab_size=300)
        tok.save(f"{run}/tokenizer")
        assert load_tokenizer(f"{run}/tokenizer").encode("hello world") == tok.encode("hello world")
        with pytest.raises(ValueError, match="file not found"):
            read_records(f"{run}/data/missing.jsonl", "task")
    assert (bucket / "runs/exp1/data/train_tasks.jsonl").is_file()
    assert (bucket / "runs/exp1/tokenizer/tokenizer.json").is_file()
    assert not (tmp_path / "gs:").exists()  # nothing went to a local folder named after the URL
