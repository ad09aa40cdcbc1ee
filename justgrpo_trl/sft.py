"""Masked-diffusion SFT for diffusion LMs (LLaDA's SFT recipe, or d1's normaliser), to warm-start a model before RL.

For each sequence `t ~ U(eps, 1]`; each completion token is replaced by the mask token with probability `t` (the
prompt and the padding never are); the loss is the cross-entropy on the masked tokens weighted by `1 / t`, divided by
the sequence's completion length and averaged over the batch, exactly LLaDA's

    ce_loss = torch.sum(token_loss / answer_lengths[masked_indices]) / input_ids.shape[0]

with `token_loss = CE / p_mask`. The noise lives in `collators.MaskedDiffusionSFTCollator`; `MaskedDiffusionSFTTrainer`
is transformers' `Trainer` with that collator, a prompt/completion dataset preparation, and a `compute_loss` that
computes logits at the masked positions only (never `[B, S, V]`) and excludes the mask token from the softmax, as the
samplers do.

```python
from justgrpo_trl.sft import MaskedDiffusionSFTConfig, MaskedDiffusionSFTTrainer

trainer = MaskedDiffusionSFTTrainer(
    model="GSAI-ML/LLaDA-8B-Instruct",
    args=MaskedDiffusionSFTConfig(output_dir="llada-sft", max_completion_length=256, bf16=True),
    train_dataset=dataset,  # columns "prompt" and "completion": plain text or conversational messages
    peft_config=LoraConfig(...),  # optional
)
trainer.train()
```
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset, IterableDataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging

from .collators import MaskedDiffusionSFTCollator
from .decoding import scaled_logits
from .models import apply_chat_template_fix, get_spec, resolve_special_tokens

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
SFT_LOSS_NORMALIZERS = ("llada", "d1")


@dataclass
class MaskedDiffusionSFTConfig(TrainingArguments):
    """`TrainingArguments` plus the masked-diffusion SFT options.

    Datasets have a `prompt` and a `completion` column, both plain text or both conversational (lists of messages);
    already tokenised `prompt_ids`/`completion_ids` columns are used as they are.
    """

    mask_eps: float = field(
        default=1e-3,
        metadata={"help": "eps of the masking rate t ~ U(eps, 1]: bounds the 1/t weight (LLaDA uses 1e-3)."},
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Keep at most this many prompt tokens (the last ones). None: no limit."}
    )
    max_completion_length: int | None = field(
        default=None,
        metadata={
            "help": "Keep at most this many completion tokens, stop token included (the first ones). With "
            "`fill_completions`, completions are filled with EOS to exactly this length: set it to the "
            "`max_completion_length` you decode and run RL with."
        },
    )
    fill_completions: bool = field(
        default=True,
        metadata={
            "help": "LLaDA's SFT: fill every completion with EOS up to `max_completion_length` (or the batch's "
            "longest completion) and train on the fill like on the answer, so the model learns to emit EOS and sees "
            "canvases as long as in decoding. False: completions end at their stop token, the rest is unattended "
            "padding."
        },
    )
    loss_normalizer: str = field(
        default="llada",
        metadata={
            "help": "'llada' (default): each sequence's weighted masked CE divided by its own completion length, then "
            "averaged over the batch (LLaDA's SFT). 'd1': the batch's weighted masked CE divided by the batch's "
            "number of completion tokens (d1's SFT). They agree when every completion has the same length (as with "
            "`fill_completions` to `max_completion_length`); otherwise 'llada' weighs each example equally and 'd1' "
            "each token equally."
        },
    )
    model_init_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `AutoModelForCausalLM.from_pretrained` when `model` is a string."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.mask_eps < 1.0:
            raise ValueError(f"mask_eps must be in (0, 1), got {self.mask_eps}.")
        if self.loss_normalizer not in SFT_LOSS_NORMALIZERS:
            raise ValueError(f"loss_normalizer must be one of {SFT_LOSS_NORMALIZERS}, got {self.loss_normalizer!r}.")
        for name in ("max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}.")


def _is_conversational(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict) and "role" in value[0]


def tokenize_prompt_completion(
    example: dict[str, Any], tokenizer, stop_ids: tuple[int, ...], eos_id: int
) -> dict[str, list[int]]:
    """`prompt_ids` and `completion_ids` of one example, tokenised exactly as the RL trainer and the samplers see them.

    The prompt is tokenised alone, as TRL tokenises RL prompts (conversational: with the generation prompt). The
    completion is what follows it: for messages, the rest of the chat-templated conversation (it ends with the
    template's end-of-turn token); for text, its own tokens followed by EOS unless they already end with a stop token.
    """
    prompt, completion = example["prompt"], example["completion"]
    if _is_conversational(prompt) != _is_conversational(completion):
        raise ValueError("`prompt` and `completion` must both be text or both be lists of messages.")
    if _is_conversational(prompt):
        template = dict(tokenize=True, return_dict=True)
        prompt_ids = list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, **template)["input_ids"])
        full_ids = list(tokenizer.apply_chat_template(prompt + completion, **template)["input_ids"])
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                "The chat template renders the prompt with its generation prompt differently from the start of the "
                "full conversation, so the completion cannot be cut out of it. Fix the chat template."
            )
        return {"prompt_ids": prompt_ids, "completion_ids": full_ids[len(prompt_ids) :]}
    prompt_ids = list(tokenizer(text=prompt)["input_ids"])
    completion_ids = list(tokenizer(text=completion, add_special_tokens=False)["input_ids"])
    if not completion_ids or completion_ids[-1] not in stop_ids:
        completion_ids.append(eos_id)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids}


def logit_positions(masked: torch.Tensor, logit_shift: int = 0) -> torch.Tensor:
    """Boolean `[B, S]` of the positions whose logits score the masked tokens: the masked positions themselves for
    LLaDA (`logit_shift=0`), the positions before them for Dream-style models (`logit_shift=1`). Row-major order is
    kept, so the flattened logits line up with `labels[masked]`."""
    if logit_shift == 0:
        return masked
    if masked[:, :logit_shift].any():
        raise ValueError(
            f"A masked token at position < {logit_shift} cannot be scored with logit_shift={logit_shift}."
        )
    keep = torch.zeros_like(masked)
    keep[:, :-logit_shift] = masked[:, logit_shift:]
    return keep


class MaskedDiffusionSFTTrainer(Trainer):
    """Masked-diffusion SFT of a diffusion LM (LLaDA family): transformers' `Trainer` with LLaDA's SFT loss.

    Args:
        model: a model, a `PeftModel`, or a checkpoint name/path loaded with `AutoModelForCausalLM`.
        args: a `MaskedDiffusionSFTConfig`.
        train_dataset, eval_dataset: `prompt`/`completion` columns (text or messages), or tokenised
            `prompt_ids`/`completion_ids`.
        processing_class: the tokenizer; loaded from the model's name or path when None.
        data_collator: defaults to `MaskedDiffusionSFTCollator` with the model's mask, pad and EOS tokens.
        peft_config: optional `peft.PeftConfig`; the model is wrapped with `get_peft_model`.
    """

    # The loss is a per-micro-batch mean: let Trainer divide it by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: MaskedDiffusionSFTConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset] | None = None,
        processing_class=None,
        data_collator: Callable | None = None,
        peft_config=None,
        **kwargs,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = MaskedDiffusionSFTConfig(f"{str(name).rstrip('/').split('/')[-1]}-MaskedSFT")
        if not isinstance(args, MaskedDiffusionSFTConfig):
            raise TypeError(f"MaskedDiffusionSFTTrainer needs a MaskedDiffusionSFTConfig, got {type(args).__name__}.")
        if isinstance(model, str):
            if processing_class is None:
                processing_class = AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model, **(args.model_init_kwargs or {}))
        elif processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config._name_or_path)
        if peft_config is not None:
            from peft import get_peft_model

            set_seed(args.seed)  # the adapter's initialisation is random
            model = get_peft_model(model, peft_config)
            if args.gradient_checkpointing:
                model.enable_input_require_grads()

        spec = get_spec(model)
        apply_chat_template_fix(spec, processing_class)
        self.special_tokens = resolve_special_tokens(spec, processing_class, model.config)
        eos_id = processing_class.eos_token_id if processing_class.eos_token_id is not None else self.stop_ids[0]
        self._eos_id = int(eos_id)

        if data_collator is None:
            data_collator = MaskedDiffusionSFTCollator(
                mask_id=self.special_tokens.mask_id,
                pad_id=self.special_tokens.pad_id,
                eps=args.mask_eps,
                fill_id=self._eos_id if args.fill_completions else None,
                fill_length=args.max_completion_length if args.fill_completions else None,
            )
        if train_dataset is not None:
            train_dataset = self._prepare_dataset(train_dataset, processing_class, args)
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._prepare_dataset(v, processing_class, args) for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return self.special_tokens.stop_ids

    def _prepare_dataset(self, dataset, tokenizer, args: MaskedDiffusionSFTConfig):
        """Tokenise `prompt`/`completion` into `prompt_ids`/`completion_ids`, truncate, drop the other columns."""
        columns = set(dataset.column_names or [])
        if not {"prompt_ids", "completion_ids"} <= columns:
            if not {"prompt", "completion"} <= columns:
                raise ValueError(
                    f"The dataset needs `prompt` and `completion` columns (or `prompt_ids`/`completion_ids`), has "
                    f"{sorted(columns)}."
                )
            dataset = dataset.map(
                tokenize_prompt_completion,
                fn_kwargs=dict(tokenizer=tokenizer, stop_ids=self.stop_ids, eos_id=self._eos_id),
            )
        max_prompt, max_completion = args.max_prompt_length, args.max_completion_length

        def truncate(example):
            prompt, completion = example["prompt_ids"], example["completion_ids"]
            if max_prompt is not None:
                prompt = prompt[-max_prompt:]
            if max_completion is not None:
                completion = completion[:max_completion]
            return {"prompt_ids": prompt, "completion_ids": completion}

        extra = [c for c in (dataset.column_names or []) if c not in ("prompt_ids", "completion_ids")]
        return dataset.map(truncate, remove_columns=extra)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "completion_ids"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The masked-diffusion SFT loss, logits at masked positions only. `loss_normalizer='llada'`:
        `sum_{masked} CE / (t * answer_length) / batch_size`; `'d1'`: `sum_{masked} CE / t / sum(answer_lengths)`."""
        labels, p_mask, answer_lengths = inputs["labels"], inputs["p_mask"], inputs["answer_lengths"]
        masked = labels != IGNORE_INDEX
        keep = logit_positions(masked, self.special_tokens.logit_shift)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep)
        logits = scaled_logits(outputs.logits, self.special_tokens.mask_id)  # [N, V] fp32, mask token excluded
        token_loss = F.cross_entropy(logits, labels[masked], reduction="none")
        if self.args.loss_normalizer == "d1":
            weights = p_mask.float()[:, None].expand_as(labels)[masked]
            loss = (token_loss / weights).sum() / answer_lengths.sum().clamp(min=1).float()
        else:
            weights = (p_mask.float()[:, None] * answer_lengths.clamp(min=1).float()[:, None]).expand_as(labels)
            loss = (token_loss / weights[masked]).sum() / labels.size(0)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation reports the (noised, hence stochastic) SFT loss only; logits are computed at masked positions."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
