"""What every sampler shares: its diffusers-compatible config, the step counter, the noise
generator, and reading / writing ``scheduler_config.json``.

The contract (`lmforge.diffusion.load_scheduler` builds one from a folder or a config):

    s.set_timesteps(n); x = torch.randn(shape) * s.init_noise_sigma
    for t in s.timesteps:
        out = model(s.scale_model_input(x, t), t)
        x = s.step(out, t, x)            # noise= the variance noise of a stochastic step
    s.add_noise(x0, noise, t)            # the forward process at training timesteps t

A subclass declares ``class_name`` (diffusers' ``_class_name``), a dataclass ``Config`` with
diffusers' key names and defaults, and ``unsupported``: keys whose non-default values the
class does not implement (refused with a `ConfigError` naming the key, never silently
ignored). Keys diffusers' class itself would ignore are ignored here too.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import torch

from lmforge.config import ConfigError
from lmforge.io import atomic_write_json

CONFIG_NAME = "scheduler_config.json"
DIFFUSERS_VERSION = "0.42.0"

__all__ = [
    "CONFIG_NAME",
    "DIFFUSERS_VERSION",
    "Scheduler",
    "broadcast_to",
    "read_scheduler_config",
]


def read_scheduler_config(source: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``(config dict, where)`` from a dict, a ``scheduler_config.json`` file, or a folder
    holding one (directly or in ``scheduler/``, as a diffusers pipeline does)."""
    if isinstance(source, dict):
        return dict(source), "<config dict>"
    path = Path(source)
    if path.is_dir():
        for candidate in (path / CONFIG_NAME, path / "scheduler" / CONFIG_NAME):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise ConfigError(f"{path}: no {CONFIG_NAME} (nor scheduler/{CONFIG_NAME})")
    if not path.is_file():
        raise ConfigError(f"{path}: no such scheduler config")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return raw, str(path)


class Scheduler:
    """Base class of the samplers (see the module docstring for the contract)."""

    class_name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    unsupported: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 1

    def __init__(self, config: Any = None, generator: torch.Generator | None = None, **kwargs: Any):
        if config is None:
            config = self.Config(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        self.config = config
        self.generator = generator
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0)
        self.step_index: int | None = None

    # ------------------------------------------------------------------ config io
    @classmethod
    def from_config(cls, raw: dict[str, Any], where: str = "<config>", **kwargs: Any) -> Scheduler:
        """Build from diffusers' config keys (``_``-prefixed keys are metadata)."""
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key.startswith("_") or key not in fields:
                continue
            values[key] = list(value) if isinstance(value, tuple) else value
        config = cls.Config(**values)
        for key in cls.unsupported:
            default = fields[key].default
            if getattr(config, key) != default:
                raise ConfigError(
                    f"{where}: {key}={getattr(config, key)!r} is not implemented by lmforge's "
                    f"{cls.class_name} (only {default!r})"
                )
        cls.check(config, where)
        return cls(config, **kwargs)

    @classmethod
    def check(cls, config: Any, where: str) -> None:
        """Refuse values outside what the class implements (subclasses extend)."""

    def to_config(self) -> dict[str, Any]:
        """diffusers' ``scheduler_config.json`` content."""
        return {
            "_class_name": self.class_name,
            "_diffusers_version": DIFFUSERS_VERSION,
            **dataclasses.asdict(self.config),
        }

    def save_config(self, folder: str | Path) -> Path:
        """Write ``<folder>/scheduler_config.json`` atomically; return its path."""
        path = Path(folder) / CONFIG_NAME
        Path(folder).mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_config())
        return path

    # ------------------------------------------------------------------ the contract
    @property
    def init_noise_sigma(self) -> float | torch.Tensor:
        return 1.0

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: int) -> None:
        raise NotImplementedError

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def draw_noise(self, like: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """``noise`` as given, else a standard normal draw from ``self.generator``."""
        if noise is not None:
            return noise.to(like.device, like.dtype)
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype).to(like.device)

    def index_of(self, timestep: Any) -> int:
        """The position of ``timestep`` in ``self.timesteps`` (diffusers' rule: the second
        match when a timestep repeats)."""
        hits = (self.timesteps == torch.as_tensor(timestep).to(self.timesteps.dtype)).nonzero()
        if len(hits) == 0:
            raise ValueError(f"timestep {timestep} is not in this scheduler's timesteps")
        return int(hits[1 if len(hits) > 1 else 0].item())

    def begin_step(self, timestep: Any) -> int:
        """The current step index (found from ``timestep`` on the first call)."""
        if self.num_inference_steps is None:
            raise ValueError(f"{self.class_name}: call set_timesteps(n) before step()")
        if self.step_index is None:
            self.step_index = self.index_of(timestep)
        return self.step_index


def broadcast_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` [B] reshaped to broadcast against ``like`` [B, ...]."""
    values = values.flatten()
    return values.reshape(-1, *([1] * (like.dim() - 1)))
