"""Self-speculative decoding side by side: a draft model, MTP, Medusa and EAGLE drafters in
lmforge's engine vs plain decoding, with transformers' assisted generation as the peer.

1. A target of the ``--preset`` shape (default ``30m``; its vocabulary resized to a BPE
   tokenizer of ``--vocab`` ids trained on the corpus) with ``--mtp`` MTP modules is trained
   jointly with them (DeepSeek-V3's loss: L_main + λ·mean_k L_MTP^k) on lmforge's
   TinyStories-like corpus (`lmforge.data.tasks.synthetic_corpus`: templated stories and
   word problems — real-text-like, far from a Markov chain) for ``--train-steps`` steps.
   A trained target is cached in ``--cache`` and reused.
2. Each drafter is trained on the same data for the same ``--drafter-steps`` steps:
   Medusa-1 heads (frozen target, λ_k = 0.8^k), the EAGLE layer (SmoothL1 on features +
   0.1·CE), and a small draft model (hidden 128, 2 layers, next-token loss).
3. On held-out prompts (other seeds of the corpus) the engine decodes greedily
   ``--new-tokens`` tokens at batch 1 (one request at a time) and batch 8 (eight at once),
   plain and with every drafter: tokens per CPU-second of this process (robust on a shared
   machine) and per wall second, best of ``--rounds`` rounds with the methods interleaved,
   τ (tokens per verification forward) and the acceptance at each draft depth. At batch > 1
   ``--batched-drafting`` (default ``both``) also runs each method with the drafts of a step
   made in one `propose_batch` call (``name+batched``: the engine's own path; the
   per-request baseline is `PerRequestDraftingEngine`); every
   method's output is compared with plain greedy. The peer is transformers' ``generate`` on the same
   weights (exported): plain, ``prompt_lookup_num_tokens`` and ``assistant_model`` (the
   draft model), batch 1.

    nice -n 10 python bench/self_speculative.py [--preset 30m] [--train-steps 300] ...

Last line: ``RESULT self_speculative best_speedup=<x> best_method=<name> mtp_acc2=<a>
medusa_tau=<t> eagle_tau=<u> best_speedup_wall=<w>`` (the first batch size, 1 by default,
speed-ups in CPU time and in wall time; mtp_acc2: acceptance of MTP's first draft, the second
token of a step), then ``best_method_b<B>``, ``best_speedup_b<B>``, ``best_speedup_wall_b<B>``
for the last batch size when several are measured. Trained
drafters are cached beside the target (``--cache``), keyed by their shapes and steps.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from lmforge import CausalLM, ModelConfig
from lmforge.data.tasks import synthetic_corpus
from lmforge.infer.drafting import DraftLengthSchedule, ModelDrafter
from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.infer.self_drafters import EagleDrafter, MedusaBatch, MedusaDrafter, MTPDrafter
from lmforge.infer.speculation import SpeculativeConfig
from lmforge.infer.tree_attention import default_choices
from lmforge.models.eagle import EagleLayer
from lmforge.models.hf import save_model
from lmforge.models.medusa import MedusaHeads
from lmforge.models.presets import preset_config
from lmforge.tokenizer import Tokenizer
from lmforge.train.drafter_objectives import (
    EagleModel,
    EagleObjective,
    EagleSection,
    MedusaModel,
    MedusaObjective,
    MedusaSection,
)


# ---------------------------------------------------------------------- data
def token_rows(tok: Tokenizer, docs: list[str], seq: int) -> torch.Tensor:
    """Documents (eos-separated) packed into ``[N, seq]`` rows."""
    ids: list[int] = []
    for doc in docs:
        ids += tok.encode(doc) + [tok.eos_token_id]
    n = len(ids) // seq
    return torch.tensor(ids[: n * seq]).view(n, seq)


def batches(rows: torch.Tensor, batch: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(0, rows.shape[0], (batch,), generator=g)
        yield {"input_ids": rows[pick], "labels": rows[pick]}


def fit(
    module: torch.nn.Module,
    loss_fn,
    data,
    steps: int,
    lr: float,
    log,
    what: str,
    resume: Path | None = None,
    every: int = 25,
) -> float:
    """AdamW with warm-up and cosine decay. With ``resume``, the module, optimiser and step
    are saved there (atomically) every ``every`` steps and a killed run continues from the
    last save: the data stream is replayed up to that step, so the result is the same."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    module.train()
    loss = float("nan")
    first = 0
    if resume is not None and resume.is_file():
        state = torch.load(resume, weights_only=False)
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        first = state["step"]
        log(f"  {what}: resuming at step {first} from {resume}")
    start = time.perf_counter()
    for step, batch in enumerate(data):
        if step < first:  # replay the seeded stream up to the saved step
            continue
        if resume is not None and step > first and step % every == 0:
            resume.parent.mkdir(parents=True, exist_ok=True)
            tmp = resume.with_suffix(".tmp")
            state = {"module": module.state_dict(), "optimizer": opt.state_dict(), "step": step}
            torch.save(state, tmp)
            tmp.replace(resume)
        for group in opt.param_groups:  # warm-up, then cosine to 10 %
            warm = min(1.0, (step + 1) / 20)
            cos = 0.55 + 0.45 * torch.cos(torch.tensor(step / max(1, steps) * torch.pi)).item()
            group["lr"] = lr * warm * cos
        out = loss_fn(batch)
        out.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out.item()
        if step % 25 == 0 or step == steps - 1:
            log(f"  {what} step {step}: loss {loss:.3f} ({time.perf_counter() - start:.0f}s)")
    module.eval()
    return loss


