"""The R1-style pipeline end to end on a laptop CPU, from nothing (``lmforge demo``).

    tokenizer → pretrain → SFT into the R1 format → GRPO with rule rewards → report

(This module is long because it holds the whole pipeline: settings, data, stages, the gated
cold start and the multi-seed runner, each small, read top to bottom.)

1. **data**: a synthetic English corpus (`lmforge.data.tasks.synthetic_corpus`) plus
   multi-digit addition problems (`lmforge.data.tasks.arithmetic`, train split) with worked
   column-by-column reasoning, written as ``<think>7+8=15, 4+5+1=10</think><answer>105</answer>``;
2. **tokenizer**: byte-level BPE on that text (``lmforge tokenizer train``);
3. **pretrain** a tiny Llama-style model on it (``lmforge pretrain``);
4. **SFT** on chats whose assistant turns are in the R1 format (``lmforge sft``) — R1's
   cold start: a few hundred demonstrations, trained briefly, so the model knows the format
   and has started the method but still makes many mistakes; by default (`gated_cold_start`,
   ``--cold-start-acc 0.5``) in chunks at a constant lr until greedy accuracy on train-split
   problems reaches a target (``--cold-start-acc 0``: a fixed number of steps instead) —
   SFT accuracy jumps within
   a few dozen steps whose place moves with the seed and the CPU, so a gate on accuracy
   fixes GRPO's starting point where a step count cannot;
5. **GRPO** on fresh train problems with the rule reward (accuracy; the format weight is 0,
   since SFT already writes the format every time), rollouts sampled as the evaluation
   samples (temperature 0.6, top-p 0.95), DAPO dynamic sampling (groups that are all right or
   all wrong carry no signal and are replaced), a small learning rate (``lmforge grpo``) —
   it sharpens what SFT started;
6. **held-out accuracy** after each stage on the same test-split problems (never seen in
   training), measured as DeepSeek-R1 reports pass@1 — k samples per problem at temperature
   0.6, top-p 0.95, averaged (greedy accuracy alongside) — a ``report.md`` with PNG
   curves (loss, reward, accuracy, response length) and a summary table whose last line is ``RESULT demo sft_acc=<a> grpo_acc=<b>``.

Every stage calls its library entry point (`train_tokenizer_on_files`, `train_pretrain`,
`train_sft`, `run_grpo`) with a config built from the stage's recipe and overrides, exactly as
its command would (the report lists the commands, to rerun one alone); everything is seeded,
so the same seed gives the same numbers on the same machine — and different numbers on
another CPU, which is why `run_demo_seeds` reports several seeds and their mean, and every
report names the CPU (`machine_info`) with wall and CPU time. ``fast=True`` shrinks every
stage to seconds (tests). DeepSeek-R1-Zero (GRPO from the base, no SFT) is
`lmforge.align.r1_zero`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.align.grpo_trainer import GRPOConfig, GRPOSection, eval_rollout_sampling
from lmforge.align.r1_report import plot_report, print_summary, write_report
from lmforge.align.rl_run import run_grpo
from lmforge.align.rl_tasks import evaluate_accuracy, r1_prompt_ids
from lmforge.data.tasks.arithmetic import ArithmeticProblem, arithmetic_problems
from lmforge.data.tokenizer_training import train_tokenizer_on_files
from lmforge.models.hf import load_model
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import RunConfig, load_config
from lmforge.train.pretrain import train_pretrain
from lmforge.train.sft import train_sft

__all__ = [
    "FAST",
    "FULL",
    "DemoSettings",
    "Stage",
    "gated_cold_start",
    "gated_sft",
    "machine_info",
    "parse_seeds",
    "r1_solution",
    "run_demo",
    "run_demo_seeds",
    "stages",
    "train_demo_tokenizer",
    "train_stage",
    "worked_reasoning",
    "write_demo_data",
]


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs (`FULL` for ``make demo``, `FAST` for tests)."""

    digits: int = 3
    corpus_docs: int = 3000
    task_docs: int = 4000  # worked solutions in the pretraining text
    # R1's cold start: a small SFT set, trained briefly — it teaches the format and starts the
    # method; RL on fresh problems does the rest. Held-out pass@1 after SFT climbs steeply with
    # SFT steps (measured, 4000 chats: 120 → 5%, 150 → 22%, 200 → 75%; 300 or 1000 chats give
    # the same at 120 steps), and the step where it climbs moves with the CPU's floating
    # point (200 steps gave 75% on an AMD EPYC, 90% on an Intel CPU): stopping early leaves
    # a gap GRPO can close on every machine, rather than one that exists on some.
    sft_examples: int = 500  # the cold-start demonstrations
    eval_problems: int = 200
    preset: str = "demo"
    pretrain_steps: int = 250
    pretrain_batch: int = 16
    sft_steps: int = 160
    sft_batch: int = 16
    sft_lr: float = 1e-3
    grpo_steps: int = 100
    grpo_prompts_per_step: int = 16
    group_size: int = 8
    grpo_lr: float = 3e-5  # Adam's first steps move every weight by ≈ lr: 1e-4 wrecks it
    grpo_temperature: float = 0.6  # rollouts sampled as the evaluation samples
    grpo_top_p: float = 0.95
    grpo_evals: int = 4  # held-out evaluations during GRPO (curves)
    dynamic_sampling: bool = True  # DAPO: only groups with a reward signal
    sampling_rounds: int = 2  # at most this many rollout rounds per step to fill the groups
    format_weight: float = 0.0  # SFT already writes the format every time
    max_new_tokens: int = 48
    seq_len: int = 128
    eval_samples: int = 4  # pass@1 over this many samples per held-out problem
    eval_temperature: float = 0.6  # DeepSeek-R1's pass@1 sampling
    eval_top_p: float = 0.95
    # Accuracy-gated cold start (``--cold-start-acc``; FULL uses 0.5): > 0 replaces the fixed
    # ``sft_steps`` by SFT in chunks at a constant lr (one run, resumed exactly each chunk),
    # stopping once greedy accuracy on train-split problems (never the held-out ones)
    # reaches this fraction, or at ``cold_start_max_steps``.
    cold_start_acc: float = 0.0
    cold_start_chunk: int = 20
    cold_start_max_steps: int = 400
    cold_start_problems: int = 100  # train-split problems the gate measures on


