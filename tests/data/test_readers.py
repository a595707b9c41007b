"""File readers: JSON arrays (Alpaca's own layout) decoded element by element, errors that
name the element, syntax errors with line and column, .json files of JSON Lines."""

from __future__ import annotations

import json

import pytest

from lmforge.data.readers import DataError, input_files
from lmforge.data.sources import InstructionRecord, load_records, read_records

ALPACA = [
    {"instruction": "Add.", "input": "2 + 2", "output": "4"},
    {"instruction": "Greet.", "input": "", "output": "Hello!"},
]


def test_json_array_files_load_and_name_the_element(tmp_path):
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(ALPACA, indent=4))  # Alpaca's own layout
    records = list(read_records([path]))
    assert records == [
        InstructionRecord("Add.", "4", "2 + 2"),
        InstructionRecord("Greet.", "Hello!"),
    ]
    assert records[1].where == f"{path}[1] (line 7)"
    assert input_files([tmp_path]) == [path]  # folders pick up .json files
    bad = [*ALPACA, {"instruction": "x"}]
    path.write_text(json.dumps(bad, indent=1))
    with pytest.raises(
        DataError, match=r"alpaca_data\.json\[2\] \(line 12\): missing field 'output'"
    ):
        list(read_records([path]))
    records, report = load_records([path], skip_bad=True)
    assert len(records) == 2 and dict(report.skipped) == {"missing field": 1}
    (tmp_path / "empty.json").write_text(" [ ] ")
    assert list(read_records([tmp_path / "empty.json"])) == []


@pytest.mark.parametrize(
    "content,needle",
    [
        (
            '[{"text": "a"},\n {"text": "b" "c"}]',
            r":2:15: invalid JSON in element 1: Expecting ','",
        ),
        (
            '[{"text": "a"}\n {"text": "b"}]',
            r":2:2: invalid JSON: expected ',' or '\]' after element 0",
        ),
        ('[{"text": "a"}] x', r":1:17: invalid JSON: extra data after '\]'"),
        ('[{"text": "a"},]', r":1:16: invalid JSON in element 1: Expecting value"),
    ],
)
def test_json_array_syntax_errors_keep_line_and_column(tmp_path, content, needle):
    path = tmp_path / "d.json"
    path.write_text(content)
    for skip_bad in (False, True):  # the rest of an array cannot be found after a syntax error
        with pytest.raises(DataError, match=needle):
            list(read_records([path], skip_bad=skip_bad))


def test_json_file_of_json_lines_reads_as_jsonl(tmp_path):
    path = tmp_path / "to_json.json"  # what datasets' Dataset.to_json writes
    path.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert [r.text for r in read_records([path])] == ["a", "b"]
