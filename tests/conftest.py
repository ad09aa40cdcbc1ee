"""Offline fixtures: a tiny LLaDA and a byte-level BPE tokenizer, built here and saved like a real checkpoint."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import justgrpo_trl  # noqa: E402, F401  (registers the Auto classes)
from justgrpo_trl.models.tiny import save_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """Directory holding a tiny LLaDA (d_model 64, 2 layers, 4 heads, MLP 128) and its tokenizer."""
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llada")))


@pytest.fixture
def tiny_tokenizer(tiny_checkpoint):
    return AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.fixture
def tiny_model(tiny_checkpoint):
    """The tiny LLaDA in fp32, loaded through `AutoModelForCausalLM` as a user loads a real checkpoint."""
    return AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
