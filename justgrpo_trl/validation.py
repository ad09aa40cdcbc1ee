"""Input validation: options, datasets and prompts that would fail mid-run (or silently train on the wrong thing)
are refused before any compute, with an error that names the fix."""

from __future__ import annotations

from transformers.utils import logging

from .config import JustGRPOConfig

logger = logging.get_logger(__name__)

UNSUPPORTED_OPTIONS = {
    "use_vllm": "vLLM has no masked-diffusion sampler; rollouts run in-process with AR-order decoding.",
    "use_transformers_continuous_batching": "continuous batching assumes a KV cache, which bidirectional "
    "attention does not have.",
    "use_liger_kernel": "Liger's fused linear cross-entropy assumes the causal shift; LLaDA scores position i "
    "with the logits at i.",
    "cast_lm_head_to_fp32": "the trainer already computes log-probs and entropies in fp32 from the logits of "
    "the scored positions only.",
}


def check_supported(args: JustGRPOConfig) -> None:
    """Reject TRL options that cannot work with a bidirectional diffusion LM, saying why and what to do."""
    for name, reason in UNSUPPORTED_OPTIONS.items():
        if getattr(args, name, False):
            raise ValueError(f"JustGRPOTrainer does not support `{name}=True`: {reason} Set `{name}=False`.")
    if args.temperature <= 0:
        raise ValueError(f"temperature must be > 0 in RL rollouts (TRL divides logits by it), got {args.temperature}.")


def check_trainer_kwargs(kwargs: dict) -> None:
    """Multi-turn rollouts (tools, environments) are not supported."""
    for unsupported in ("tools", "environment_factory"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(f"JustGRPOTrainer does not support `{unsupported}`: rollouts are single-turn.")


def check_dataset(dataset) -> None:
    """Fail before training on data TRL would only trip over mid-run: no `prompt` column, or empty prompts."""
    if dataset is None or getattr(dataset, "column_names", None) is None:
        return
    if "prompt" not in dataset.column_names:
        raise ValueError(
            f"The training dataset has no 'prompt' column (columns: {dataset.column_names}). Rename the column "
            "holding the prompts, e.g. `dataset = dataset.rename_column('question', 'prompt')`."
        )
    if not hasattr(dataset, "__len__"):
        return  # an IterableDataset is checked batch by batch as it streams
    for index, prompt in enumerate(dataset["prompt"]):
        text = prompt if isinstance(prompt, str) else "".join(str(m.get("content") or "") for m in prompt)
        if not text.strip():
            raise ValueError(f"Row {index} of the training dataset has an empty prompt; remove it from the dataset.")


def check_lengths(max_prompt_length: int | None, max_completion_length: int, max_sequence_length: int | None) -> None:
    """The canvas (prompt + `max_completion_length` slots) must fit the model's maximum length."""
    if max_sequence_length is None:
        return
    if max_completion_length >= max_sequence_length:
        raise ValueError(
            f"max_completion_length={max_completion_length} leaves no room for a prompt within the model's "
            f"maximum length {max_sequence_length}; lower max_completion_length."
        )
    longest = (max_prompt_length or 0) + max_completion_length
    if longest > max_sequence_length:
        raise ValueError(
            f"max_prompt_length ({max_prompt_length}) + max_completion_length ({max_completion_length}) "
            f"= {longest} exceeds the model's maximum length {max_sequence_length}; lower one of them."
        )


def limit_prompt_lengths(prompt_ids: list[list[int]], limit: int | None, truncation: str) -> list[list[int]]:
    """Refuse empty prompts; apply `max_prompt_length` (`prompt_truncation`: 'error', or 'left' to keep the last
    tokens)."""
    for index, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ValueError(f"Prompt {index} of the batch is empty; remove empty prompts from the dataset.")
        if limit is not None and len(ids) > limit:
            if truncation == "error":
                raise ValueError(
                    f"A prompt has {len(ids)} tokens, more than max_prompt_length={limit}. Raise "
                    "max_prompt_length, filter long prompts out, or set prompt_truncation='left' to keep their "
                    "last tokens."
                )
            logger.warning_once(f"Prompts longer than max_prompt_length={limit} are cut to their last tokens.")
            prompt_ids[index] = list(ids[-limit:])
    return prompt_ids


def check_rollout_prompts(
    prompt_ids: list[list[int]], mask_id: int, max_completion_length: int, max_sequence_length: int | None
) -> None:
    """No prompt may hold the mask token (it would be read as a slot to fill) or overflow the canvas."""
    for index, ids in enumerate(prompt_ids):
        if mask_id in ids:
            raise ValueError(
                f"Prompt {index} contains the mask token (id {mask_id}), which would be read as a slot to fill. "
                "Remove it from the dataset's prompts."
            )
    longest = max(len(ids) for ids in prompt_ids)
    if max_sequence_length is not None and longest + max_completion_length > max_sequence_length:
        raise ValueError(
            f"A prompt of {longest} tokens plus max_completion_length={max_completion_length} exceeds the "
            f"model's maximum length {max_sequence_length}. Shorten the prompts or max_completion_length."
        )
