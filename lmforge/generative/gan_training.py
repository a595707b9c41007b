"""GAN training through the one Trainer (``lmforge gan train``): ``gan.method`` is ``gan``
(minimax), ``nsgan`` (non-saturating G), ``wgan`` (weight clipping, RMSProp) or ``wgan-gp``
(gradient penalty, λ = ``gan.gp_weight``) — the losses of `lmforge.generative.gan_losses`.

    config = load_config("recipes/gan-wgangp-digits.yaml", [], GANConfig)
    summary = train_gan(config)   # summary["model_dir"]: a `gan_models` folder

Two players, one Trainer: the model is the `GANPair` and each Trainer step updates *one*
player. The loader (`GANBatches`) says whose turn it is — ``n_critic`` critic steps, then one
generator step (Arjovsky et al. 2017 Alg. 1; Gulrajani et al. 2017 Alg. 1) — and carries the
step's latent z and interpolation ε, drawn from (seed, position), so a resume continues the
same stream. On a critic step the generator runs without gradients; on a generator step the
critic's parameters are frozen for the forward, so only the active player has gradients and
the one optimizer (Adam, or RMSProp for ``wgan``; both keep per-parameter state and skip
parameters without a gradient) is exactly two optimizers. ``train.max_steps`` counts player
updates: (n_critic + 1) of them make one generator iteration.

The run folder is the Trainer's (``metrics.jsonl`` with both players' losses on every step:
``d_loss``, ``g_loss``, plus ``gp`` and ``w_estimate`` = E f(x) − E f(x̃); atomic checkpoints;
exact resume; a NaN — or a critic loss beyond ``gan.divergence_limit`` — stops the run with the
last good checkpoint named) plus ``gan_curves.png`` (both players), a sample grid
``samples/step-XXXXXXXX.png`` (one row per class when conditional) and a line of
``samples.jsonl`` (coverage, diversity, Fréchet distance, accuracy: `gan_diagnostics`) at
every evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from lmforge.config import ConfigError
from lmforge.diffusion.training import evaluation_classifier, write_sample_metrics
from lmforge.generative.gan_diagnostics import evaluate_generator, generate
from lmforge.generative.gan_losses import (
    GAN_METHODS,
    clip_weights,
    critic_loss,
    generator_loss,
    gradient_penalty,
    wasserstein_estimate,
)
from lmforge.generative.gan_models import GANNetConfig, GANPair, save_gan
from lmforge.io import atomic_path
from lmforge.train.config import OptimSection, RunConfig
from lmforge.train.distributed import DistInfo
from lmforge.train.loop import Trainer, TrainingDiverged
from lmforge.train.metrics import METRICS_FILE, read_metrics
from lmforge.train.objective import Batch, LossOutput
from lmforge.train.run import print_summary, training_run
from lmforge.vision.datasets import ImageDataset, load_image_dataset
from lmforge.vision.grid import save_grid
from lmforge.vision.loader import ImageLoader

CURVES_FILE = "gan_curves.png"

__all__ = [
    "CURVES_FILE",
    "GANBatches",
    "GANConfig",
    "GANObjective",
    "GANSection",
    "build_optimizer",
    "check_section",
    "n_critic_of",
    "optimizer_of",
    "plot_gan_curves",
    "train_gan",
]


@dataclass
class GANSection:
    """Data, networks, the game and evaluation."""

    method: str = "nsgan"  # gan | nsgan | wgan | wgan-gp
    dataset: str = "digits"  # lmforge.vision.datasets name
    image_size: int = 16
    channels: int = 1  # glyph datasets: 1 (grey) or 3 (colour)
    num_train: int = 4000
    num_eval: int = 500
    data_seed: int = 0
    conditional: bool = True  # class-conditional G and projection critic
    z_dim: int = 64
    width: int = 32  # generator base width (channels at the last up-sampling level)
    critic_width: int = 0  # critic base width; 0: the generator's
    spectral_norm: bool = False  # on every critic layer
    n_critic: int = 0  # critic steps per generator step; 0 → 5 for wgan / wgan-gp, 1 otherwise
    gp_weight: float = 10.0  # wgan-gp: λ
    clip_value: float = 0.01  # wgan: c
    optimizer: str = "auto"  # auto (rmsprop for wgan, else adam) | adam | rmsprop
    divergence_limit: float = 1.0e4  # |critic loss| beyond this stops the run
    samples_per_class: int = 8  # grid columns (conditional) / grid size ÷ 8
    classifier_steps: int = 400  # > 0: evaluation classifier; metrics per evaluation
    eval_samples: int = 500


@dataclass
class GANConfig(RunConfig):
    gan: GANSection = field(default_factory=GANSection)


def n_critic_of(g: GANSection) -> int:
    return g.n_critic or (5 if g.method in ("wgan", "wgan-gp") else 1)


def optimizer_of(g: GANSection) -> str:
    return g.optimizer if g.optimizer != "auto" else ("rmsprop" if g.method == "wgan" else "adam")


def check_section(config: GANConfig) -> None:
    g = config.gan
    if g.method not in GAN_METHODS:
        raise ConfigError(f"gan.method={g.method!r}: expected one of {', '.join(GAN_METHODS)}")
    if g.optimizer not in ("auto", "adam", "rmsprop"):
        raise ConfigError(f"gan.optimizer={g.optimizer!r}: expected auto, adam or rmsprop")
    if g.n_critic < 0 or g.gp_weight < 0 or g.clip_value <= 0:
        raise ConfigError("gan.n_critic ≥ 0, gan.gp_weight ≥ 0 and gan.clip_value > 0")
    if config.train.grad_accum != 1:
        raise ConfigError(
            f"train.grad_accum={config.train.grad_accum}: a GAN step is one player's update "
            "on one batch; use train.batch_size for larger batches"
        )
    if config.optim.grad_clip:
        raise ConfigError(
            f"optim.grad_clip={config.optim.grad_clip}: GAN runs do not clip gradients (set 0; "
            "wgan constrains the critic by gan.clip_value, wgan-gp by the penalty)"
        )


class GANBatches:
    """Endless batches for the Trainer: real ``images``/``labels`` (an `ImageLoader`), latent
    ``z`` [B, z_dim], interpolation ``eps`` [B] and ``player`` (0 critic, 1 generator: the
    last of every ``n_critic + 1`` steps). z and ε are drawn from (seed, position), and the
    state is the position and the image loader's, so a resume draws the same stream."""

    def __init__(
        self, dataset: ImageDataset, batch_size: int, z_dim: int, n_critic: int, seed: int = 0
    ) -> None:
        self.images = ImageLoader(dataset, batch_size, seed)
        self.batch_size, self.z_dim, self.n_critic, self.seed = batch_size, z_dim, n_critic, seed
        self.position = 0

    @property
    def epoch(self) -> int:
        return self.images.epoch

    def player(self, position: int) -> int:
        return int(position % (self.n_critic + 1) == self.n_critic)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> Batch:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.position + 7)
        batch = self.images.next_batch()
        batch["z"] = torch.randn(self.batch_size, self.z_dim, generator=g)
        batch["eps"] = torch.rand(self.batch_size, generator=g)
        batch["player"] = torch.tensor(self.player(self.position))
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "images": self.images.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
        self.images.load_state_dict(state["images"])


