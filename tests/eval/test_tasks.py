"""lmforge/eval/tasks.py: built-in tasks' held-out problems and JSONL prompt/answer files."""

from __future__ import annotations

import json

import pytest

from lmforge.data.tasks.arithmetic import split_of
from lmforge.eval.tasks import jsonl_items, load_items, task_items


def test_builtin_tasks_are_held_out_and_checked_exactly():
    items = task_items("arithmetic", 5, seed=1)
    assert len(items) == 5 and len({i.key for i in items}) == 5
    for item in items:
        question = item.prompt.removeprefix("What is ").removesuffix("?")
        assert split_of(question) == "test"
        assert item.check(item.reference) and not item.check(str(int(item.reference) + 1))
    countdown = task_items("countdown", 3)
    assert all(i.check(i.reference) and not i.check("1 + 1") for i in countdown)
    with pytest.raises(ValueError, match="unknown task 'chess'"):
        task_items("chess", 1)


def test_jsonl_items_use_the_named_verifier_and_name_bad_lines(tmp_path):
    path = tmp_path / "qa.jsonl"
    records = [{"prompt": "half of 1?", "answer": "1/2"},
               {"prompt": [{"role": "user", "content": "2+2?"}], "answer": 4}]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    items = jsonl_items([path], verifier="numeric")
    assert [i.reference for i in items] == ["1/2", "4"]
    assert items[0].check("0.5") and items[1].check("4.0") and not items[1].check("5")
    assert items[1].key == f"{path}:2"
    assert len(load_items(str(path), n=1, verifier="exact")) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "answer": 1}\n{"prompt": "y"}\n')
    with pytest.raises(ValueError, match=f"{bad}:2: expected an object with 'prompt' and 'answer'"):
        jsonl_items([bad])
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=f"{bad}:1: invalid JSON"):
        jsonl_items([bad])
