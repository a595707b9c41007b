"""lmforge: forge large language models end to end, in readable PyTorch.

>>> import lmforge
>>> model = lmforge.load_model("path/to/hf-folder")
>>> out = lmforge.generate(model, input_ids, max_new_tokens=20)
>>> lmforge.save_model(model, "out/")
"""

from lmforge.config import ConfigError, ModelConfig
from lmforge.infer.generate import generate
from lmforge.models import CausalLM, CheckpointError, KVCache, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "CausalLM",
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "ModelConfig",
    "generate",
    "load_model",
    "save_model",
]