class GANObjective:
    """``objective(pair, batch) -> LossOutput`` for the player whose turn ``batch["player"]``
    says (module docstring); metrics (per image): ``d_loss``, ``g_loss``, ``w_estimate``,
    ``gp`` (wgan-gp), ``player``."""

    def __init__(
        self, method: str, gp_weight: float = 10.0, clip_value: float = 0.01,
        divergence_limit: float = 1e4,
    ) -> None:  # fmt: skip
        if method not in GAN_METHODS:
            raise ConfigError(f"gan.method={method!r}: expected one of {', '.join(GAN_METHODS)}")
        self.method, self.gp_weight, self.clip_value = method, gp_weight, clip_value
        self.divergence_limit = divergence_limit

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        pair: GANPair = getattr(model, "module", model)
        gen, critic = pair.generator, pair.discriminator
        real, z, b = batch["images"], batch["z"], batch["images"].shape[0]
        labels = batch["labels"] if pair.config.conditional else None
        if self.method == "wgan":  # the critic is used only clipped: clip after each update
            clip_weights(critic, self.clip_value)
        metrics: dict[str, torch.Tensor] = {}
        if int(batch["player"]) == 0:
            with torch.no_grad():
                fake = gen(z, labels)
            d_real, d_fake = critic(real, labels), critic(fake, labels)
            d_loss = critic_loss(self.method, d_real, d_fake)
            loss = d_loss
            if self.method == "wgan-gp":
                gp = gradient_penalty(critic, real, fake, batch["eps"], self.gp_weight,
                                      labels=labels)  # fmt: skip
                loss = d_loss + gp
                metrics["gp"] = gp.detach() * b
            g_loss = generator_loss(self.method, d_fake.detach())
        else:
            critic.requires_grad_(False)  # gradients for the generator only
            try:
                d_fake = critic(gen(z, labels), labels)
            finally:
                critic.requires_grad_(True)
            g_loss = generator_loss(self.method, d_fake)
            loss = g_loss
            with torch.no_grad():
                d_real = critic(real, labels)
                d_loss = critic_loss(self.method, d_real, d_fake.detach())
        value = float(d_loss.detach())
        if math.isfinite(value) and abs(value) > self.divergence_limit:
            raise TrainingDiverged(
                f"critic loss {value:.4g} beyond gan.divergence_limit={self.divergence_limit:g}; "
                "weights were not updated"
            )
        metrics.update(
            d_loss=d_loss.detach() * b,
            g_loss=g_loss.detach() * b,
            w_estimate=wasserstein_estimate(d_real, d_fake).detach() * b,
            player=torch.tensor(float(batch["player"]) * b),
        )
        return LossOutput(loss * b, b, metrics)


