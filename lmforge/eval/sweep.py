"""The scaling-law sweeps of DeepSeek LLM (§3) at toy scale, through `lmforge pretrain`
(`lmforge.train.pretrain.train_pretrain`, the one Trainer): every run is sized by a compute
budget C — its step count is C / (M · batch tokens), M = `deepseek_flops_per_token` of its
shape — and reports its final validation loss.

- hyperparameter grid (§3.1): at each budget, every (batch size, learning rate) pair on one
  model shape;
- IsoFLOP profiles (§3.2): at each budget, several model shapes at one batch size and lr.

Model shapes are the ones the FLOPs formula assumes: heads · head_dim = d_model, no KV
grouping, a SwiGLU MLP of width 8·d/3 (rounded to an integer when 3 ∤ d, which moves the
module count off the formula by < 0.5 %). One synthetic corpus and one tokenizer serve every
run; results are appended to ``runs.jsonl`` as they finish, so an interrupted sweep resumes.

    base = sweep_base_config(out_dir, seq_len=64)
    points = hyper_points([1e11, 3e11], [8, 16, 32], [1e-3, 3e-3, 1e-2], n_layer=2, d_model=48)
    runs = run_sweep(base, points, out_dir)       # dicts: compute, batch, lr, loss, model_scale
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from lmforge.data.tasks.corpus import synthetic_corpus
from lmforge.eval.flops import deepseek_flops_per_token
from lmforge.tokenizer import Tokenizer
from lmforge.train.config import RunConfig
from lmforge.train.pretrain import train_pretrain

__all__ = [
    "SweepPoint",
    "hyper_points",
    "isoflop_points",
    "point_config",
    "run_sweep",
    "split_points",
    "sweep_base_config",
]

HEAD_DIM = 16


@dataclass(frozen=True)
class SweepPoint:
    """One training run: a budget, a model shape, a batch size (sequences) and a peak lr."""

    compute: float
    n_layer: int
    d_model: int
    batch_size: int
    lr: float

    @property
    def name(self) -> str:
        return (f"C{self.compute:.2e}-L{self.n_layer}-d{self.d_model}-b{self.batch_size}"
                f"-lr{self.lr:.2e}")  # fmt: skip


def hyper_points(
    budgets: Sequence[float], batch_sizes: Sequence[int], lrs: Sequence[float],
    n_layer: int, d_model: int,
) -> list[SweepPoint]:  # fmt: skip
    """The (batch size × lr) grid at every budget, on one model shape."""
    return [SweepPoint(c, n_layer, d_model, b, lr)
            for c in budgets for b in batch_sizes for lr in lrs]  # fmt: skip


def split_points(
    budgets: Sequence[float], shapes: Sequence[tuple[int, int]], batch_size: int, lr: float
) -> list[SweepPoint]:
    """IsoFLOP profiles: every ``(n_layer, d_model)`` shape at every budget."""
    return [SweepPoint(c, n, d, batch_size, lr) for c in budgets for n, d in shapes]


def isoflop_points(
    hyper_runs: Sequence[dict[str, Any]], shapes: Sequence[tuple[int, int]],
    batch_size: int | None = None,
) -> list[SweepPoint]:  # fmt: skip
    """IsoFLOP profiles at the budgets of ``hyper_runs``, each budget's shapes trained with
    that budget's best (batch size, lr) from the grid (DeepSeek LLM §3.2 trains its IsoFLOP
    models with near-optimal hyperparameters). With ``batch_size`` given, every profile uses
    that batch and the budget's best lr among the grid's runs at that batch."""
    best: dict[float, dict[str, Any]] = {}
    for run in hyper_runs:
        if batch_size is not None and int(run["batch_size"]) != batch_size:
            continue
        c = float(run["compute"])
        if c not in best or float(run["loss"]) < float(best[c]["loss"]):
            best[c] = run
    return [SweepPoint(c, n, d, int(best[c]["batch_size"]), float(best[c]["lr"]))
            for c in sorted(best) for n, d in shapes]  # fmt: skip


def sweep_base_config(
    out_dir: str | Path, seq_len: int = 64, docs: int = 3000, val_docs: int = 100,
    vocab_size: int = 320, seed: int = 0,
) -> RunConfig:  # fmt: skip
    """The shared settings of a sweep's runs: the synthetic corpus written once into
    ``out_dir/data`` and one byte-level BPE tokenizer in ``out_dir/tokenizer``."""
    out = Path(out_dir)
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    texts = synthetic_corpus(docs + val_docs, seed=seed)
    paths = {"train": texts[:docs], "val": texts[docs:]}
    for split, split_texts in paths.items():
        lines = "".join(json.dumps({"text": t}) + "\n" for t in split_texts)
        (data_dir / f"{split}.jsonl").write_text(lines, encoding="utf-8")
    if not (out / "tokenizer" / "tokenizer.json").is_file():
        Tokenizer.train(paths["train"], vocab_size=vocab_size).save(out / "tokenizer")
    config = RunConfig()
    data = dataclasses.replace(
        config.data, paths=[str(data_dir / "train.jsonl")], val_paths=[str(data_dir / "val.jsonl")],
        tokenizer=str(out / "tokenizer"), seq_len=seq_len, num_workers=0,
    )  # fmt: skip
    train = dataclasses.replace(config.train, seed=seed, eval_every=0, save_every=0,
                                eval_batches=8, cpu_threads=1, resume=False)  # fmt: skip
    log = dataclasses.replace(config.log, progress=False, plot=False)
    return dataclasses.replace(config, data=data, train=train, log=log)


def point_config(base: RunConfig, point: SweepPoint, out_dir: str | Path) -> RunConfig:
    """``base`` for one run: the shape as model overrides, steps = C / (M · batch tokens)
    (≥ 1), a cosine schedule over them with 5 % warmup, the run folder ``out_dir/<name>``."""
    seq_len = base.data.seq_len
    m = deepseek_flops_per_token(point.n_layer, point.d_model, seq_len)
    steps = max(1, round(point.compute / (m * point.batch_size * seq_len)))
    overrides = dict(hidden_size=point.d_model, num_hidden_layers=point.n_layer,
                     intermediate_size=round(8 * point.d_model / 3),
                     num_attention_heads=point.d_model // HEAD_DIM,
                     num_key_value_heads=point.d_model // HEAD_DIM,
                     max_position_embeddings=max(seq_len, 64))  # fmt: skip
    model = dataclasses.replace(base.model, preset="tiny", overrides=overrides)
    optim = dataclasses.replace(base.optim, lr=point.lr, schedule="cosine",
                                warmup_steps=max(1, steps // 20), schedule_steps=steps)  # fmt: skip
    train = dataclasses.replace(base.train, batch_size=point.batch_size, max_steps=steps)
    return dataclasses.replace(base, out_dir=str(Path(out_dir) / point.name), model=model,
                               optim=optim, train=train)  # fmt: skip


def run_sweep(
    base: RunConfig, points: Sequence[SweepPoint], out_dir: str | Path,
    console: Console | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Train every point (skipping those already in ``out_dir/runs.jsonl``) and return all
    their records: compute, model_scale M, tokens, batch (tokens), batch_size, lr,
    n_layer, d_model, steps, the final validation ``loss`` and the run's process CPU
    seconds ``cpu_s``."""
    if any(p.d_model % HEAD_DIM for p in points):
        raise ValueError(f"d_model must be a multiple of {HEAD_DIM} (the head size)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    done = {}
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                done[record["name"]] = record
    console = console or Console(quiet=True)
    for point in points:
        if point.name in done:
            continue
        config = point_config(base, point, out / "runs")
        cpu_start = time.process_time()
        summary = train_pretrain(config, console=console)
        cpu_s = time.process_time() - cpu_start
        seq_len = base.data.seq_len
        steps = config.train.max_steps
        record = dict(name=point.name, compute=point.compute,
                      model_scale=deepseek_flops_per_token(point.n_layer, point.d_model, seq_len),
                      tokens=steps * point.batch_size * seq_len,
                      batch=point.batch_size * seq_len, batch_size=point.batch_size,
                      lr=point.lr, n_layer=point.n_layer, d_model=point.d_model, steps=steps,
                      loss=float(summary["val_loss"]), cpu_s=round(cpu_s, 2))  # fmt: skip
        with log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        done[point.name] = record
    return [done[p.name] for p in points]