# ---------------------------------------------------------------------- training
def train_target(args, tok, rows, log) -> CausalLM:
    name = f"target-{args.preset}-v{args.vocab}-mtp{args.mtp}-s{args.train_steps}.pt"
    path = Path(args.cache) / name  # a llama with MTP modules has no HF format: torch.save
    if path.is_file():
        log(f"target: cached {path}")
        return torch.load(path, weights_only=False).eval()
    torch.manual_seed(0)
    cfg = preset_config(args.preset, vocab_size=len(tok), num_nextn_predict_layers=args.mtp,
                        max_position_embeddings=512, mtp_loss_weight=0.3,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    model = CausalLM(cfg)
    log(f"target: {model.num_parameters() / 1e6:.1f}M parameters ({args.preset}, vocab {len(tok)}, "
        f"{args.mtp} MTP modules)")  # fmt: skip
    data = batches(rows, args.batch, args.train_steps, 0)
    partial = path.with_suffix(".partial")
    fit(model, lambda b: model(**b).loss, data, args.train_steps, args.lr, log, "target", partial)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    partial.unlink(missing_ok=True)
    return model.eval()


def cached(args, what: str, train):
    """``train()``'s module, saved in ``--cache`` beside the target and reused (same shapes,
    steps and learning rate)."""
    name = (f"{what}-{args.preset}-v{args.vocab}-mtp{args.mtp}-s{args.train_steps}"
            f"-d{args.drafter_steps}-h{args.heads}-lr{args.lr}.pt")  # fmt: skip
    path = Path(args.cache) / name
    if path.is_file():
        print(f"{what}: cached {path}", flush=True)
        return torch.load(path, weights_only=False).eval()
    module = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module, path)
    return module


def train_medusa(target, rows, args, log) -> MedusaHeads:
    c = target.config
    torch.manual_seed(1)
    heads = MedusaHeads(c.hidden_size, c.vocab_size, args.heads, 1, target.lm_head)
    frozen = copy.deepcopy(target).requires_grad_(False)
    model, objective = MedusaModel(frozen, heads), MedusaObjective(MedusaSection(args.heads))

    def loss(b):
        out = objective(model, b)
        return out.loss_sum / out.count

    fit(heads, loss, batches(rows, args.batch, args.drafter_steps, 1), args.drafter_steps,
        args.lr, log, "medusa")  # fmt: skip
    return heads.eval()


