"""Tiny LLaDA checkpoints built from nothing, for tests, the CPU demo and benchmarks (no hub access needed).

`build_tokenizer` makes a byte-level BPE tokenizer with LLaDA's special tokens and chat template;
`build_tiny_llada` a randomly initialised `LLaDAModelLM` whose config points at that tokenizer's ids.
Saved with `save_pretrained`, both reload through the Auto classes exactly like a real checkpoint.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .configuration_llada import LLaDAConfig
from .modeling_llada import LLaDAModelLM
from .registry import LLADA, resolve_special_tokens

LLADA_SPECIAL_TOKENS = (
    "<|startoftext|>",
    "<|endoftext|>",
    "<|mdm_mask|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)

DEFAULT_CORPUS = (
    "The quick brown fox jumps over the lazy dog. "
    "Question: what is 12 + 30? Answer: 12 + 30 = 42. The answer is 42. "
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "def add(a, b):\n    return a + b\n"
    "Therefore, since x = 5, we get 2x + 1 = 11. #### 11 \\boxed{11}"
)


def build_tokenizer(corpus: str | list[str] = DEFAULT_CORPUS, vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (all 256 bytes, plus merges learned on `corpus`) with LLaDA's special tokens."""
    texts = [corpus] if isinstance(corpus, str) else list(corpus)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(LLADA_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
    )
    wrapped.chat_template = LLADA.chat_template
    return wrapped


def tiny_llada_config(tokenizer: PreTrainedTokenizerFast, **overrides) -> LLaDAConfig:
    """The test-size config: d_model 64, 2 layers, 4 heads, MLP 128, `vocab_size = embedding_size = len(tokenizer)`."""
    tokens = resolve_special_tokens(LLADA, tokenizer)
    kwargs = dict(
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=4,
        mlp_hidden_size=128,
        vocab_size=len(tokenizer),
        embedding_size=len(tokenizer),
        max_sequence_length=512,
        rope_theta=500000.0,
        mask_token_id=tokens.mask_id,
        pad_token_id=tokens.pad_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        architectures=["LLaDAModelLM"],
    )
    kwargs.update(overrides)
    return LLaDAConfig(**kwargs)


def build_tiny_llada(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **overrides) -> LLaDAModelLM:
    """A randomly initialised tiny LLaDA, reproducible from `seed` without touching the global RNG."""
    config = tiny_llada_config(tokenizer, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LLaDAModelLM(config)
    model.generation_config.eos_token_id = list(resolve_special_tokens(LLADA, tokenizer).stop_ids)
    model.generation_config.pad_token_id = config.pad_token_id
    return model.eval()


def save_tiny_checkpoint(directory: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a tiny LLaDA and its tokenizer to `directory`, ready for `from_pretrained(directory)`."""
    directory = Path(directory)
    tokenizer = build_tokenizer()
    build_tiny_llada(tokenizer, seed=seed, **overrides).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
