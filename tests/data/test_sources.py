"""Text sources: file discovery, document splitting, and errors that name file and line."""

from __future__ import annotations

import json

import pytest

from lmforge.data.sources import DataError, input_files, read_documents


def test_txt_paragraphs_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nline two\n\n  \nsecond doc\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text('{"text": "x"}\n\n{"text": "y", "id": 2}\n')
    (tmp_path / "ignored.csv").write_text("a,b")
    files = input_files([tmp_path])
    assert [f.name for f in files] == ["a.txt", "b.jsonl"]
    assert list(read_documents(files[0])) == ["first doc\nline two", "second doc"]
    assert list(read_documents(files[0], txt_docs="file")) == [
        "first doc\nline two\n\n  \nsecond doc"
    ]
    assert list(read_documents(files[1])) == ["x", "y"]


@pytest.mark.parametrize(
    "content,needle",
    [
        ('{"text": "ok"}\n{"txt": "typo"}\n', ":2: missing field 'text'"),
        ('{"text": "ok"}\n{"text": 3}\n', ":2: field 'text' is int"),
        ('{"text": "ok"}\n\n{oops\n', ":3:2: invalid JSON: Expecting property name"),
        ('{"text": "ok"}\n{"text": "a" "b"}\n', ":2:14: invalid JSON: Expecting ','"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, content, needle):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        list(read_documents(path))
    assert str(path) in str(info.value) and needle in str(info.value)


def test_bad_paths(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        input_files([tmp_path / "missing"])
    (tmp_path / "x.csv").write_text("")
    with pytest.raises(DataError, match="unsupported file type"):
        input_files([tmp_path / "x.csv"])
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not UTF-8"):
        list(read_documents(tmp_path / "bin.txt"))


# -- schemas, records and skip-and-count ------------------------------------------------

from lmforge.data.sources import (  # noqa: E402
    ChatRecord,
    InstructionRecord,
    PreferenceRecord,
    PromptCompletionRecord,
    TextRecord,
    load_records,
    read_records,
)


def _jsonl(path, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_schemas_are_detected_and_typed(tmp_path):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    cases = {
        "t.jsonl": ({"text": "a"}, TextRecord("a")),
        "m.jsonl": ({"messages": chat, "id": 1}, ChatRecord(tuple(chat))),
        "pc.jsonl": ({"prompt": "p", "completion": "c"}, PromptCompletionRecord("p", "c")),
        "pr.jsonl": (
            {"prompt": "p", "chosen": "good", "rejected": chat},
            PreferenceRecord("p", "good", tuple(chat)),
        ),
        "pi.jsonl": (
            {"chosen": chat, "rejected": chat[:1] + [{"role": "assistant", "content": "no"}]},
            PreferenceRecord(None, tuple(chat), (chat[0], {"role": "assistant", "content": "no"})),
        ),
        "i.jsonl": (
            {"instruction": "do", "input": None, "output": "done"},
            InstructionRecord("do", "done", ""),
        ),
    }
    for name, (raw, expected) in cases.items():
        (record,) = read_records([_jsonl(tmp_path / name, raw)])
        assert record == expected, name
        assert record.where == f"{tmp_path / name}:1"


def test_schema_override_and_unknown_schema(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", {"prompt": "p", "completion": "c", "text": "t"})
    assert list(read_records([path], schema="text")) == [TextRecord("t")]
    with pytest.raises(ValueError, match="schema='chat'"):
        list(read_records([path], schema="chat"))
    _jsonl(path, {"body": "x"})
    with pytest.raises(DataError, match=r"d\.jsonl:1: fields \['body'\] match no schema"):
        list(read_records([path]))


CHAT = {"messages": [{"role": "user", "content": "ok"}]}
PAIR = {"prompt": "p", "completion": "c"}


@pytest.mark.parametrize(
    "good,record,needle",
    [
        (CHAT, {"messages": [{"role": "bot", "content": "x"}]}, "'messages[0].role' is 'bot'"),
        (CHAT, {"messages": [{"role": "user"}]}, "field 'messages[0].content' is missing"),
        (CHAT, {"messages": [{"role": "user", "content": [1]}]}, "'messages[0].content' is list"),
        (CHAT, {"messages": []}, "field 'messages' is an empty list"),
        (CHAT, {"messages": "hi"}, "field 'messages' is str, not a list"),
        (PAIR, {"prompt": "p", "completion": 5}, "field 'completion' is int"),
        (PAIR, {"prompt": "p"}, "missing field 'completion'"),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b"},
            {"chosen": "a", "rejected": "b"},
            "missing field 'prompt'",
        ),
        (
            {"instruction": "i", "output": "o"},
            {"instruction": "i", "output": None},
            "'output' is null",
        ),
        (CHAT, ["not", "an", "object"], "expected a JSON object, got list"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, good, record, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as info:
        list(read_records([path]))
    assert f"{path}:2: " in str(info.value) and needle in str(info.value)


def test_skip_bad_counts_every_skip_per_reason(tmp_path):
    lines = [
        json.dumps({"text": "a"}),
        "{broken",
        json.dumps({"text": 1}),
        json.dumps({"txt": "typo"}),
        "",
        json.dumps({"text": "b"}),
        "[1, 2",
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "\xff"}\n')
    records, report = load_records([path], skip_bad=True)
    assert [r.text for r in records] == ["a", "b"]
    assert report.kept == 2 and report.num_skipped == 5
    assert dict(report.skipped) == {
        "invalid JSON": 2, "wrong type": 1, "missing field": 1, "not UTF-8": 1
    }  # fmt: skip
    summary = report.summary()
    assert "kept 2 records" in summary and "skipped 5" in summary and f"{path}:2" in summary
    with pytest.raises(DataError, match=r":2: invalid JSON"):
        load_records([path])


def test_parquet_and_hf_dataset_folders(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    records = list(read_records([tmp_path / "d.parquet"]))
    assert records == [PromptCompletionRecord(r["prompt"], r["completion"]) for r in rows]
    assert records[2].where == f"{tmp_path / 'd.parquet'}: row 3"

    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    ds = datasets.Dataset.from_list([{"messages": chat}, {"messages": chat[:1]}])
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(tmp_path / "hf")
    assert input_files([tmp_path / "hf"]) == [tmp_path / "hf"]
    records = list(read_records([tmp_path / "hf"]))
    assert records == [ChatRecord(tuple(chat)), ChatRecord(tuple(chat[:1]))]
    assert len(list(read_records([tmp_path / "hf"], split="test"))) == 1
    with pytest.raises(DataError, match="no split 'dev'"):
        list(read_records([tmp_path / "hf"], split="dev"))
    bad = datasets.Dataset.from_list([{"messages": [{"role": "robot", "content": "x"}]}])
    bad.save_to_disk(tmp_path / "hf_bad")
    with pytest.raises(DataError, match=r"hf_bad \[train\]: row 1: field 'messages\[0\]\.role'"):
        list(read_records([tmp_path / "hf_bad"]))


def test_folders_mix_txt_jsonl_parquet_in_sorted_order(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    _jsonl(tmp_path / "b.jsonl", {"text": "three"})
    pq.write_table(pa.Table.from_pylist([{"text": "four"}]), tmp_path / "c.parquet")
    texts = [r.text for r in read_records([tmp_path], schema="text")]
    assert texts == ["one", "two", "three", "four"]


def test_record_texts_are_every_text_field():
    from lmforge.data.sources import record_texts

    chat = ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a",
                                                "reasoning_content": "think"})  # fmt: skip
    assert list(record_texts(TextRecord("t"))) == ["t"]
    assert list(record_texts(ChatRecord(chat))) == ["q", "a", "think"]
    assert list(record_texts(PromptCompletionRecord("p", chat[1:]))) == ["p", "a", "think"]
    assert list(record_texts(PreferenceRecord(None, "c", "r"))) == ["c", "r"]
    assert list(record_texts(InstructionRecord("i", "o", "x"))) == ["i", "x", "o"]
    assert list(record_texts(InstructionRecord("i", "o"))) == ["i", "o"]
