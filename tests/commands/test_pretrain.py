"""`lmforge pretrain`: flags → config → run folder, and one-line errors."""

from __future__ import annotations

TINY = ["model.preset=tiny", "data.synthetic_docs=60", "data.val_docs=0", "data.seq_len=32",
        "train.batch_size=2", "train.max_time_s=0", "train.eval_every=0", "train.save_every=0",
        "log.progress=false", "log.plot=false", "data.num_workers=0", "data.vocab_size=300",
        "train.max_steps=2"]  # fmt: skip


def test_pretrain_writes_the_run_folder_given_by_out(tmp_path, run):
    out = tmp_path / "run"
    code, text, err = run("pretrain", "--config", "recipes/pretrain-tiny.yaml", "--out", str(out),
                          *TINY)  # fmt: skip
    assert code == 0, err
    assert "summary" in text and "stopped: max_steps after 2 steps" in " ".join(text.split())
    assert (out / "model" / "config.json").is_file() and (out / "config.yaml").is_file()


def test_bad_override_is_one_line_exit_2(tmp_path, run):
    code, _, err = run("pretrain", "--config", "recipes/pretrain-tiny.yaml", "--out",
                       str(tmp_path), *TINY, "optim.lrr=1")  # fmt: skip
    assert code == 2
    err = err.strip()
    assert err.count("\n") == 0
    assert err.startswith("lmforge pretrain: error: ") and "did you mean 'lr'" in err


def test_divergence_is_one_line_exit_2_naming_the_step(tmp_path, run):
    code, _, err = run("pretrain", "--config", "recipes/pretrain-tiny.yaml", "--out",
                       str(tmp_path), *TINY, "train.max_steps=20", "optim.lr=1e12",
                       "optim.warmup_steps=0", "optim.grad_clip=0")  # fmt: skip
    assert code == 2 and "lmforge pretrain: error: step " in err and "loss is" in err, err


def test_data_flag_trains_on_the_given_files(tmp_path, run):
    """``--data FILE…`` (as on sft) sets data.paths and stops at the trailing override."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"the number {i} follows {i - 1} and precedes {i + 1}.\n"
                              for i in range(200)))  # fmt: skip
    out = tmp_path / "run"
    code, _, err = run("pretrain", "--data", str(corpus), "--out", str(out),
                       *[t for t in TINY if not t.startswith("data.synthetic")])  # fmt: skip
    assert code == 0, err
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["paths"] == [str(corpus)]
    assert (out / "model" / "config.json").is_file()
