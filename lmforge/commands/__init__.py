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
| `gan` | ``lmforge gan train/sample``: `lmforge.generative.gan_training.train_gan` (``gan.method``: gan / nsgan / wgan / wgan-gp), `lmforge.generative.gan_diagnostics.generate` |
| `medusa` | ``lmforge medusa train``: Medusa heads for a checkpoint (`lmforge.train.drafter_objectives.train_medusa`) |
| `eagle` | ``lmforge eagle train``: an EAGLE drafter layer (`lmforge.train.drafter_objectives.train_eagle`) |
| `vlm` | ``lmforge vlm sft``: multimodal SFT of a vision-language model (`lmforge.train.vlm_sft.train_vlm_sft`) |
| `agent` | ``lmforge agent sft/rl/eval/run``: GUI agents — `lmforge.agents.sft.train_agent_sft`, `lmforge.agents.rl.train_agent_rl`, `lmforge.agents.rollout.evaluate_agent`, one recorded episode (`lmforge.agents.rollout.save_gif`) |
| `vqgan` | ``lmforge vqgan train/prior/sample``: `lmforge.generative.vqgan_training.train_vqgan`, `lmforge.generative.code_prior_training.train_code_prior`, `lmforge.generative.code_prior.sample_codes` |
| `text2image` | ``lmforge text2image train/sample``: `lmforge.diffusion.text2image.train_text2image` (KL autoencoder, then text encoder + cross-attention DiT), `lmforge.diffusion.text2image_pipeline.sample_text2image` |
"""

from lmforge.commands import (
    agent,
    chat,
    convert,
    demo,
    diffusion,
    dpo,
    eagle,
    eval,
    foundations,
    gan,
    generate,
    grpo,
    hallucination,
    info,
    medusa,
    merge,
    ppo,
    pretrain,
    rl,
    rm,
    scaling,
    serve,
    sft,
    text2image,
    tokenizer,
    vlm,
    vqgan,
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
    gan,
    vqgan,
    text2image,
    medusa,
    eagle,
    vlm,
    agent,
)

__all__ = ["COMMANDS", "CommandError"]
