"""The learning foundations at small sizes, each beside its reference or baseline:

- FrozenLake-v1 (4×4, slippery): value iteration's v*(start) (γ → 1, no time limit) against
  the success rate of its policy rolled out in gymnasium's own environment → |difference|;
- Q-learning on FrozenLake-v1 (gymnasium, 100-step limit): the greedy policy's success rate,
  beside the optimal policy's (value iteration) in the same episodes;
- CPC (GRU context) on synthetic speaker signals: linear-probe accuracy of c_T, beside a
  random encoder;
- ArcFace vs softmax embeddings: held-out identity verification (balanced-pair accuracy and
  TAR at FAR = 1%);
- OadTR vs the GRU baseline: per-frame mAP on a held-out synthetic stream.

    python bench/foundations.py
prints ``RESULT foundations frozenlake_vi_error=… qlearning_success=… cpc_probe_acc=…
arcface_verif_acc=… oadtr_map=…``.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import torch

from lmforge.representation.cpc import (
    CPCModel,
    CPCSettings,
    features_of,
    linear_probe_accuracy,
    synthetic_speakers,
    train_cpc,
)
from lmforge.representation.verification import (
    synthetic_identities,
    train_embedding,
    verification_at_far,
)
from lmforge.rl import TabularMDP, evaluate_policy, q_learning, value_iteration
from lmforge.rl.solve import success_rate
from lmforge.video.oadtr import (
    OadTRSettings,
    frame_map,
    sliding_windows,
    synthetic_stream,
    train_detector,
)


def rollout_success(env, policy, episodes: int) -> float:
    wins = 0
    for i in range(episodes):
        s, _ = env.reset(seed=10_000 + i)
        while True:
            s, r, terminated, truncated, _ = env.step(int(policy[s]))
            if terminated or truncated:
                wins += r > 0
                break
    return wins / episodes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=5000, help="Q-learning episodes")
    ap.add_argument("--rollouts", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()

    env = gym.make("FrozenLake-v1", max_episode_steps=100_000)
    mdp = TabularMDP.from_gymnasium(env)
    _, pi_star = value_iteration(mdp, gamma=0.999)
    v = evaluate_policy(mdp, pi_star, gamma=1.0 - 1e-9)
    measured = rollout_success(env, pi_star, args.rollouts)
    vi_error = abs(v[0] - measured)
    print(f"frozenlake: v*(start) = {v[0]:.4f}, gymnasium rollouts ({args.rollouts}) = "
          f"{measured:.4f}, |error| = {vi_error:.4f}")  # fmt: skip

    env100 = gym.make("FrozenLake-v1")  # the standard 100-step limit
    q = q_learning(env100, episodes=args.episodes, gamma=0.99, seed=0, alpha=0.1, epsilon=0.1)
    q_success = success_rate(env100, q.argmax(1), episodes=args.rollouts, seed=20_000)
    opt_success = success_rate(env100, pi_star, episodes=args.rollouts, seed=20_000)
    print(f"q-learning ({args.episodes} episodes): success {q_success:.3f} "
          f"(optimal policy: {opt_success:.3f})")  # fmt: skip

    tr_x, tr_y = synthetic_speakers(256, seed=1001)
    te_x, te_y = synthetic_speakers(256, seed=1002)
    torch.manual_seed(0)
    rand = CPCModel(CPCSettings())
    cpc_random = linear_probe_accuracy(features_of(rand, tr_x), tr_y, features_of(rand, te_x), te_y)
    model, hist = train_cpc(CPCSettings(), steps=150)
    cpc_acc = linear_probe_accuracy(features_of(model, tr_x), tr_y, features_of(model, te_x), te_y)
    print(f"cpc: probe accuracy {cpc_acc:.3f} (random encoder {cpc_random:.3f}; 8 speakers), "
          f"final InfoNCE {hist[-1]['loss']:.3f}, MI bound k=1 {hist[-1]['mi_bound_k1']:.3f} nats")  # fmt: skip

    test_x, test_y = synthetic_identities(20, 20, seed=99)
    verif = {}
    for kind in ("softmax", "arcface"):
        net, _ = train_embedding(kind, steps=300)
        with torch.no_grad():
            verif[kind] = verification_at_far(net(test_x), test_y, far=0.01)
        print(
            f"verification {kind}: accuracy {verif[kind][0]:.3f}, TAR@FAR=1% {verif[kind][1]:.3f}"
        )

    s = OadTRSettings()
    x, y = synthetic_stream(1024, seed=999)
    maps = {}
    for kind in ("oadtr", "gru"):
        det, _ = train_detector(kind, s, steps=200)
        with torch.no_grad():
            scores = det(sliding_windows(x, s.window))[0] if kind == "oadtr" else det(x[None])[0]
        maps[kind] = frame_map(scores.softmax(-1), y)
        print(f"online detection {kind}: per-frame mAP {maps[kind]:.4f}")

    print(f"total {time.time() - t0:.0f} s")
    print(f"RESULT foundations frozenlake_vi_error={vi_error:.4f} qlearning_success={q_success:.3f} "
          f"cpc_probe_acc={cpc_acc:.3f} arcface_verif_acc={verif['arcface'][0]:.3f} "
          f"oadtr_map={maps['oadtr']:.4f} optimal_success={opt_success:.3f} "
          f"cpc_random_acc={cpc_random:.3f} softmax_verif_acc={verif['softmax'][0]:.3f} "
          f"gru_map={maps['gru']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