# The demo's default: the gated cold start (a fixed step count lands seeds anywhere from 13 %
# to 65 % after SFT, and the one at 13 % never learns under GRPO; BENCHMARKS.md, "The demo,
# robust"). FAST keeps the fixed steps (a seconds-long smoke run).
FULL = DemoSettings(cold_start_acc=0.5)
FAST = DemoSettings(corpus_docs=200, task_docs=300, sft_examples=200, eval_problems=16,
                    preset="tiny", pretrain_steps=20, sft_steps=10, grpo_steps=3,
                    grpo_prompts_per_step=2, group_size=4, max_new_tokens=24, eval_samples=2,
                    grpo_evals=1, cold_start_chunk=5, cold_start_max_steps=10,
                    cold_start_problems=8)  # fmt: skip


def gated_cold_start(
    train_to: Callable[[int], None],
    measure: Callable[[], float],
    *,
    target: float,
    chunk: int,
    max_steps: int,
) -> list[dict[str, float]]:
    """SFT until an accuracy gate: ``train_to(n)`` continues the run to step n (chunk, 2·chunk,
    … capped at ``max_steps``), ``measure()`` is the accuracy after it; stops at the first
    chunk whose accuracy is ≥ ``target`` or at ``max_steps``. Returns one ``{"steps",
    "accuracy"}`` per chunk, the last being where SFT stopped."""
    if chunk < 1 or max_steps < 1:
        raise ValueError(f"cold start: chunk={chunk} and max_steps={max_steps} must be ≥ 1")
    chunks: list[dict[str, float]] = []
    steps = 0
    while steps < max_steps:
        steps = min(steps + chunk, max_steps)
        train_to(steps)
        chunks.append({"steps": steps, "accuracy": measure()})
        if chunks[-1]["accuracy"] >= target:
            break
    return chunks


