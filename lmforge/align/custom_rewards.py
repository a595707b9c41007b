"""The user's own rewards for GRPO and PPO: Python callables named on the command line, a
trained reward model, and the built-in rule rewards, summed with weights (as TRL's
``reward_funcs`` / ``reward_weights``).

    lmforge grpo … --data tasks.jsonl --reward myrewards:passes_tests --reward myrewards:brevity:0.1
    reward = CombinedReward.build(["myrewards:passes_tests", "myrewards:brevity:0.1"])
    scores = reward(item, completion)   # {"reward": Σ wᵢ fᵢ, "reward_passes_tests": f₁, …}

A *spec* is ``MODULE:FUNCTION[:WEIGHT]`` (weight 1 by default). ``MODULE`` is an importable
dotted name (the current directory is searched too) or a path to a ``.py`` file
(``rewards/code.py:passes_tests``). Three names need no module: ``r1`` (answer accuracy +
``format_weight`` × R1 format, the built-in reward), ``accuracy`` and ``format``.

A reward function is called once per completion with keyword arguments:

- ``prompt``: the record's prompt as written in the data — a string, or the list of
  ``{"role", "content"}`` messages of a conversational prompt;
- ``completion``: the completion's text (decoded, stop string included);
- every other field of the data record (``answer``, ``tests``, ``reference``, …); for the
  generated tasks, the problem's fields (``a``, ``b``, ``op``, ``answer``, …).

A function that takes ``**kwargs`` receives all of them; otherwise only the ones it names (so
``def brevity(completion): …`` works). It must return a real number; an exception or
another return type stops the run with an error naming the function and the record. A
reward model (`lmforge.align.reward_model.RewardModel`, the ``lmforge rm`` output) scores the
prompt + completion tokens (the policy's tokenizer; its score is logged as
``reward_model``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.align.rl_tasks import r1_reward, record_fields
from lmforge.align.rollout import Completion, right_pad

__all__ = [
    "BUILTIN_REWARDS",
    "CombinedReward",
    "RewardFunctionError",
    "RewardSpec",
    "call_reward_function",
    "load_reward_function",
    "parse_reward_spec",
    "reward_model_scores",
]

BUILTIN_REWARDS = ("r1", "accuracy", "format")


class RewardFunctionError(ValueError):
    """A reward spec cannot be loaded, or a reward function raised / returned a non-number."""


@dataclass(frozen=True)
class RewardSpec:
    """``MODULE:FUNCTION`` (or a built-in name) and its weight."""

    target: str
    weight: float = 1.0

    @property
    def name(self) -> str:
        """The logged name: the function's (``reward_<name>`` in metrics)."""
        return self.target.rsplit(":", 1)[-1]


def parse_reward_spec(spec: str) -> RewardSpec:
    """``"mod:f"`` → (``mod:f``, 1.0); ``"mod:f:0.5"`` → (``mod:f``, 0.5); ``"r1"`` or
    ``"r1:0.5"`` → the built-in. ``MODULE`` may be a path to a ``.py`` file."""
    parts = spec.strip().split(":")
    weight = 1.0
    if len(parts) >= 2 and (len(parts) >= 3 or parts[0] in BUILTIN_REWARDS):
        try:
            weight = float(parts[-1])
            parts = parts[:-1]
        except ValueError:
            pass
    if not math.isfinite(weight):
        raise RewardFunctionError(f"reward {spec!r}: the weight must be a finite number")
    target = ":".join(parts)
    if target in BUILTIN_REWARDS:
        return RewardSpec(target, weight)
    module, sep, function = target.rpartition(":")
    if not sep or not module or not function.isidentifier():
        raise RewardFunctionError(
            f"reward {spec!r}: expected MODULE:FUNCTION[:WEIGHT] (e.g. myrewards:passes_tests:0.5)"
            f" or a built-in ({', '.join(BUILTIN_REWARDS)})"
        )
    return RewardSpec(target, weight)


def _import_module(module: str, spec: str):
    if module.endswith(".py") or "/" in module or "\\" in module:
        path = Path(module)
        if not path.is_file():
            raise RewardFunctionError(f"reward {spec!r}: {path}: no such file")
        name = f"lmforge_reward_{path.stem}_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = mod
        loader_spec.loader.exec_module(mod)
        return mod
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.split(".")[0] or "" in sys.path:
            raise
    sys.path.insert(0, "")  # console scripts do not search the current directory; users expect it
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove("")


def load_reward_function(spec: RewardSpec) -> Callable[..., Any]:
    """The callable ``spec`` names (a `RewardFunctionError` says what is missing)."""
    module, _, function = spec.target.rpartition(":")
    try:
        mod = _import_module(module, spec.target)
    except RewardFunctionError:
        raise
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's module's
        raise RewardFunctionError(
            f"reward {spec.target!r}: cannot import {module!r} ({type(exc).__name__}: {exc})"
        ) from exc
    fn = getattr(mod, function, None)
    if fn is None:
        names = [n for n in dir(mod) if not n.startswith("_") and callable(getattr(mod, n))]
        raise RewardFunctionError(
            f"reward {spec.target!r}: {module} has no {function!r} (callables: "
            f"{', '.join(names) or 'none'})"
        )
    if not callable(fn):
        raise RewardFunctionError(f"reward {spec.target!r}: {function} is not callable")
    return fn


