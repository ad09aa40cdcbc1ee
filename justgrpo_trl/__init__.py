"""justgrpo_trl: JustGRPO (autoregressive-order GRPO) for masked diffusion language models, as a TRL extension.

Importing the package registers the native LLaDA with transformers' Auto classes. The trainer (which imports TRL)
is loaded on first access, so `import justgrpo_trl` stays light for evaluation and model loading.
"""

from .models import LLaDAConfig, LLaDAModelLM, get_spec, register_diffusion_lm

__version__ = "0.1.0"

_LAZY = {"JustGRPOConfig": "config", "JustGRPOTrainer": "trainer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "JustGRPOConfig",
    "JustGRPOTrainer",
    "LLaDAConfig",
    "LLaDAModelLM",
    "__version__",
    "get_spec",
    "register_diffusion_lm",
]
