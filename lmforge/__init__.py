"""lmforge: forge large language models end to end, in readable PyTorch.

>>> import lmforge
>>> model = lmforge.load_model("path/to/hf-folder")
>>> lmforge.save_model(model, "out/")
"""

from lmforge.config import ConfigError, ModelConfig
from lmforge.models import CausalLM, CheckpointError, KVCache, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "CausalLM",
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "ModelConfig",
    "load_model",
    "save_model",
]