def train_eagle(target, rows, args, log) -> EagleLayer:
    torch.manual_seed(2)
    layer = EagleLayer.for_model(target.config)
    frozen = copy.deepcopy(target).requires_grad_(False)
    model, objective = EagleModel(frozen, layer), EagleObjective(EagleSection())

    def loss(b):
        out = objective(model, b)
        return out.loss_sum / out.count

    fit(layer, loss, batches(rows, args.batch, args.drafter_steps, 2), args.drafter_steps,
        args.lr, log, "eagle")  # fmt: skip
    return layer.eval()


def train_draft(target, rows, args, log) -> CausalLM:
    torch.manual_seed(3)
    c = target.config
    draft = CausalLM(ModelConfig(
        vocab_size=c.vocab_size, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
    ))  # fmt: skip
    fit(draft, lambda b: draft(**b).loss, batches(rows, args.batch, args.drafter_steps, 3),
        args.drafter_steps, args.lr, log, "draft")  # fmt: skip
    return draft.eval()


# ---------------------------------------------------------------------- measurement
class PerRequestDraftingEngine(Engine):
    """The engine with step 1 of `lmforge.infer.speculation` drafting request by request
    (each drafter's own ``propose``) instead of the engine's one `propose_batch` call: the
    baseline the batched drafting is measured against."""

    def _draft(self, reqs, contexts, depths):
        return [req.drafter.propose(context, depth, req.params, req.generator)
                for req, context, depth in zip(reqs, contexts, depths)]  # fmt: skip


def make_engine(target, spec, prompts, batched_drafting=False) -> Engine:
    kind = Engine if batched_drafting else PerRequestDraftingEngine
    engine = kind(target, speculative=spec, enable_prefix_caching=False)
    engine.generate([prompts[0]], SamplingParams(max_tokens=4, temperature=0))  # warm-up
    return engine