def _accepted(fn: Callable[..., Any]) -> tuple[set[str] | None, list[str]]:
    """The keyword names ``fn`` takes (None: any, it has ``**kwargs``) and its required ones."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        return None, []
    if any(p.kind is p.VAR_KEYWORD for p in params):
        names = None
    else:
        names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = [p.name for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]  # fmt: skip
    return names, required


def call_reward_function(
    fn: Callable[..., Any], name: str, kwargs: dict[str, Any], where: str = ""
) -> float:
    """``fn(**kwargs)`` (only the keywords it takes) as a float; `RewardFunctionError` naming
    ``name`` (and the record, ``where``) when it raises or returns something else."""
    names, required = _accepted(fn)
    args = kwargs if names is None else {k: v for k, v in kwargs.items() if k in names}
    at = f" on {where}" if where else ""
    missing = [r for r in required if r not in args]
    if missing:
        raise RewardFunctionError(
            f"reward {name!r} needs {', '.join(map(repr, missing))} but the record{at} has "
            f"only {', '.join(sorted(kwargs))}"
        )
    try:
        value = fn(**args)
    except Exception as exc:  # noqa: BLE001 - report any failure of the user's function
        raise RewardFunctionError(
            f"reward {name!r} raised {type(exc).__name__}: {exc}{at}"
        ) from exc
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, numbers.Real):
        raise RewardFunctionError(
            f"reward {name!r} returned {type(value).__name__} {value!r:.60}{at}; it must return "
            "a float"
        )
    value = float(value)
    if not math.isfinite(value):
        raise RewardFunctionError(f"reward {name!r} returned {value}{at}; it must be finite")
    return value


@torch.no_grad()
def reward_model_scores(
    reward_model: torch.nn.Module, sequences: Sequence[Sequence[int]], batch_size: int = 16
) -> list[float]:
    """The reward model's score of each token sequence (prompt + completion), right-padded in
    batches of ``batch_size`` (the score is read at each sequence's last real token)."""
    device = next(reward_model.parameters()).device
    out: list[float] = []
    for lo in range(0, len(sequences), batch_size):
        ids, mask = right_pad([list(s) for s in sequences[lo : lo + batch_size]], 0)
        out.extend(reward_model(ids.to(device), attention_mask=mask.to(device)).float().tolist())
    return out


class CombinedReward:
    """``(item, completion) -> {"reward": Σ wᵢ rᵢ, "reward_<name>": rᵢ, …}`` over the named
    functions, the built-ins and an optional reward model (see the module docstring).

    The built-in ``r1`` also logs ``accuracy`` and ``format`` (held-out accuracy reads them)."""

    def __init__(
        self,
        specs: Sequence[RewardSpec],
        *,
        format_weight: float = 0.1,
        max_new_tokens: int = 0,
        overlong_cache: int = 0,
        reward_model: torch.nn.Module | None = None,
        reward_model_weight: float = 1.0,
    ) -> None:
        if not specs and reward_model is None:
            raise RewardFunctionError("no reward: name a function, a built-in or a reward model")
        self.specs = list(specs)
        self.functions = {s.target: load_reward_function(s) for s in specs
                          if s.target not in BUILTIN_REWARDS}  # fmt: skip
        self.format_weight, self.max_new_tokens = format_weight, max_new_tokens
        self.overlong_cache = overlong_cache
        self.reward_model, self.reward_model_weight = reward_model, reward_model_weight
        names = [s.name for s in self.specs]
        self.keys = {s.target: f"reward_{s.name}" + (f"_{i}" if names.count(s.name) > 1 else "")
                     for i, s in enumerate(self.specs)}  # fmt: skip

    @property
    def only_builtin_r1(self) -> bool:
        return [s.target for s in self.specs] == ["r1"] and self.reward_model is None

    def __call__(self, item: Any, completion: Completion) -> dict[str, float]:
        return self.score_many([item], [completion])[0]

    def score_many(self, items: Sequence[Any], completions: Sequence[Completion]
                   ) -> list[dict[str, float]]:  # fmt: skip
        """The scores of each (item, completion) pair; the reward model runs batched."""
        out = []
        for index, (item, c) in enumerate(zip(items, completions, strict=True)):
            prompt, fields, where = record_fields(item)
            scores: dict[str, float] = {}
            total = 0.0
            r1 = None
            for spec in self.specs:
                if spec.target in BUILTIN_REWARDS:
                    if r1 is None:
                        r1 = r1_reward(item, c, self.format_weight, self.max_new_tokens,
                                       self.overlong_cache)  # fmt: skip
                        scores["accuracy"], scores["format"] = r1["accuracy"], r1["format"]
                    value = r1["reward"] if spec.target == "r1" else r1[spec.target]
                else:
                    kwargs = {**fields, "prompt": prompt, "completion": c.text}
                    value = call_reward_function(self.functions[spec.target], spec.target,
                                                 kwargs, where or f"prompt {index}")  # fmt: skip
                scores[self.keys[spec.target]] = value
                total += spec.weight * value
            scores["reward"] = total
            out.append(scores)
        if self.reward_model is not None:
            seqs = [list(c.prompt_ids) + list(c.completion_ids) for c in completions]
            for scores, value in zip(
                out, reward_model_scores(self.reward_model, seqs), strict=True
            ):
                scores["reward_model"] = value
                scores["reward"] += self.reward_model_weight * value
        return out
