"""`lmforge medusa train` / `lmforge eagle train` through the one Trainer on a tiny
checkpoint (run folder, metrics, the saved drafter), then `lmforge generate --speculative`
with the trained drafter: the greedy completion equals plain greedy decoding."""

from __future__ import annotations

import json

from lmforge.data.tasks import synthetic_corpus
from lmforge.infer.params import SamplingParams
from lmforge.models.eagle import load_eagle_layer
from lmforge.models.medusa import load_medusa_heads


def test_medusa_and_eagle_train_then_generate(run, checkpoint, tmp_path):
    folder, model = checkpoint
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in synthetic_corpus(60, 1)))
    common = ["train.max_steps=3", "train.batch_size=2", "data.seq_len=32", "log.plot=false",
              "log.progress=false", "train.save_every=0", "train.eval_every=0"]  # fmt: skip
    code, out, err = run("medusa", "train", "--model", str(folder), "--data", str(data),
                         "--out", str(tmp_path / "m"), "medusa.num_heads=2", *common)  # fmt: skip
    assert code == 0, err
    heads = load_medusa_heads(tmp_path / "m" / "medusa")
    assert heads.num_heads == 2
    metrics = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").open()]
    assert any("head2_loss" in m for m in metrics)
    code, out, err = run("eagle", "train", "--model", str(folder), "--data", str(data),
                         "--out", str(tmp_path / "e"), *common)  # fmt: skip
    assert code == 0, err
    assert load_eagle_layer(tmp_path / "e" / "eagle").hidden_size == model.config.hidden_size
    base = ["generate", "--model", str(folder), "--prompt", "the cat", "--greedy",
            "--max-new-tokens", "12"]  # fmt: skip
    plain = run(*base)
    assert plain[0] == 0
    for method, drafter in (("medusa", "m/medusa"), ("eagle", "e/eagle")):
        got = run(*base, "--speculative", method, "--drafter", str(tmp_path / drafter),
                  "--tree-width", "2")  # fmt: skip
        assert got[0] == 0, got[2]
        assert got[1] == plain[1]
    code, out, err = run(*base, "--speculative", "medusa")
    assert code == 2 and "--drafter" in err
    # what `lmforge serve --speculative medusa --drafter …` builds
    from lmforge.serve.loading import load_engine

    spec = dict(method="medusa", drafter_dir=tmp_path / "m" / "medusa", tree_width=2)
    engine, tok, _, _ = load_engine(folder, speculative=spec)
    assert engine.speculative.method == "medusa"
    ids = tok.encode("the cat")
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    plain = load_engine(folder)[0].generate([ids], greedy)[0].token_ids
    assert engine.generate([ids], greedy)[0].token_ids == plain