def run_engine(engine, prompts, new_tokens, batch) -> tuple[float, float, list]:
    """(wall, CPU) seconds to decode all ``prompts`` greedily, ``batch`` requests at a time
    (this process's CPU time: robust to other processes sharing the cores), and the tokens."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    engine.spec_stats.__init__()
    start, cpu = time.perf_counter(), time.process_time()
    outputs = []
    for i in range(0, len(prompts), batch):
        outputs += [o.token_ids for o in engine.generate(prompts[i : i + batch], params)]
    return time.perf_counter() - start, time.process_time() - cpu, outputs


def hf_peer(target, draft, tok, prompts, new_tokens, cache, log) -> dict[str, float]:
    """transformers' generate on the exported weights: plain, prompt lookup, assistant."""
    from transformers import AutoModelForCausalLM

    plain_cfg = copy.deepcopy(target.config)
    plain_cfg.num_nextn_predict_layers = 0
    export = CausalLM(plain_cfg)
    export.load_state_dict(target.state_dict(), strict=False)
    save_model(export, Path(cache) / "hf-target", tokenizer=tok)
    save_model(draft, Path(cache) / "hf-draft", tokenizer=tok)
    hf = AutoModelForCausalLM.from_pretrained(Path(cache) / "hf-target").eval()
    hf_draft = AutoModelForCausalLM.from_pretrained(Path(cache) / "hf-draft").eval()
    modes = {"hf_plain": {}, "hf_prompt_lookup": {"prompt_lookup_num_tokens": 3},
             "hf_assistant": {"assistant_model": hf_draft}}  # fmt: skip
    times = {}
    for name, kw in modes.items():
        elapsed = 0.0
        for p in prompts:
            ids = torch.tensor([p])
            start = time.perf_counter()
            with torch.inference_mode():
                hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **kw)  # fmt: skip
            elapsed += time.perf_counter() - start
        times[name] = len(prompts) * new_tokens / elapsed
        log(f"  {name:>17}: {times[name]:7.1f} tok/s")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="30m")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--mtp", type=int, default=2)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--docs", type=int, default=6000)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--drafter-steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--tree-width", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads for the measurements")
    ap.add_argument(
        "--train-threads",
        type=int,
        default=None,
        help="threads for training the target and drafters (default: --threads)",
    )
    ap.add_argument("--batch-sizes", default="1,8", help="comma-separated, e.g. 1 or 1,8")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per method (best kept)")
    ap.add_argument("--eagle-depth", type=int, default=4)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--cache", default="runs/bench-self-speculative")
    ap.add_argument("--batched-drafting", choices=("off", "on", "both"), default="both",
                    help="draft all requests of a step in one propose_batch call (batch > 1; "
                    "'both': each drafting method once per-request and once batched)")  # fmt: skip
    ap.add_argument("--methods", default="plain,draft,mtp,medusa,eagle")
    args = ap.parse_args()
    torch.set_num_threads(args.train_threads or args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731

    docs = synthetic_corpus(args.docs, 0)
    tok_folder = Path(args.cache) / f"tokenizer-v{args.vocab}"
    if (tok_folder / "tokenizer.json").is_file():
        tok = Tokenizer.from_dir(tok_folder)
    else:
        tok = Tokenizer.train(docs, vocab_size=args.vocab)
        tok.save(tok_folder)
    rows = token_rows(tok, docs, args.seq)
    log(f"corpus: {len(docs)} documents, {rows.numel():,} tokens in {rows.shape[0]} rows")
    t0 = time.perf_counter()
    target = train_target(args, tok, rows, log)
    methods = args.methods.split(",")  # drafters are trained (or loaded) only when measured
    need = lambda m: m in methods or (m == "draft" and not args.no_peer)  # noqa: E731
    heads = (
        cached(args, "medusa", lambda: train_medusa(target, rows, args, log))
        if need("medusa")
        else None
    )
    eagle = (
        cached(args, "eagle", lambda: train_eagle(target, rows, args, log))
        if need("eagle")
        else None
    )
    draft = (
        cached(args, "draft", lambda: train_draft(target, rows, args, log))
        if need("draft")
        else None
    )
    log(f"training: {time.perf_counter() - t0:.0f}s")
    torch.set_num_threads(args.threads)

    held_out = synthetic_corpus(args.prompts * 4, 12345)
    prompts = []
    for doc in held_out:
        ids = tok.encode(doc, add_special_tokens=True)
        if len(ids) >= 24 and len(prompts) < args.prompts:
            prompts.append(ids[: max(8, len(ids) // 3)])
    D, K, W, E = args.mtp, args.heads, args.tree_width, args.eagle_depth
    pool = MedusaBatch(heads) if heads is not None else None  # heads run once per step for all
    specs = {
        "plain": None,
        "draft": SpeculativeConfig(lambda: ModelDrafter(draft), DraftLengthSchedule(3, 1, 6), "draft"),
        "mtp": SpeculativeConfig(lambda: MTPDrafter(target), DraftLengthSchedule(D, 1, D), "mtp"),
        "medusa": SpeculativeConfig(lambda: MedusaDrafter(heads, default_choices(K, W), batch=pool),
                                    DraftLengthSchedule(K, 1, K), "medusa"),
        "eagle": SpeculativeConfig(lambda: EagleDrafter(target, eagle, E, W),
                                   DraftLengthSchedule(E, 1, E), "eagle"),
    }  # fmt: skip
    specs = {name: spec for name, spec in specs.items() if name in methods}
    results: dict[str, dict] = {}
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        log(f"batch {batch}: {len(prompts)} prompts × {args.new_tokens} new tokens, greedy, "
            f"best of {args.rounds} rounds (methods interleaved)")  # fmt: skip
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.batched_drafting]
        runs = {}  # name → (spec, batched drafting)
        for name, spec in specs.items():
            for on in modes if spec is not None and batch > 1 else [False]:
                runs[f"{name}+batched" if on and len(modes) == 2 else name] = (spec, on)
        engines = {
            name: make_engine(target, spec, prompts, on) for name, (spec, on) in runs.items()
        }
        walls = {name: [] for name in runs}
        cpus = {name: [] for name in runs}
        tokens_out = {}
        for _ in range(args.rounds):  # round-robin: a load spike hits every method alike
            for name, engine in engines.items():
                wall, cpu, tokens_out[name] = run_engine(engine, prompts, args.new_tokens, batch)
                walls[name].append(wall)
                cpus[name].append(cpu)
        if "plain" in tokens_out:
            differ = [name for name in runs if tokens_out[name] != tokens_out["plain"]]
            log(
                f"  outputs identical to plain greedy: {'all' if not differ else 'NOT ' + str(differ)}"
            )
        tokens = len(prompts) * args.new_tokens
        for name, (spec, _) in runs.items():
            st = engines[name].spec_stats
            row = {"tok_s": tokens / min(cpus[name]), "tok_s_wall": tokens / min(walls[name]),
                   "tau": st.mean_accepted_length if spec else 1.0,
                   "acc": st.acceptance_per_depth if spec else []}  # fmt: skip
            results[f"{name}@{batch}"] = row
            base = results[f"plain@{batch}"]
            acc = " ".join(f"{a:.2f}" for a in row["acc"])
            log(f"  {name:>7}: {row['tok_s']:7.1f} tok/CPU-s ({row['tok_s'] / base['tok_s']:.2f}x)"
                f"  {row['tok_s_wall']:7.1f} tok/s wall ({row['tok_s_wall'] / base['tok_s_wall']:.2f}x)"
                f"  τ {row['tau']:.2f}  acceptance per depth [{acc}]")  # fmt: skip
    if not args.no_peer:
        log("peer: transformers generate, batch 1")
        peer = hf_peer(target, draft, tok, prompts, args.new_tokens, args.cache, log)
        for name in ("hf_prompt_lookup", "hf_assistant"):
            log(f"  {name} speedup vs hf_plain: {peer[name] / peer['hf_plain']:.2f}x")
    sizes = [int(b) for b in args.batch_sizes.split(",")]

    def best_at(b: int) -> tuple[str, float, float]:
        names = [k[: -len(f"@{b}")] for k in results if k.endswith(f"@{b}") and k != f"plain@{b}"]
        best = max(names, key=lambda m: results[f"{m}@{b}"]["tok_s"])
        row, base = results[f"{best}@{b}"], results[f"plain@{b}"]
        return best, row["tok_s"] / base["tok_s"], row["tok_s_wall"] / base["tok_s_wall"]

    best, speedup, wall = best_at(sizes[0])

    def stat(method: str, key: str):
        row = results.get(f"{method}@{sizes[0]}")
        return float("nan") if row is None else row[key]

    mtp_acc = stat("mtp", "acc")
    extra = ""
    if len(sizes) > 1:  # the largest batch too (with batched drafting where measured)
        best_b, speedup_b, wall_b = best_at(sizes[-1])
        extra = (f" best_method_b{sizes[-1]}={best_b} best_speedup_b{sizes[-1]}={speedup_b:.2f}"
                 f" best_speedup_wall_b{sizes[-1]}={wall_b:.2f}")  # fmt: skip
    print(
        f"RESULT self_speculative best_speedup={speedup:.2f} best_method={best} "
        f"mtp_acc2={mtp_acc[0] if isinstance(mtp_acc, list) and mtp_acc else float('nan'):.3f} "
        f"medusa_tau={stat('medusa', 'tau'):.2f} eagle_tau={stat('eagle', 'tau'):.2f} "
        f"best_speedup_wall={wall:.2f}{extra}"
    )


if __name__ == "__main__":
    main()
