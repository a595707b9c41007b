"""`lmforge` CLI: every subcommand in-process on tiny checkpoints, plus clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lmforge.cli import main
from lmforge.data.tasks import synthetic_corpus
from lmforge.infer.generate import generate
from lmforge.models.hf import load_model, save_model
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM
from lmforge.tokenizer import Tokenizer, load_tokenizer

VOCAB = 320


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(synthetic_corpus(300, seed=0), vocab_size=VOCAB)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    """A tiny fp32 llama checkpoint with its tokenizer; returns (folder, model)."""
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = CausalLM(preset_config("tiny", vocab_size=VOCAB, **ids)).eval()
    folder = tmp_path_factory.mktemp("ckpt")
    save_model(model, folder, tokenizer=tokenizer)
    return folder, model


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------- entry points
def test_python_dash_m_help_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for command in ("tokenizer", "info", "convert", "generate", "demo", "examples:"):
        assert command in result.stdout


def test_help_returns_zero_and_unknown_command_is_a_usage_error(capsys):
    assert run(capsys, "convert", "--help")[0] == 0
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err
    code, _, err = run(capsys)
    assert code == 2 and "required" in err


# ---------------------------------------------------------------------- tokenizer train
def test_tokenizer_train_reads_txt_paragraphs_jsonl_and_folders(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("\n\n".join(synthetic_corpus(40, seed=1)) + "\n")
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(synthetic_corpus(20, seed=2))]
    (data / "sub" / "b.jsonl").write_text("\n".join(lines) + "\n\n")
    (data / "ignored.csv").write_text("not read")
    single = tmp_path / "one.txt"
    single.write_text("One more paragraph.\n  \nAnd another.")

    code, out, err = run(
        capsys, "tokenizer", "train", "--input", str(data), str(single),
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
        ('{"text": "ok"}\n{oops\n', "bad.jsonl:2: invalid JSON"),
    ],
)
def test_tokenizer_train_bad_jsonl_names_file_line_and_field(tmp_path, capsys, content, expected):
    (tmp_path / "bad.jsonl").write_text(content)
    code, _, err = run(
        capsys, "tokenizer", "train", "--input", str(tmp_path / "bad.jsonl"),
        "--vocab-size", "300", "--out", str(tmp_path / "tok"),
    )  # fmt: skip
    assert code == 2
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "tok").exists()


# ---------------------------------------------------------------------- info
def test_info_text_summary(checkpoint, capsys):
    folder, model = checkpoint
    code, out, err = run(capsys, "info", str(folder))
    assert code == 0, err
    assert f"{model.num_parameters():,}" in out
    assert "llama (LlamaForCausalLM)" in out
    assert "4 query / 2 key-value (GQA), head dim 16" in out
    assert "float32" in out and "model.safetensors" in out
    assert f"{VOCAB} ids, chat template: yes" in out


def test_info_json(checkpoint, capsys):
    folder, model = checkpoint
    code, out, _ = run(capsys, "info", str(folder), "--json")
    assert code == 0
    info = json.loads(out)
    c = model.config
    assert info["parameters"] == model.num_parameters() == c.num_parameters()
    assert info["layers"] == c.num_hidden_layers and info["kv_heads"] == c.num_key_value_heads
    assert info["weights_bytes"] == {
        "float32": 4 * c.num_parameters(),
        "bfloat16": 2 * c.num_parameters(),
    }
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 1000
    assert info["kv_cache_bytes_per_1k_tokens"] == {"float32": 4 * kv, "bfloat16": 2 * kv}
    assert info["dtype_on_disk"] == "float32"
    assert [f["name"] for f in info["weight_files"]] == ["model.safetensors"]


# ---------------------------------------------------------------------- convert
def test_convert_to_sharded_bf16_loads_in_lmforge_and_transformers(checkpoint, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    folder, model = checkpoint
    out_dir = tmp_path / "bf16"
    code, out, err = run(
        capsys, "convert", str(folder), "--out", str(out_dir),
        "--dtype", "bfloat16", "--max-shard-size", "40KB",
    )  # fmt: skip
    assert code == 0, err
    assert "bfloat16" in out and "tokenizer.json" in out
    shards = sorted(out_dir.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (out_dir / "model.safetensors.index.json").is_file()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out_dir / name).read_bytes() == (folder / name).read_bytes()
    assert json.loads((out_dir / "generation_config.json").read_text()) == json.loads(
        (folder / "generation_config.json").read_text()
    )

    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        ours = load_model(out_dir)
        assert ours.model.embed_tokens.weight.dtype == torch.bfloat16
        assert torch.allclose(ours(ids).logits.float(), ref, atol=0.05)
        hf = AutoModelForCausalLM.from_pretrained(out_dir).eval()
        assert torch.allclose(hf(ids).logits.float(), ref, atol=0.05)
    assert load_tokenizer(out_dir).vocab_size == VOCAB

    code, out, _ = run(capsys, "info", str(out_dir), "--json")
    info = json.loads(out)
    assert info["dtype_on_disk"] == "bfloat16" and len(info["weight_files"]) == len(shards)


def test_convert_refuses_to_overwrite_its_source(checkpoint, capsys):
    folder, _ = checkpoint
    code, _, err = run(capsys, "convert", str(folder), "--out", str(folder))
    assert code == 2 and "different folder" in err


# ---------------------------------------------------------------------- generate
def test_generate_greedy_matches_the_library(checkpoint, tokenizer, capsys):
    folder, model = checkpoint
    code, out, err = run(
        capsys, "generate", "--model", str(folder), "--prompt", "12 + 7 =",
        "--greedy", "--max-new-tokens", "12",
    )  # fmt: skip
    assert code == 0, err
    ids = tokenizer.encode("12 + 7 =", add_special_tokens=True)
    stop = tokenizer.stop_token_ids
    expected = generate(model, torch.tensor([ids]), max_new_tokens=12, eos_token_id=stop)
    assert out == tokenizer.decode(expected[0, len(ids) :], skip_special_tokens=True) + "\n"


def test_generate_sampling_is_reproducible_with_a_seed_and_chat_works(checkpoint, capsys):
    folder, _ = checkpoint
    argv = ["generate", "--model", str(folder), "--prompt", "Once upon a time"]
    argv += ["--temperature", "0.9", "--top-k", "50", "--top-p", "0.95", "--seed", "3"]
    first, second = run(capsys, *argv), run(capsys, *argv)
    assert first[0] == 0 and first == second
    code, out, err = run(capsys, *argv, "--chat", "--max-new-tokens", "8")
    assert code == 0, err


def test_generate_reports_a_too_long_request(checkpoint, capsys):
    folder, _ = checkpoint
    code, _, err = run(
        capsys, "generate", "--model", str(folder), "--prompt", "hi", "--max-new-tokens", "5000"
    )
    assert code == 2 and "max_position_embeddings" in err and "Traceback" not in err


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "argv",
    [
        ["info", "{path}"],
        ["info", "{path}", "--json"],
        ["convert", "{path}", "--out", "{tmp}/out"],
        ["generate", "--model", "{path}", "--prompt", "x"],
        ["tokenizer", "train", "--input", "{path}", "--vocab-size", "300", "--out", "{tmp}/t"],
    ],
)
def test_missing_path_is_a_clean_error(tmp_path, capsys, argv):
    missing = tmp_path / "does-not-exist"
    argv = [a.format(path=missing, tmp=tmp_path) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert str(missing) in err and "no such" in err and "Traceback" not in err


def test_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    for argv in (["info", str(tmp_path)], ["generate", "--model", str(tmp_path), "--prompt", "x"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and f"{tmp_path}: not a checkpoint folder" in err


def test_broken_checkpoints_report_the_offending_file(checkpoint, tmp_path, capsys):
    folder, _ = checkpoint
    bad_config = tmp_path / "bad_config"
    bad_config.mkdir()
    (bad_config / "config.json").write_text('{"model_type": "gpt9"}')
    code, _, err = run(capsys, "info", str(bad_config))
    assert code == 2 and str(bad_config / "config.json") in err and "gpt9" in err

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((folder / "config.json").read_bytes())
    code, _, err = run(capsys, "convert", str(no_weights), "--out", str(tmp_path / "o"))
    assert code == 2 and str(no_weights) in err and "model.safetensors" in err

    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((folder / name).read_bytes())
    code, _, err = run(capsys, "generate", "--model", str(no_tokenizer), "--prompt", "x")
    assert code == 2 and str(no_tokenizer / "tokenizer.json") in err and "Traceback" not in err