def worked_reasoning(problem: ArithmeticProblem) -> str:
    """Column-by-column addition from the units up, one ``a+b(+carry)=s`` per column."""
    if problem.op != "+":
        raise ValueError(f"worked reasoning covers addition only, not {problem.op!r}")
    a, b = str(problem.a)[::-1], str(problem.b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(a), len(b))):
        da, db = int(a[i]) if i < len(a) else 0, int(b[i]) if i < len(b) else 0
        total = da + db + carry
        steps.append(f"{da}+{db}" + (f"+{carry}" if carry else "") + f"={total}")
        carry = total // 10
    return ", ".join(steps)


def r1_solution(problem: ArithmeticProblem) -> str:
    """The R1-format answer: ``<think>reasoning</think><answer>result</answer>``."""
    return f"<think>{worked_reasoning(problem)}</think><answer>{problem.answer}</answer>"


def run_demo(
    out_dir: str | os.PathLike = "runs/demo",
    *,
    seed: int = 0,
    fast: bool = False,
    cold_start_acc: float | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the pipeline into ``out_dir``; returns the summary (accuracies, paths, times).
    ``cold_start_acc`` overrides the settings' accuracy gate (`DemoSettings.cold_start_acc`;
    0: the fixed ``sft_steps``)."""
    settings = FAST if fast else FULL
    if cold_start_acc is not None:
        if not 0 <= cold_start_acc <= 1:
            raise ValueError(f"cold_start_acc={cold_start_acc} must be in [0, 1]")
        settings = replace(settings, cold_start_acc=cold_start_acc)
    console = console or Console()
    out = Path(out_dir)
    if out.exists():  # a demo always starts from nothing (each stage would otherwise resume)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    threads = torch.get_num_threads()
    try:
        return _run(out, settings, seed, console)
    finally:
        torch.set_num_threads(threads)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → [0, 1, 2] (distinct integers; errors name the bad item)."""
    seeds = []
    for item in text.split(","):
        try:
            seeds.append(int(item.strip()))
        except ValueError:
            raise ValueError(f"--seeds {text!r}: {item.strip()!r} is not an integer") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: a seed is repeated")
    return seeds


def _seed_worker(out: str, seed: int, fast: bool, cold_start_acc: float | None) -> dict[str, Any]:
    """One seed's run in a worker process, its console going to ``console-seed<s>.log`` next
    to ``out``."""
    with open(Path(out).parent / f"console-seed{seed}.log", "w", encoding="utf-8") as log:
        return run_demo(out, seed=seed, fast=fast, cold_start_acc=cold_start_acc,
                        console=Console(file=log, width=120))  # fmt: skip


def run_demo_seeds(
    out_dir: str | os.PathLike = "runs/demo",
    seeds: Sequence[int] = (0,),
    *,
    fast: bool = False,
    jobs: int = 1,
    cold_start_acc: float | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """The demo once per seed, into ``out_dir/seed-<s>`` (one seed: ``out_dir`` itself), then
    the per-seed table, the mean and the gain check (`lmforge.align.r1_report.aggregate_seeds`)
    in ``out_dir/seeds.json`` and ``seeds.md``. ``jobs`` > 1 runs that many seeds at once in
    worker processes (each stage uses one thread, so a 2-core CPU runs 2 at full speed)."""
    from lmforge.align.r1_report import aggregate_seeds, print_seeds, write_seeds_report

    console = console or Console()
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seeds to run")
    if jobs < 1:
        raise ValueError(f"jobs={jobs} must be ≥ 1")
    if len(seeds) == 1:
        return run_demo(out_dir, seed=seeds[0], fast=fast, cold_start_acc=cold_start_acc,
                        console=console)  # fmt: skip
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    folders = {seed: str(out / f"seed-{seed}") for seed in seeds}
    if jobs == 1:
        summaries = [run_demo(folders[seed], seed=seed, fast=fast,
                              cold_start_acc=cold_start_acc, console=console)
                     for seed in seeds]  # fmt: skip
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        console.print(f"running seeds {seeds} in {min(jobs, len(seeds))} worker processes; "
                      f"consoles in {out}/console-seed<s>.log", highlight=False)  # fmt: skip
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(seeds)), mp_context=context) as pool:
            futures = [
                pool.submit(_seed_worker, folders[seed], seed, fast, cold_start_acc)
                for seed in seeds
            ]
            summaries = [f.result() for f in futures]
        for summary in summaries:
            print_summary(summary, console)
    result = aggregate_seeds(summaries)
    workers_cpu = sum(s["cpu_s"] for s in summaries) if jobs > 1 else 0.0
    result.update(total_s=time.perf_counter() - start,
                  cpu_s=time.process_time() - cpu_start + workers_cpu, jobs=jobs,
                  machine=machine_info(), run_dir=str(out))  # fmt: skip
    write_seeds_report(out, result)
    print_seeds(result, console)
    return result


