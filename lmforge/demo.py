"""`lmforge demo`: train a tiny LM from scratch on a laptop CPU in about a minute, end to end.

    synthetic corpus → byte-level BPE (vocab 512) → packed rows of 128 tokens →
    AdamW (warmup + cosine) for ``seconds`` → HF checkpoint → reload → sample

Everything is generated locally (`lmforge.data.tasks.synthetic_corpus`), so the demo runs
offline. The run folder gets ``metrics.jsonl`` (one JSON object per step), ``training.png``
(loss and learning-rate curves) and ``model/`` (an HF-format checkpoint with its tokenizer).

The training loop here is deliberately small; the real engine lives in ``lmforge.train``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from lmforge.data.packing import pack_token_lists
from lmforge.data.tasks import synthetic_corpus
from lmforge.models.hf import load_model, save_model
from lmforge.models.presets import preset_config
from lmforge.models.transformer import IGNORE_INDEX, CausalLM
from lmforge.tokenizer import Tokenizer, load_tokenizer
from lmforge.train.metrics import plot_training

SEQ_LEN, BATCH_SIZE = 128, 16
PEAK_LR, MIN_LR_RATIO, WARMUP_STEPS = 3e-3, 0.1, 20
MIN_STEPS = 4  # even when `seconds` runs out sooner
WEIGHT_DECAY, GRAD_CLIP = 0.1, 1.0
VAL_DOCS, MIN_VOCAB = 200, 512
PROMPTS = ["12 + 7 =", "3 + 5 =", "Once upon a time, there was a little", "A cow says"]


def run_demo(
    out_dir: str | os.PathLike,
    seconds: float = 60,
    preset: str = "demo",
    seed: int = 0,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out_dir``; return a summary (losses, throughput, paths, samples)."""
    if not seconds > 0:
        raise ValueError(f"seconds={seconds!r} must be > 0")
    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        return _run(out, seconds, preset, seed, console)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, seconds: float, preset: str, seed: int, console: Console) -> dict[str, Any]:
    # Enough documents that a fast CPU never sees one twice; fewer for short runs.
    docs = synthetic_corpus(VAL_DOCS + min(40_000, max(2_000, int(300 * seconds))), seed)
    val_docs, train_docs = docs[:VAL_DOCS], docs[VAL_DOCS:]
    # Byte-level BPE needs 256 bytes + special tokens, so tiny presets get a 512-id vocabulary.
    vocab_size = max(preset_config(preset).vocab_size, MIN_VOCAB)
    console.print(f"[bold]corpus[/]: {len(train_docs)} train / {len(val_docs)} validation docs")
    tok = Tokenizer.train(train_docs, vocab_size=vocab_size)
    config = preset_config(
        preset,
        vocab_size=vocab_size,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    train, val = pack_documents(tok, train_docs, SEQ_LEN), pack_documents(tok, val_docs, SEQ_LEN)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CausalLM(config)
    console.print(
        f"[bold]model[/]: preset {preset!r}, {model.num_parameters():,} parameters, "
        f"tokenizer vocab {tok.vocab_size}, {torch.get_num_threads()} CPU threads"
    )

    val_before = evaluate(model, val)
    console.print(f"validation loss before training: {val_before:.3f}")
    records = train_model(model, train, seconds, seed, out / "metrics.jsonl", console)
    val_after = evaluate(model, val)
    console.print(f"validation loss after training:  {val_after:.3f}")
    plot_metrics(records, val_before, val_after, out / "training.png")

    model_dir = save_model(model, out / "model", tokenizer=tok)
    samples = sample_completions(load_model(model_dir), load_tokenizer(model_dir), seed)
    last = records[-1]
    summary = {
        "preset": preset,
        "parameters": model.num_parameters(),
        "steps": last["step"],
        "tokens": last["tokens"],
        "tokens_per_s": last["tokens_per_s"],
        "train_seconds": last["elapsed_s"],
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "run_dir": str(out),
        "model_dir": str(model_dir),
        "metrics": str(out / "metrics.jsonl"),
        "plot": str(out / "training.png"),
        "samples": samples,
    }
    _print_summary(summary, console)
    return summary


def pack_documents(tok: Tokenizer, docs: list[str], seq_len: int) -> dict[str, torch.Tensor]:
    """Concatenate ``<bos> doc <eos>`` token streams and cut them into ``[N, seq_len]`` rows
    (`lmforge.data.packing`, greedy); the last, partial row is left out.

    ``document_ids`` keeps attention inside each document (positions restart too); the label
    of a document's first token is ignored, so no loss is spent predicting across documents.
    """
    encoded = tok.encode_batch(docs, add_special_tokens=True)
    token_lists = [[*doc, tok.eos_token_id] for doc in encoded]
    rows = sum(map(len, token_lists)) // seq_len
    if rows == 0:
        raise ValueError(f"{len(docs)} documents give fewer than seq_len={seq_len} tokens")
    packed, _ = pack_token_lists(token_lists, seq_len, strategy="greedy", split=True)
    return {key: value[:rows] for key, value in packed.items()}


def lr_at(step: int, progress: float) -> float:
    """Linear warmup over `WARMUP_STEPS`, then cosine decay to ``MIN_LR_RATIO × PEAK_LR``.

    The decay follows ``progress`` (elapsed / budgeted seconds), because a time-boxed run
    does not know its step count in advance.
    """
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return PEAK_LR * warmup * (MIN_LR_RATIO + (1.0 - MIN_LR_RATIO) * cosine)


def train_model(
    model: CausalLM,
    data: dict[str, torch.Tensor],
    seconds: float,
    seed: int,
    metrics_path: Path,
    console: Console,
) -> list[dict[str, Any]]:
    """Train for ``seconds`` of wall-clock time (and at least `MIN_STEPS` steps); one metrics record per step (also written
    to ``metrics_path`` as JSON lines). Stops with an error on a non-finite loss."""
    optimizer = _adamw(model)
    batches = _batches(len(data["input_ids"]), seed)
    records: list[dict[str, Any]] = []
    model.train()
    columns = [TextColumn("[bold]training"), BarColumn(), TextColumn("{task.fields[status]}")]
    with (
        open(metrics_path, "w", encoding="utf-8") as log,
        Progress(*columns, TimeRemainingColumn(), console=console) as progress,
    ):
        task = progress.add_task("train", total=seconds, status="")
        start, tokens = time.perf_counter(), 0
        # at least MIN_STEPS steps, so a slow or busy machine still shows learning
        while len(records) < MIN_STEPS or time.perf_counter() - start < seconds:
            step = len(records) + 1
            lr = lr_at(step - 1, (time.perf_counter() - start) / seconds)
            rows = next(batches)
            loss, grad_norm = _train_step(
                model, optimizer, {k: v[rows] for k, v in data.items()}, lr
            )
            if not math.isfinite(loss):
                raise FloatingPointError(f"step {step}: loss is {loss} on rows {rows.tolist()}")
            tokens += len(rows) * SEQ_LEN
            elapsed = time.perf_counter() - start
            record = dict(step=step, loss=loss, lr=lr, grad_norm=grad_norm, tokens=tokens,
                          tokens_per_s=tokens / elapsed, elapsed_s=elapsed)  # fmt: skip
            records.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            status = f"loss {loss:.3f}  lr {lr:.2e}  {record['tokens_per_s']:,.0f} tok/s"
            progress.update(task, completed=min(elapsed, seconds), status=status)
    return records


def _adamw(model: CausalLM) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norm gains or biases)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay}]
    return torch.optim.AdamW(groups, lr=PEAK_LR, betas=(0.9, 0.95), weight_decay=0.0)


