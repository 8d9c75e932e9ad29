"""grain task pipeline: seeded shuffle, every record once per epoch, exact resume from get_state()."""
import json

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