def machine_info() -> dict[str, Any]:
    """The CPU model (``/proc/cpuinfo``'s model name, else `platform.processor`), the core
    count, torch's version and the platform: what a demo figure was measured on."""
    import platform

    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {"cpu": model or platform.processor() or platform.machine() or "unknown",
            "cores": os.cpu_count(), "torch": torch.__version__,
            "platform": platform.platform()}  # fmt: skip


RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TOKENIZER_VOCAB = 512


@dataclass(frozen=True)
class Stage:
    """One training stage: what its command line says, as a recipe and overrides."""

    name: str  # the lmforge command: pretrain, sft, grpo
    recipe: Path
    out: Path
    model: Path | None  # --model (model.init_from)
    overrides: tuple[str, ...]

    def config(self, cls: type[RunConfig] = RunConfig) -> RunConfig:
        """The config ``lmforge <name> --config … --out … [--model …] overrides`` builds."""
        extra = [f"out_dir={json.dumps(str(self.out))}"]
        if self.model is not None:
            extra.append(f"model.init_from={json.dumps(str(self.model))}")
        return load_config(self.recipe, [*self.overrides, *extra], cls)

    def command(self) -> str:
        """The equivalent ``lmforge`` command line (to rerun the stage alone)."""
        model = f" --model {self.model}" if self.model is not None else ""
        return (f"lmforge {self.name} --config {self.recipe} --out {self.out}{model} "
                + " ".join(self.overrides))  # fmt: skip


def stages(out: Path, s: DemoSettings, seed: int, data: dict[str, Path]) -> dict[str, Stage]:
    """The pretrain, SFT and GRPO stages of a demo run into ``out``."""
    common = (f"train.seed={seed}", "train.cpu_threads=1", "train.max_time_s=0",
              "train.eval_every=0", "train.save_every=0", "log.progress=false")  # fmt: skip
    return {
        "pretrain": Stage("pretrain", RECIPES / "pretrain-tiny.yaml", out / "pretrain", None,
                          (*common, f"data.paths=[{data['pretrain']}]",
                           f"data.tokenizer={out / 'tokenizer'}", f"model.preset={s.preset}",
                           f"data.seq_len={s.seq_len}", f"train.max_steps={s.pretrain_steps}",
                           f"train.batch_size={s.pretrain_batch}", "data.val_paths=[]")),
        "sft": Stage("sft", RECIPES / "sft-tiny.yaml", out / "sft", out / "pretrain" / "model",
                     (*common, f"data.paths=[{data['sft']}]", f"train.max_steps={s.sft_steps}",
                      f"train.batch_size={s.sft_batch}", f"optim.lr={s.sft_lr}",
                      f"data.seq_len={s.seq_len}", "data.val_fraction=0",
                      *(["optim.schedule=constant"] if s.cold_start_acc > 0 else []))),
        "grpo": Stage("grpo", RECIPES / "grpo-tiny.yaml", out / "grpo", out / "sft" / "model",
                      (*common, f"train.max_steps={s.grpo_steps}", f"optim.lr={s.grpo_lr}",
                       f"train.batch_size={s.grpo_prompts_per_step * s.group_size}",
                       "train.grad_accum=1", f"grpo.group_size={s.group_size}",
                       f"grpo.digits={s.digits}", "grpo.ops=['+']",
                       f"grpo.max_new_tokens={s.max_new_tokens}",
                       f"grpo.eval_prompts={s.eval_problems}",
                       f"grpo.temperature={s.grpo_temperature}", f"grpo.top_p={s.grpo_top_p}",
                       f"grpo.dynamic_sampling={str(s.dynamic_sampling).lower()}",
                       f"grpo.max_sampling_rounds={s.sampling_rounds}",
                       f"grpo.format_weight={s.format_weight}",
                       f"grpo.eval_samples={s.eval_samples}",
                       f"grpo.eval_temperature={s.eval_temperature}",
                       f"grpo.eval_top_p={s.eval_top_p}",
                       f"train.eval_every={max(1, s.grpo_steps // (s.grpo_evals + 1))}")),
    }  # fmt: skip