def build_optimizer(kind: str, o: OptimSection) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """The Trainer's ``optimizer`` hook: Adam(β₁, β₂) — DCGAN uses (0.5, 0.999), WGAN-GP
    (0, 0.9) or (0.5, 0.9) — or RMSProp (WGAN: "momentum-based optimizers … performed worse",
    Arjovsky et al. 2017 §3); ``optim.weight_decay`` as L2 (usually 0)."""

    def make(model: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        if kind == "rmsprop":
            return torch.optim.RMSprop(params, lr=o.lr, eps=o.eps, weight_decay=o.weight_decay)
        return torch.optim.Adam(
            params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay
        )

    return make


def plot_gan_curves(
    records: list[dict[str, Any]], samples: list[dict[str, Any]], path: str | Path
) -> Path:
    """Both players' losses per step, the critic's W estimate, and the evaluation's Fréchet
    distance / coverage, as one PNG (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if "d_loss" in r]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax, ax_w, ax_eval = axes
    for key, label in (("d_loss", "critic / discriminator"), ("g_loss", "generator")):
        ax.plot([r["step"] for r in steps], [r[key] for r in steps], label=label, lw=0.8)
    ax.set(xlabel="step (player updates)", ylabel="loss", title="both players' losses")
    ax.legend()
    ax_w.plot([r["step"] for r in steps], [r.get("w_estimate", math.nan) for r in steps], lw=0.8)
    ax_w.set(xlabel="step", ylabel="E D(x) − E D(G(z))", title="critic gap (W₁ estimate for WGAN)")
    if samples:
        xs = [s["step"] for s in samples]
        ax_eval.plot(xs, [s["frechet_classifier"] for s in samples], "o-", label="Fréchet")
        ax_eval.set(xlabel="step", ylabel="Fréchet distance (classifier features)")
        twin = ax_eval.twinx()
        twin.plot(xs, [s["coverage"] for s in samples], "s--", color="C1", label="coverage")
        twin.set(ylabel="coverage", ylim=(0, 1.05))
    ax_eval.set(title="samples")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def sample_grid(pair: GANPair, per_class: int, seed: int = 0) -> torch.Tensor:
    """A grid batch: one row per class (``per_class`` columns) or 8 × ``per_class`` images."""
    if pair.config.conditional:
        k = pair.config.num_classes
        labels = torch.arange(k).repeat_interleave(per_class)
        return generate(pair.generator, k * per_class, seed, labels)[0]
    return generate(pair.generator, 8 * per_class, seed)[0]


def read_samples(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "samples.jsonl"
    return read_metrics(path) if path.is_file() else []


def train_gan(
    config: GANConfig, *, dist: DistInfo | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Train ``config.gan.method`` (module docstring); the Trainer's summary plus
    ``model_dir``, ``diverged`` and the last evaluation's diagnostics (``eval``)."""
    check_section(config)
    g = config.gan
    n_critic, opt_kind = n_critic_of(g), optimizer_of(g)
    with training_run(config, dist, console) as (dist, console):
        train_set = load_image_dataset(
            g.dataset, g.image_size, g.num_train, g.data_seed, "train", g.channels
        )
        eval_set = load_image_dataset(
            g.dataset, g.image_size, g.num_eval, g.data_seed, "test", g.channels
        )
        net = GANNetConfig(
            image_shape=list(train_set.shape), z_dim=g.z_dim, width=g.width, critic_width=g.critic_width,
            num_classes=train_set.num_classes if g.conditional else 0,
            spectral_norm=g.spectral_norm,
        )  # fmt: skip
        meta = {"method": g.method, "dataset": g.dataset, "data_seed": g.data_seed,
                "class_names": train_set.class_names}  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed)
            pair = GANPair(net, meta)
        run_dir = Path(config.out_dir)
        classifier = None
        if g.classifier_steps and dist.is_main:
            classifier = evaluation_classifier(train_set, g.classifier_steps, run_dir, console)
        last: dict[str, Any] = {}  # the latest evaluation's diagnostics

        def on_step(trainer: Trainer, record: dict[str, Any]) -> None:
            if not dist.is_main or not trainer.eval_due:
                return
            grid = sample_grid(pair, max(1, g.samples_per_class), seed=0)
            save_grid(grid, run_dir / "samples" / f"step-{trainer.step:08d}.png",
                      nrow=max(1, g.samples_per_class))  # fmt: skip
            if classifier is not None:
                diag = evaluate_generator(pair.generator, classifier, eval_set, g.eval_samples,
                                          seed=trainer.step)  # fmt: skip
                last.clear()
                last.update(diag)
                write_sample_metrics(run_dir, {"step": trainer.step, **diag})
                acc = f", accuracy {diag['accuracy']:.3f}" if "accuracy" in diag else ""
                trainer.console.print(
                    f"step {trainer.step}: samples coverage {diag['coverage']:.2f}, diversity "
                    f"{diag['diversity']:.2f}, frechet_classifier "
                    f"{diag['frechet_classifier']:.4g}{acc}"
                )
            records = read_metrics(run_dir / METRICS_FILE)
            plot_gan_curves(records, read_samples(run_dir), run_dir / CURVES_FILE)

        trainer = Trainer(
            pair,
            GANBatches(train_set, config.train.batch_size, g.z_dim, n_critic, config.train.seed),
            config,
            objective=GANObjective(g.method, g.gp_weight, g.clip_value, g.divergence_limit),
            run_dir=run_dir,
            dist=dist,
            console=console,
            callbacks=[on_step],
            optimizer=build_optimizer(opt_kind, config.optim),
        )
        c, h, w = train_set.shape
        gen_params = sum(p.numel() for p in pair.generator.parameters())
        critic_params = sum(p.numel() for p in pair.discriminator.parameters())
        console.print(
            f"[bold]{g.method}[/]: generator {gen_params:,} / critic {critic_params:,} "
            f"parameters, {g.dataset} {c}×{h}×{w}"
            f"{', class-conditional' if g.conditional else ''}"
            f"{', spectral norm' if g.spectral_norm else ''}, {opt_kind}, "
            f"{n_critic} critic step(s) per generator step"
        )
        try:
            summary = trainer.fit()
            summary["diverged"] = False
        except TrainingDiverged as exc:
            if "last good checkpoint" in str(exc):  # (the Trainer's own NaN stop names it)
                raise
            good = trainer.last_saved
            raise TrainingDiverged(
                f"step {trainer.step + 1}: {exc}; last good checkpoint: "
                f"{good if good else 'none saved yet'}"
            ) from exc
        if dist.is_main:
            records = read_metrics(run_dir / METRICS_FILE)
            plot_gan_curves(records, read_samples(run_dir), run_dir / CURVES_FILE)
            summary["curves"] = str(run_dir / CURVES_FILE)
            summary["model_dir"] = str(save_gan(pair, run_dir / "model", meta))
            summary["eval"] = dict(last)
        print_summary(summary, console)
    return summary
