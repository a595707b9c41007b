"""The command layer: one module per ``lmforge <command>``, each with ``add_parser(subparsers)``
(flags, help, examples) and ``run(args) -> int`` (flags → a typed config → one library
call). Nothing in the library imports this package; `lmforge.cli` builds the parser from
`COMMANDS`, in this order (the order of ``lmforge --help``).

| module | what |
|---|---|
| `common` | `CommandError`, the parser (``KEY=VALUE`` overrides parse anywhere on the line) and subparser factory, ``--config/--out/--print-config`` → typed config (built-in recipes without ``--config``), ``--model`` folders (Hub ids via the local cache), the ``--peft`` flags |
| `tokenizer` | ``lmforge tokenizer train``: BPE on .txt / .jsonl files (`lmforge.data.tokenizer_training`) |
| `info` | ``lmforge info``: architecture, parameters, memory, dtype, shards (`lmforge.models.info`) |
| `convert` | ``lmforge convert``: another dtype and/or shard size, tokenizer files copied |
| `generate` | ``lmforge generate``: continue a prompt (`lmforge.infer.generate`) |
| `demo` | ``lmforge demo``: the R1-style pipeline (`lmforge.align.r1_pipeline`) |
| `serve` | ``lmforge serve``: the OpenAI-compatible server (`lmforge.serve`) |
| `chat` | ``lmforge chat``: a terminal chat (`lmforge.serve.terminal_chat`) |
| `pretrain` | ``lmforge pretrain``: `lmforge.train.pretrain.train_pretrain` |
| `sft` | ``lmforge sft``: `lmforge.train.sft.train_sft` |
| `merge` | ``lmforge merge``: a LoRA adapter folded into its base (`lmforge.peft.merging`) |
| `dpo` | ``lmforge dpo``: `lmforge.align.dpo_trainer.train_dpo` |
| `rm` | ``lmforge rm``: `lmforge.align.rm_trainer.train_rm` |
| `grpo` | ``lmforge grpo``: `lmforge.align.rl_run.run_grpo` |
| `ppo` | ``lmforge ppo``: `lmforge.align.rl_run.run_ppo` |
| `diffusion` | ``lmforge diffusion train/reflow/sample``: `lmforge.diffusion.training.train_diffusion` (reflow included), `lmforge.generative.flow_training.train_flow` (``diffusion.method: nice / realnvp``), `lmforge.diffusion.sampling` |
| `eval` | ``lmforge eval``: perplexity, pass@k / maj@k on tasks, checkpoints side by side (`lmforge.eval`) |
| `scaling` | ``lmforge scaling plan/fit/flops/sweep``: DeepSeek LLM scaling laws (`lmforge.eval.scaling`) |
| `hallucination` | ``lmforge hallucination run``: the synthetic-knowledge study (`lmforge.eval.hallucination_study`) |
| `rl` | ``lmforge rl solve/sa``: classic RL on the grid world / gymnasium toy text (`lmforge.rl.solve.solve`); SGD vs MBGD vs BGD |
| `foundations` | ``lmforge foundations cpc/margin/oadtr``: `lmforge.representation.runs`, `lmforge.video.runs` |
"""

from lmforge.commands import (
    chat,
    convert,
    demo,
    diffusion,
    dpo,
    eval,
    foundations,
    generate,
    grpo,
    hallucination,
    info,
    merge,
    ppo,
    pretrain,
    rl,
    rm,
    scaling,
    serve,
    sft,
    tokenizer,
)
from lmforge.commands.common import CommandError

COMMANDS = (
    tokenizer,
    info,
    convert,
    generate,
    demo,
    serve,
    chat,
    pretrain,
    sft,
    merge,
    dpo,
    rm,
    grpo,
    ppo,
    diffusion,
    eval,
    scaling,
    hallucination,
    rl,
    foundations,
)

__all__ = ["COMMANDS", "CommandError"]