def train_stage(stage: Stage, console: Console) -> None:
    """Run one stage through its library entry point."""
    if stage.name == "pretrain":
        train_pretrain(stage.config(), console=console)
    elif stage.name == "sft":
        train_sft(stage.config(), console=console)
    else:
        run_grpo(stage.config(GRPOConfig), console=console)


def train_demo_tokenizer(corpus: Path, out: Path, console: Console) -> None:
    """Byte-level BPE on the pretraining text (``lmforge tokenizer train``)."""
    tok, num_docs, files = train_tokenizer_on_files([corpus], TOKENIZER_VOCAB)
    tok.save(out)
    console.print(
        f"trained a tokenizer with {tok.vocab_size} ids on {num_docs} documents "
        f"from {len(files)} file(s) -> {out}",
        highlight=False,
        soft_wrap=True,
    )
    if tok.vocab_size < TOKENIZER_VOCAB:
        console.print(f"note: the data supports only {tok.vocab_size} of the "
                      f"{TOKENIZER_VOCAB} ids asked", highlight=False)  # fmt: skip


def _run(out: Path, s: DemoSettings, seed: int, console: Console) -> dict[str, Any]:
    start, cpu_start = time.perf_counter(), time.process_time()
    times: dict[str, float] = {}
    data = write_demo_data(out / "data", s, seed)
    console.rule("[bold]1. tokenizer")
    tick = time.perf_counter()
    train_demo_tokenizer(data["pretrain"], out / "tokenizer", console)
    times["tokenizer"] = time.perf_counter() - tick
    plan = stages(out, s, seed, data)

    section = GRPOSection(
        digits=s.digits,
        ops=["+"],
        max_new_tokens=s.max_new_tokens,
        eval_temperature=s.eval_temperature,
        eval_top_p=s.eval_top_p,
    )
    held_out = arithmetic_problems(s.eval_problems, seed, "test", s.digits, ("+",))
    sampling = eval_rollout_sampling(section)
    accuracy: dict[str, dict[str, Any]] = {}

    def evaluate(stage: str) -> None:
        folder = out / stage / "model"
        tok, model = load_tokenizer(folder), load_model(folder, dtype=torch.float32)
        encode = lambda item: r1_prompt_ids(tok, item)  # noqa: E731
        a = evaluate_accuracy(model, tok, held_out, encode, sampling, samples=s.eval_samples,
                              seed=seed)  # fmt: skip
        a["greedy"] = evaluate_accuracy(model, tok, held_out, encode, sampling)["accuracy"]
        accuracy[stage] = a
        console.print(
            f"[bold]{stage}[/]: held-out pass@1 {100 * a['accuracy']:.1f}% "
            f"(greedy {100 * a['greedy']:.1f}%), format {100 * a['format']:.1f}%, "
            f"mean length {a['length']:.1f} tokens"
        )

    cold_start: list[dict[str, float]] = []
    for number, stage in enumerate(("pretrain", "sft", "grpo"), start=2):
        console.rule(f"[bold]{number}. {stage}")
        tick = time.perf_counter()
        if stage == "sft" and s.cold_start_acc > 0:
            cold_start = gated_sft(plan, s, seed, sampling, console)
        else:
            train_stage(plan[stage], console)
        times[stage] = time.perf_counter() - tick
        evaluate(stage)

    final = out / "model"
    shutil.copytree(out / "grpo" / "model", final)
    summary = {
        "settings": asdict(s),
        "seed": seed,
        "accuracy": {
            k: {m: v[m] for m in ("accuracy", "greedy", "format", "length")}
            for k, v in accuracy.items()
        },  # fmt: skip
        "samples": accuracy["grpo"]["samples"],
        "sft_acc": 100 * accuracy["sft"]["accuracy"],
        "grpo_acc": 100 * accuracy["grpo"]["accuracy"],
        "cold_start": cold_start,  # the gated cold start's chunks (empty: fixed sft_steps)
        "times_s": times,
        "total_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu_start,
        "machine": machine_info(),
        "commands": {k: stage.command() for k, stage in plan.items()},
        "run_dir": str(out),
        "model_dir": str(final),
    }
    summary["plot"] = str(plot_report(out, out / "curves.png"))
    summary["report"] = str(write_report(out, summary, TOKENIZER_VOCAB))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print_summary(summary, console)
    return summary


