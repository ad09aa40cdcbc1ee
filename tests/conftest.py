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
from justgrpo_trl.models import get_spec, resolve_special_tokens  # noqa: E402
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


def load_stop_heavy(checkpoint: str):
    """The tiny LLaDA with a strong random direction on the stop tokens' output rows, so that sampled completions
    end at varied lengths (a random 384-way model almost never stops); returns `(model, tokenizer, tokens)`."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokens = resolve_special_tokens(get_spec(model), tokenizer, model.config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        head = model.model.transformer.ff_out.weight
        head.mul_(10.0)  # peaky distributions: log-probs far from uniform
        for stop_id in tokens.stop_ids:
            head[stop_id] = torch.randn(head.size(1), generator=generator) * 0.4
    return model, tokenizer, tokens


@pytest.fixture
def stop_heavy_model(tiny_checkpoint):
    """`load_stop_heavy` of the tiny checkpoint, in eval mode."""
    model, tokenizer, tokens = load_stop_heavy(tiny_checkpoint)
    return model.eval(), tokenizer, tokens


@pytest.fixture
def single_thread():
    """The tiny model's matmuls are far faster on one thread (thread hand-offs dominate on a busy 2-core runner)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
