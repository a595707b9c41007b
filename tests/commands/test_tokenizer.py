"""`lmforge tokenizer train` on .txt paragraphs, .jsonl records and folders."""

from __future__ import annotations

import json

import pytest

from lmforge.data.tasks import synthetic_corpus
from lmforge.tokenizer import load_tokenizer


def test_tokenizer_train_reads_txt_paragraphs_jsonl_and_folders(tmp_path, run):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("\n\n".join(synthetic_corpus(40, seed=1)) + "\n")
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(synthetic_corpus(20, seed=2))]
    (data / "sub" / "b.jsonl").write_text("\n".join(lines) + "\n\n")
    (data / "ignored.csv").write_text("not read")
    single = tmp_path / "one.txt"
    single.write_text("One more paragraph.\n  \nAnd another.")

    code, out, err = run(
        "tokenizer", "train", "--input", str(data), str(single),
        "--vocab-size", "300", "--out", str(tmp_path / "tok"),
    )  # fmt: skip
    assert code == 0, err
    assert "62 documents" in out and "3 file(s)" in out
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.vocab_size <= 300
    assert tok.decode(tok.encode("12 + 7 = 19")) == "12 + 7 = 19"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"text": "ok"}\n{"txt": "no"}\n', "bad.jsonl:2: missing field 'text'"),
        ('{"text": "ok"}\n\n{"text": 5}\n', "bad.jsonl:3: field 'text' is int"),
        ('{"text": "ok"}\n{oops\n', "bad.jsonl:2:2: invalid JSON"),  # line:column
    ],
)
def test_tokenizer_train_bad_jsonl_names_file_line_and_field(tmp_path, run, content, expected):
    (tmp_path / "bad.jsonl").write_text(content)
    code, _, err = run(
        "tokenizer", "train", "--input", str(tmp_path / "bad.jsonl"),
        "--vocab-size", "300", "--out", str(tmp_path / "tok"),
    )  # fmt: skip
    assert code == 2
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "tok").exists()


def test_tokenizer_train_without_documents_is_an_error(tmp_path, run):
    (tmp_path / "empty.jsonl").write_text("\n")
    code, _, err = run("tokenizer", "train", "--input", str(tmp_path / "empty.jsonl"),
                       "--vocab-size", "300", "--out", str(tmp_path / "tok"))  # fmt: skip
    assert code == 2 and "lmforge tokenizer train: error: no documents found in" in err
    assert not (tmp_path / "tok").exists()