def gated_sft(
    plan: dict[str, Stage], s: DemoSettings, seed: int, sampling: Any, console: Console
) -> list[dict[str, float]]:
    """The SFT stage under the accuracy gate (`gated_cold_start`): each chunk resumes the one
    run (the Trainer's exact resume; only ``train.max_steps`` changes, a stopping key) and is
    measured by greedy accuracy on train-split problems; ``plan["sft"]`` becomes the stage as
    it ended (its command reruns it)."""
    gate = arithmetic_problems(s.cold_start_problems, seed + 2, "train", s.digits, ("+",))
    base = plan["sft"]

    def train_to(steps: int) -> None:
        plan["sft"] = replace(base, overrides=(*base.overrides, f"train.max_steps={steps}"))
        train_sft(plan["sft"].config(), console=console)

    def measure() -> float:
        folder = plan["sft"].out / "model"
        tok, model = load_tokenizer(folder), load_model(folder, dtype=torch.float32)
        encode = lambda item: r1_prompt_ids(tok, item)  # noqa: E731
        accuracy = evaluate_accuracy(model, tok, gate, encode, sampling)["accuracy"]
        console.print(f"cold start gate: step {plan['sft'].config().train.max_steps}, greedy "
                      f"accuracy on {len(gate)} train problems {100 * accuracy:.1f}% "
                      f"(target {100 * s.cold_start_acc:.0f}%)", highlight=False)  # fmt: skip
        return accuracy

    chunks = gated_cold_start(train_to, measure, target=s.cold_start_acc,
                              chunk=s.cold_start_chunk, max_steps=s.cold_start_max_steps)  # fmt: skip
    reached = chunks[-1]["accuracy"] >= s.cold_start_acc
    console.print(f"cold start: stopped at step {chunks[-1]['steps']:.0f} "
                  f"({'target reached' if reached else 'max steps, target not reached'})",
                  highlight=False)  # fmt: skip
    return chunks


def write_demo_data(folder: Path, s: DemoSettings, seed: int) -> dict[str, Path]:
    """Pretraining text (corpus + worked problems) and SFT chats, from the train split."""
    from lmforge.data.tasks import synthetic_corpus
    from lmforge.io import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    problems = arithmetic_problems(s.task_docs + s.sft_examples, seed + 1, "train", s.digits,
                                   ("+",))  # fmt: skip
    task_text = [f"{p.prompt} {r1_solution(p)}" for p in problems[: s.task_docs]]
    docs = synthetic_corpus(s.corpus_docs, seed) + task_text
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    pretrain, sft = folder / "pretrain.jsonl", folder / "sft.jsonl"
    atomic_write_text(pretrain, "".join(json.dumps({"text": docs[i]}) + "\n" for i in order))
    chats = [
        {"messages": [{"role": "user", "content": p.prompt},
                      {"role": "assistant", "content": r1_solution(p)}]}
        for p in problems[s.task_docs :]
    ]  # fmt: skip
    atomic_write_text(sft, "".join(json.dumps(c) + "\n" for c in chats))
    return {"pretrain": pretrain, "sft": sft}