def _train_step(
    model: CausalLM, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], lr: float
) -> tuple[float, float]:
    """One optimizer step at learning rate ``lr``; returns (loss, pre-clip gradient norm)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model(**batch).loss
    if not torch.isfinite(loss):
        return loss.item(), float("nan")  # the caller stops before the weights are touched
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), grad_norm.item()


def _batches(n_rows: int, seed: int):
    """Endless row-index batches: a fresh shuffle per epoch, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n_rows, generator=generator)
        for i in range(0, n_rows, BATCH_SIZE):
            yield order[i : i + BATCH_SIZE]


@torch.no_grad()
def evaluate(model: CausalLM, data: dict[str, torch.Tensor]) -> float:
    """Mean next-token loss over every row of ``data`` (weighted by predicted tokens)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data["input_ids"]), BATCH_SIZE):
        batch = {k: v[i : i + BATCH_SIZE] for k, v in data.items()}
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += model(**batch).loss.item() * n
        count += n
    model.train()
    return total / count


def plot_metrics(
    records: list[dict[str, Any]], val_before: float, val_after: float, path: Path
) -> None:
    """Save loss (train, validation before/after), learning rate and gradient norm as a PNG."""
    evals = [
        {"step": 0, "val_loss": val_before},
        {"step": records[-1]["step"], "val_loss": val_after},
    ]
    plot_training(records + evals, path)


def sample_completions(model: CausalLM, tok: Tokenizer, seed: int) -> list[dict[str, str]]:
    """Greedy and sampled (temperature 0.8) completions of `PROMPTS`."""
    samples = []
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt, add_special_tokens=True)])
        for mode, kwargs in (("greedy", {}), ("sampled", {"do_sample": True, "temperature": 0.8})):
            out = model.generate(ids, max_new_tokens=40, seed=seed, **kwargs)
            text = tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
            samples.append({"prompt": prompt, "mode": mode, "completion": text})
    return samples


def _print_summary(summary: dict[str, Any], console: Console) -> None:
    console.rule("[bold]samples (reloaded checkpoint)")
    for s in summary["samples"]:
        completion = s["completion"].replace("\n", " ⏎ ")
        console.print(f"[dim]{s['mode']:>7}[/] [bold]{s['prompt']}[/]{completion}", highlight=False)
    console.rule("[bold]summary")
    console.print(
        f"parameters {summary['parameters']:,} · steps {summary['steps']} · "
        f"tokens {summary['tokens']:,} · {summary['tokens_per_s']:,.0f} tokens/s\n"
        f"validation loss {summary['val_loss_before']:.3f} → {summary['val_loss_after']:.3f}\n"
        f"checkpoint {summary['model_dir']}\nmetrics    {summary['metrics']}\n"
        f"plot       {summary['plot']}",
        highlight=False,
    )
