"""Text sources: file discovery, document splitting, and errors that name file and line."""

from __future__ import annotations

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
        ('{"text": "ok"}\n\n{oops\n', ":3: invalid JSON"),
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
