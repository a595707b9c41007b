"""GAN training through the one Trainer: the turn-taking loader, one player's gradients per
step, a smoke run per method (both players' losses, curves, grids, checkpoints), exact
resume, and the divergence stop."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lmforge.config import ConfigError
from lmforge.generative.gan_models import GANNetConfig, GANPair, load_gan
from lmforge.generative.gan_training import GANBatches, GANConfig, GANObjective, train_gan
from lmforge.train.config import load_config
from lmforge.train.loop import TrainingDiverged
from lmforge.vision.datasets import ImageDataset

TINY = [
    "gan.image_size=8", "gan.num_train=32", "gan.num_eval=16", "gan.width=4", "gan.z_dim=4",
    "gan.samples_per_class=1", "gan.classifier_steps=0", "gan.n_critic=1",
    "train.batch_size=4", "train.max_steps=4", "train.eval_every=2", "train.save_every=2",
    "train.keep_last=2", "train.cpu_threads=1", "log.progress=false", "log.plot=false",
    "optim.grad_clip=0", "optim.weight_decay=0", "optim.warmup_steps=0", "optim.schedule=constant",
]  # fmt: skip


def toy_set(n: int = 12) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    return ImageDataset("toy", torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.arange(n) % 3,
                        ["a", "b", "c"])  # fmt: skip


def test_batches_take_turns_and_resume_exactly():
    batches = GANBatches(toy_set(), batch_size=4, z_dim=3, n_critic=2, seed=5)
    assert [int(batches.next_batch()["player"]) for _ in range(6)] == [0, 0, 1, 0, 0, 1]
    state = json.loads(json.dumps(batches.state_dict()))
    want = batches.next_batch()
    again = GANBatches(toy_set(), batch_size=4, z_dim=3, n_critic=2, seed=5)
    again.load_state_dict(state)
    got = again.next_batch()
    for key in ("images", "labels", "z", "eps", "player"):
        torch.testing.assert_close(got[key], want[key])
    assert want["z"].shape == (4, 3) and want["eps"].shape == (4,)


@pytest.mark.parametrize("method", ["gan", "nsgan", "wgan", "wgan-gp"])
def test_each_step_gives_gradients_to_one_player(method):
    torch.manual_seed(0)
    pair = GANPair(GANNetConfig([1, 8, 8], z_dim=3, width=4, num_classes=3))
    objective = GANObjective(method, clip_value=0.05)
    batches = GANBatches(toy_set(), batch_size=4, z_dim=3, n_critic=1)
    for player in (0, 1):
        batch = batches.next_batch()
        assert int(batch["player"]) == player
        pair.zero_grad(set_to_none=True)
        out = objective(pair, batch)
        out.loss_sum.backward()
        assert out.count == 4 and set(out.metrics) >= {"d_loss", "g_loss", "w_estimate"}
        critic_grads = [p.grad is not None for p in pair.discriminator.parameters()]
        gen_grads = [p.grad is not None for p in pair.generator.parameters()]
        assert all(critic_grads) == (player == 0) and any(critic_grads) == (player == 0)
        assert all(gen_grads) == (player == 1) and any(gen_grads) == (player == 1)
        assert all(p.requires_grad for p in pair.parameters())
        if method == "wgan":  # the critic is clipped before it is used
            assert max(p.abs().max().item() for p in pair.discriminator.parameters()) <= 0.05 + 1e-7
        if method == "wgan-gp" and player == 0:
            assert out.metrics["gp"].item() > 0


@pytest.mark.parametrize("method", ["gan", "nsgan", "wgan", "wgan-gp"])
def test_smoke_run_per_method(tmp_path, method):
    extra = ["gan.classifier_steps=3", "gan.eval_samples=12"] if method == "wgan-gp" else []
    extra += ["gan.spectral_norm=true"] if method == "nsgan" else []
    config = load_config(None, [*TINY, f"gan.method={method}", f"out_dir={tmp_path}", *extra],
                         GANConfig)  # fmt: skip
    summary = train_gan(config)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "d_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["player"] for r in steps] == [0.0, 1.0, 0.0, 1.0]  # critic, generator, …
    assert all("g_loss" in r and "w_estimate" in r for r in steps)
    assert ("gp" in steps[0]) == (method == "wgan-gp")
    assert (tmp_path / "gan_curves.png").is_file()
    assert (tmp_path / "samples" / "step-00000002.png").is_file()
    assert (tmp_path / "checkpoints" / "step-00000004" / "model.safetensors").is_file()
    pair, meta = load_gan(summary["model_dir"])
    assert meta["method"] == method and pair.config.num_classes == 10
    load_gan(tmp_path / "checkpoints" / "step-00000004")  # a checkpoint loads like a model
    optimizer = tmp_path / "checkpoints" / "step-00000004" / "trainer_state" / "optimizer.json"
    assert ('"alpha"' in optimizer.read_text()) == (method == "wgan")  # RMSProp's
    if method == "wgan-gp":
        scored = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
        assert [r["step"] for r in scored] == [2, 4]
        assert {"coverage", "diversity", "frechet_classifier", "accuracy"} <= set(scored[-1])
        assert summary["eval"]["coverage"] == scored[-1]["coverage"]


def test_resume_is_exact(tmp_path):
    full, half = tmp_path / "full", tmp_path / "half"
    for out in (full,):
        train_gan(load_config(None, [*TINY, "gan.method=wgan", f"out_dir={out}"], GANConfig))
    (half / "checkpoints").mkdir(parents=True)  # a run stopped after step 2
    shutil.copytree(full / "checkpoints" / "step-00000002", half / "checkpoints" / "step-00000002")
    (half / "checkpoints" / "latest").write_text("step-00000002\n")
    train_gan(load_config(None, [*TINY, "gan.method=wgan", f"out_dir={half}"], GANConfig))
    a = load_file(str(full / "model" / "model.safetensors"))
    b = load_file(str(half / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_divergence_stops_the_run(tmp_path):
    config = load_config(None, [*TINY, "gan.method=wgan-gp", f"out_dir={tmp_path}",
                                "gan.divergence_limit=1e-12"], GANConfig)  # fmt: skip
    with pytest.raises(TrainingDiverged, match="step 1: critic loss .* last good checkpoint: none"):
        train_gan(config)


def test_config_errors():
    for bad, match in [
        ("gan.method=lsgan", "gan.method"),
        ("train.grad_accum=2", "grad_accum"),
        ("optim.grad_clip=1.0", "grad_clip"),
        ("gan.optimizer=sgd", "optimizer"),
    ]:
        config = load_config(None, [*TINY, bad], GANConfig)
        with pytest.raises(ConfigError, match=match):
            train_gan(config)
