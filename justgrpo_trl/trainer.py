"""JustGRPO: plain GRPO on a masked diffusion LM treated as autoregressive during RL.

`JustGRPOTrainer` is TRL's `GRPOTrainer` with two methods replaced:

* `_generate_single_turn`: rollouts in AR order (`decoding.ar_decode`): one forward per token, every future slot
  masked, sampling log-probs recorded;
* `_get_per_token_logps_and_entropies`: the exact log-prob of each completion token under the same masking
  (`collators.ARScoringCanvases`), packed in chunks and checkpointed one chunk at a time.

In training, `compute_loss` goes one step further where the loss allows it (`chunked_backward`, the default): each
chunk's share of the loss is backpropagated as soon as the chunk is scored, and TRL's `_compute_loss` then runs on
the scored values for the loss value and the metrics.

Everything else (chat templates, rewards, advantages, every loss type, KL with a reference model or a PEFT adapter,
`num_iterations`, `steps_per_generation`, entropy masking, logging) is TRL's own code. The comparison estimators
(`estimator="diffu_grpo"|"agrpo"`, see `estimators.py`) and the run-reliability features (`reliability.py`) add a few
more hooks, each documented where it is defined; with the defaults they leave JustGRPO's path as described above.
"""

import os
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

import torch
import transformers.trainer
import trl.trainer.grpo_trainer
from accelerate.utils import gather
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import _ForwardRedirection, unwrap_model_for_generation

from .chunked_backward import SEPARABLE_LOSS_TYPES, TokenLoss, backward_chunk_by_chunk, loss_weights
from .collators import ARScoringCanvases, one_step_canvas
from .decoding import ar_decode, block_decode
from .estimators import score_canvases, score_one_step, stratified_step_weights, target_logps
from .models import apply_chat_template_fix, get_spec, resolve_special_tokens
from .reliability import (
    REWARD_ERROR_POLICIES,
    STAGING_PREFIX,
    EpochSeededRepeatSampler,
    guard_reward_functions,
    publish_checkpoint,
    staged_checkpoint_names,
    zero_nonfinite_gradients,
)

logger = logging.get_logger(__name__)

ESTIMATORS = ("ar_exact", "diffu_grpo", "agrpo")


@dataclass
class JustGRPOConfig(GRPOConfig):
    """`GRPOConfig` plus the knobs of AR-order RL on diffusion LMs.

    Every forward in a rollout and every scored token costs a full-canvas forward, so `max_completion_length`
    defaults to the paper's 256 rather than TRL's 512.
    """

    max_completion_length: int | None = field(
        default=256,
        metadata={"help": "Canvas length L: the rollout's number of masked slots, and the scoring canvas' length."},
    )
    logprob_chunk_size: int = field(
        default=16,
        metadata={
            "help": "Scoring canvases per forward. Memory holds one chunk's activations at a time (see "
            "`chunked_backward`). Larger is faster, up to memory."
        },
    )
    chunked_backward: bool = field(
        default=True,
        metadata={
            "help": "Backpropagate each scoring chunk's share of the loss right after its forward, instead of "
            "checkpointing every chunk and running one backward: no recompute and no second gradient-sized buffer, "
            "same gradient. Applies with estimator='ar_exact' and a loss that is a sum of per-token terms "
            "(token-level importance sampling, loss_type other than 'vespo', no off-policy mask, no entropy bonus, an "
            "entropy mask only with justgrpo_fast), on one process or under DDP; elsewhere the checkpointed path runs."
        },
    )
    reuse_sampling_logprobs: bool = field(
        default=True,
        metadata={
            "help": "When TRL needs old log-probs (num_iterations > 1 or steps_per_generation > "
            "gradient_accumulation_steps), use the log-probs recorded during the rollout instead of a scoring pass. "
            "They are the same quantity under the same weights (tested to 1e-5 in fp32); turn off to recompute."
        },
    )

    estimator: str = field(
        default="ar_exact",
        metadata={
            "help": "How per-token log-probs are estimated. 'ar_exact' (JustGRPO): AR-order rollouts, exact AR-order "
            "log-probs. 'diffu_grpo' (d1): block-diffusion rollouts, log-probs from one forward with the completion "
            "masked and prompt tokens masked with p_mask_prompt. 'agrpo': block-diffusion rollouts, each token scored "
            "in the state it was unmasked in, for agrpo_num_steps sampled denoising steps per trajectory."
        },
    )
    block_length: int = field(
        default=32, metadata={"help": "diffu_grpo/agrpo rollouts: block length of LLaDA's semi-AR sampler."}
    )
    diffusion_steps: int | None = field(
        default=None,
        metadata={"help": "diffu_grpo/agrpo rollouts: denoising steps for the whole completion (default L / 2)."},
    )
    remasking: str = field(
        default="low_confidence", metadata={"help": "diffu_grpo/agrpo rollouts: 'low_confidence' or 'random'."}
    )
    p_mask_prompt: float = field(
        default=0.15, metadata={"help": "diffu_grpo: probability of masking each prompt token (fresh per iteration)."}
    )
    agrpo_num_steps: int = field(
        default=24,
        metadata={"help": "agrpo: denoising steps K sampled (stratified) per trajectory and update; more = exact."},
    )
    justgrpo_fast: bool = field(
        default=False,
        metadata={
            "help": "JustGRPO-Fast: train only on the `top_entropy_quantile` highest-entropy positions (the paper "
            "uses 0.25), chosen by the entropies recorded during the rollout, and never compute the other positions. "
            "Needs top_entropy_quantile < 1, beta = 0 and no entropy bonus."
        },
    )

    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Longest prompt in tokens; longer ones are handled by `prompt_truncation`. None: no limit."},
    )
    prompt_truncation: str = field(
        default="error",
        metadata={"help": "'error': stop on a prompt over max_prompt_length; 'left': keep its last tokens and warn."},
    )
    reward_errors: str = field(
        default="raise",
        metadata={
            "help": "A reward function that raises or returns a non-finite value: 'raise' stops with an error naming "
            "the function and the row; 'skip' scores that row None (TRL leaves it out), counts it in the "
            "`reward_failures/<name>` metric and goes on."
        },
    )
    zero_nonfinite_grads: bool = field(
        default=True,
        metadata={
            "help": "Zero NaN/inf gradient entries before clipping, as the reference recipe does; counted in the "
            "`nonfinite_grad_elements` metric. Not available under DeepSpeed, which steps inside its backward."
        },
    )
    skip_nonfinite_loss_steps: bool = field(
        default=True,
        metadata={
            "help": "If any micro-batch loss of an optimizer step is NaN/inf on any process, skip that optimizer step "
            "(counted in `skipped_steps`). Not available under DeepSpeed."
        },
    )

    def __post_init__(self):
        try:
            super().__post_init__()
        except ValueError as error:
            if "divisible by num_generations" not in str(error):
                raise
            raise ValueError(
                f"{error} Each generation batch must hold whole groups: make per_device_train_batch_size x "
                "gradient_accumulation_steps x number of processes (or generation_batch_size) a multiple of "
                f"num_generations={self.num_generations}, or change num_generations."
            ) from error
        if self.prompt_truncation not in ("error", "left"):
            raise ValueError(f"prompt_truncation must be 'error' or 'left', got {self.prompt_truncation!r}.")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}.")
        if self.estimator != "ar_exact":
            if self.justgrpo_fast:
                raise ValueError("justgrpo_fast applies to estimator='ar_exact' only.")
            self.diffusion_steps = self.diffusion_steps or self.max_completion_length // 2
        if self.estimator == "agrpo" and self.beta != 0.0:
            raise ValueError("estimator='agrpo' scores sampled steps only and has no KL term: set beta=0.")
        if self.reward_errors not in REWARD_ERROR_POLICIES:
            raise ValueError(f"reward_errors must be one of {REWARD_ERROR_POLICIES}, got {self.reward_errors!r}.")
        if self.justgrpo_fast:
            if self.top_entropy_quantile >= 1.0:
                raise ValueError("justgrpo_fast needs top_entropy_quantile < 1 (the paper uses 0.25).")
            if self.beta != 0.0 or self.entropy_coef != 0.0 or self.use_adaptive_entropy:
                raise ValueError(
                    "justgrpo_fast skips the unselected positions, whose log-probs the KL term and the entropy bonus "
                    "would need: set beta=0 and entropy_coef=0 (and use_adaptive_entropy=False), or turn it off."
                )
        if self.logprob_chunk_size < 1:
            raise ValueError(f"logprob_chunk_size must be >= 1, got {self.logprob_chunk_size}.")


def _check_supported(args: GRPOConfig) -> None:
    """Reject TRL options that cannot work with a bidirectional diffusion LM, saying why and what to do."""
    if not isinstance(args, JustGRPOConfig):
        raise TypeError(f"JustGRPOTrainer needs a JustGRPOConfig, got {type(args).__name__}: use JustGRPOConfig(...).")
    unsupported = {
        "use_vllm": "vLLM has no masked-diffusion sampler; rollouts run in-process with AR-order decoding.",
        "use_transformers_continuous_batching": "continuous batching assumes a KV cache, which bidirectional "
        "attention does not have.",
        "use_liger_kernel": "Liger's fused linear cross-entropy assumes the causal shift; LLaDA scores position i "
        "with the logits at i.",
        "cast_lm_head_to_fp32": "the trainer already computes log-probs and entropies in fp32 from the logits of "
        "the scored positions only.",
    }
    for name, reason in unsupported.items():
        if getattr(args, name, False):
            raise ValueError(f"JustGRPOTrainer does not support `{name}=True`: {reason} Set `{name}=False`.")
    if args.temperature <= 0:
        raise ValueError(f"temperature must be > 0 in RL rollouts (TRL divides logits by it), got {args.temperature}.")
    if (args.top_k or 0) > 0 or args.top_p < 1.0 or args.min_p is not None:
        logger.warning(
            "top_k/top_p/min_p change how rollouts are sampled, but TRL's training log-probs use the full "
            "temperature-scaled distribution, so the policy gradient is biased. The JustGRPO recipe uses neither."
        )


def _check_dataset(dataset) -> None:
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


class JustGRPOTrainer(GRPOTrainer):
    """Drop-in `GRPOTrainer` for masked diffusion LMs (LLaDA family), trained in autoregressive order.

    Example:
    ```python
    from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer
    from justgrpo_trl.rewards import math_reward

    trainer = JustGRPOTrainer(
        model="GSAI-ML/LLaDA-8B-Instruct",
        reward_funcs=math_reward,
        args=JustGRPOConfig(output_dir="llada-justgrpo", num_generations=16, bf16=True),
        train_dataset=dataset,
    )
    trainer.train()
    ```
    """

    _tag_names = ["trl", "grpo", "justgrpo", "diffusion-lm"]
    _name = "JustGRPO"

    def __init__(self, model, reward_funcs=None, args: JustGRPOConfig | None = None, *pargs, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = JustGRPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-JustGRPO")
        _check_supported(args)
        for unsupported in ("tools", "environment_factory"):
            if kwargs.get(unsupported) is not None:
                raise ValueError(f"JustGRPOTrainer does not support `{unsupported}`: rollouts are single-turn.")
        _check_dataset(kwargs.get("train_dataset", pargs[0] if pargs else None))
        self._reward_failures: Counter = Counter()
        self._nonfinite_grad_elements = 0
        self._skipped_steps = 0
        self._skip_optimizer_step = False
        reward_funcs = guard_reward_functions(reward_funcs, args.reward_errors, self._reward_failures)
        self._guarded_reward_names = list(dict.fromkeys(f.__name__ for f in reward_funcs if hasattr(f, "__wrapped__")))
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)

        unwrapped = self.accelerator.unwrap_model(self.model)
        self.diffusion_spec = get_spec(unwrapped)
        apply_chat_template_fix(self.diffusion_spec, self._tokenizer)
        self.special_tokens = resolve_special_tokens(self.diffusion_spec, self._tokenizer, unwrapped.config)
        # TRL reads eos_token_ids for `clipped_ratio` and `mask_truncated_completions`: every stop token ends a reply.
        self.eos_token_ids = list(dict.fromkeys([*self.special_tokens.stop_ids, *self.eos_token_ids]))
        self.max_sequence_length = getattr(unwrapped.config, "max_sequence_length", None) or getattr(
            unwrapped.config, "max_position_embeddings", None
        )
        if self.max_sequence_length is not None and self.max_completion_length >= self.max_sequence_length:
            raise ValueError(
                f"max_completion_length={self.max_completion_length} leaves no room for a prompt within the model's "
                f"maximum length {self.max_sequence_length}; lower max_completion_length."
            )
        longest = (args.max_prompt_length or 0) + self.max_completion_length
        if self.max_sequence_length is not None and longest > self.max_sequence_length:
            raise ValueError(
                f"max_prompt_length ({args.max_prompt_length}) + max_completion_length ({self.max_completion_length}) "
                f"= {longest} exceeds the model's maximum length {self.max_sequence_length}; lower one of them."
            )
        if self.is_deepspeed_enabled and (args.zero_nonfinite_grads or args.skip_nonfinite_loss_steps):
            logger.warning(
                "zero_nonfinite_grads / skip_nonfinite_loss_steps do not apply under DeepSpeed, which steps the "
                "optimizer inside its backward; rely on DeepSpeed's own overflow handling there."
            )
        self._forward_redirection = _ForwardRedirection()
        self._pending_sampling_logps: tuple[list[list[float]], list[list[int]]] | None = None
        self._rollouts: dict[tuple[tuple[int, ...], tuple[int, ...]], dict[str, list]] = {}
        self._diffu_seeds: list[int] = [0]
        self._diffu_iteration = 0
        self._diffu_stash: list[torch.Tensor] = []
        self._scored: tuple[torch.Tensor, torch.Tensor] | None = None
        self._chunked_backward_blocker = self._why_not_chunked_backward()
        if args.chunked_backward and self._chunked_backward_blocker:
            logger.info(
                f"chunked_backward does not apply ({self._chunked_backward_blocker}); scoring chunks are "
                "checkpointed and backpropagated together."
            )

    # ------------------------------------------------------------------ prompts and rollouts

    def _tokenize_prompts(self, prompts: list):
        """TRL's tokenisation, then the prompt checks: empty prompts, and `max_prompt_length`."""
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        limit = self.args.max_prompt_length
        for index, ids in enumerate(prompt_ids):
            if len(ids) == 0:
                raise ValueError(f"Prompt {index} of the batch is empty; remove empty prompts from the dataset.")
            if limit is not None and len(ids) > limit:
                if self.args.prompt_truncation == "error":
                    raise ValueError(
                        f"A prompt has {len(ids)} tokens, more than max_prompt_length={limit}. Raise "
                        "max_prompt_length, filter long prompts out, or set prompt_truncation='left' to keep their "
                        "last tokens."
                    )
                logger.warning_once(f"Prompts longer than max_prompt_length={limit} are cut to their last tokens.")
                prompt_ids[index] = list(ids[-limit:])
        return prompt_ids, images, multimodal_fields

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """Sample completions (AR order; LLaDA's block decoding for `diffu_grpo`/`agrpo`) and record what the
        estimators need; returns `(completion_ids, logprobs)` lists as TRL expects."""
        if images is not None or multimodal_fields:
            raise ValueError("JustGRPOTrainer supports text-only prompts.")
        self._check_prompts(prompt_ids)
        common = dict(
            gen_length=self.max_completion_length, temperature=self.temperature, **self.special_tokens.decode_kwargs()
        )
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
            self.accelerator.autocast(),
        ):
            if self.args.estimator == "ar_exact":
                output = ar_decode(
                    unwrapped_model, prompt_ids, top_k=self.args.top_k or None, top_p=self.args.top_p, **common
                )
            else:
                output = block_decode(
                    unwrapped_model,
                    prompt_ids,
                    block_length=self.args.block_length,
                    steps=self.args.diffusion_steps,
                    remasking=self.args.remasking,
                    **common,
                )
        generate_every = self.args.steps_per_generation * self.num_iterations
        old_logps_needed = self.args.gradient_accumulation_steps % generate_every != 0
        reuse = self.args.reuse_sampling_logprobs or self.args.estimator == "agrpo"  # AGRPO clips against them
        if reuse and self.args.estimator != "diffu_grpo" and old_logps_needed and self.model.training:
            self._pending_sampling_logps = (output.logprobs, output.completion_ids)
        self._rollouts = {
            (tuple(prompt), tuple(output.completion_ids[i])): {
                "entropies": output.entropies[i],
                "logprobs": output.logprobs[i],
                "canvas_ids": output.canvas_ids[i] if output.canvas_ids else None,
                "canvas_steps": output.canvas_steps[i] if output.canvas_steps else None,
            }
            for i, prompt in enumerate(prompt_ids)
        }
        if self.args.estimator == "diffu_grpo":  # one prompt-mask seed per inner iteration, shared by old/new/ref
            self._diffu_seeds = torch.randint(0, 2**31 - 1, (self.num_iterations,)).tolist()
        return output.completion_ids, output.logprobs

    def _check_prompts(self, prompt_ids: list[list[int]]) -> None:
        mask_id = self.special_tokens.mask_id
        for index, ids in enumerate(prompt_ids):
            if mask_id in ids:
                raise ValueError(
                    f"Prompt {index} contains the mask token (id {mask_id}), which would be read as a slot to fill. "
                    "Remove it from the dataset's prompts."
                )
        longest = max(len(ids) for ids in prompt_ids)
        if self.max_sequence_length is not None and longest + self.max_completion_length > self.max_sequence_length:
            raise ValueError(
                f"A prompt of {longest} tokens plus max_completion_length={self.max_completion_length} exceeds the "
                f"model's maximum length {self.max_sequence_length}. Shorten the prompts or max_completion_length."
            )

    def _pad_lists(self, rows: list[list], width: int, dtype=torch.float32, fill=0) -> torch.Tensor:
        """Per-row lists cut or right-padded into a `[B, width]` tensor on this process' device."""
        out = torch.full((len(rows), width), fill, dtype=dtype)
        for index, row in enumerate(rows):
            out[index, : len(row[:width])] = torch.tensor(row[:width], dtype=dtype)
        return out.to(self.accelerator.device)

    # ------------------------------------------------------------------ exact log-probs

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal_inputs,
    ):
        """Per-token log-probs `[B, T]` (and entropies) of the completion tokens, `T = logits_to_keep`.

        With the default `ar_exact` estimator, token j of row b is scored exactly on
        `[prompt | c_<j | MASK x (L - j)]`, `L = max_completion_length`, at the positions TRL's completion mask
        marks; the others are 0. Logits are divided by the temperature and the mask token is excluded from the
        softmax, as in the rollout. `diffu_grpo` and `agrpo` are documented on `JustGRPOConfig.estimator`.
        """
        if any(value is not None for value in multimodal_inputs.values()):
            raise ValueError("JustGRPOTrainer supports text-only inputs.")
        if self._scored is not None:  # `_chunked_backward_loss` already scored this batch
            (logps, entropies), self._scored = self._scored, None
            return logps, (entropies if compute_entropy else None), (logps.new_zeros(()) if compute_aux_loss else None)
        cached = self._take_sampling_logps(input_ids, logits_to_keep)
        if cached is not None:
            return cached, None, None
        prompt_width = input_ids.size(1) - logits_to_keep
        if self.args.estimator == "diffu_grpo":
            logps, entropies = self._diffu_grpo_logps(model, input_ids, attention_mask, prompt_width)
        elif self.args.estimator == "agrpo" and torch.is_grad_enabled():
            logps, entropies = self._agrpo_logps(model, input_ids, attention_mask, prompt_width)
        else:
            # AGRPO's no-gradient passes (evaluation): the exact trajectory log-probs, every step scored
            records = (
                self._rollout_rows(input_ids, attention_mask, prompt_width) if self.args.estimator == "agrpo" else None
            )
            logps, entropies = self._exact_logps(model, input_ids, attention_mask, prompt_width, records=records)
        aux_loss = logps.new_zeros(()) if compute_aux_loss else None
        return logps, (entropies if compute_entropy else None), aux_loss

    def _call_model(self, model, function, *args):
        """Run `function(unwrapped_module, *args)` through one pass of the DDP/DeepSpeed wrapper's forward, however
        many forwards of the module it makes inside."""
        unwrapped = self.accelerator.unwrap_model(model)
        if unwrapped is model:
            return function(unwrapped, *args)
        return self._forward_redirection(model, unwrapped, partial(function, unwrapped), *args)

    def _exact_logps(self, model, input_ids, attention_mask, prompt_width, score_mask=None, records=None):
        """Exact log-probs on AR-order canvases, or in the sampler's own order when `records` hold trajectories."""
        canvases, entropies_override, _ = self._ar_canvases(
            input_ids, attention_mask, prompt_width, score_mask, records
        )
        score = partial(
            score_canvases,
            mask_id=self.special_tokens.mask_id,
            temperature=self.temperature,
            num_forwards=self._max_across_sharded_ranks(len(canvases)),
            autocast=self.accelerator.autocast,
        )
        logps, entropies = self._call_model(model, score, canvases)
        return logps, (entropies if entropies_override is None else entropies_override)

    def _ar_canvases(self, input_ids, attention_mask, prompt_width, score_mask=None, records=None):
        """The scoring canvases of a batch, plus, under JustGRPO-Fast, the rollout's entropies and the top-entropy
        mask TRL's `_compute_loss` derives from them (only those positions are scored)."""
        completion_mask = attention_mask[:, prompt_width:]
        score_mask = completion_mask if score_mask is None else score_mask
        entropies_override = fast_mask = None
        if self.args.justgrpo_fast:
            rows = self._rollout_rows(input_ids, attention_mask, prompt_width)
            entropies_override = self._recorded(rows, "entropies", width=completion_mask.size(1))
            fast_mask = self.get_high_entropy_mask(entropies_override, completion_mask, 1 - self.top_entropy_quantile)
            score_mask = fast_mask
        trajectory = {}
        if records is not None:
            width = self.max_completion_length
            trajectory = {
                "canvas_ids": self._recorded(records, "canvas_ids", width=width, dtype=torch.long),
                "unmask_steps": self._recorded(records, "canvas_steps", width=width, dtype=torch.long, fill=-1),
            }
        canvases = ARScoringCanvases(
            input_ids[:, :prompt_width],
            attention_mask[:, :prompt_width],
            input_ids[:, prompt_width:],
            score_mask,
            gen_length=self.max_completion_length,
            mask_id=self.special_tokens.mask_id,
            chunk_size=self.args.logprob_chunk_size,
            logit_shift=self.special_tokens.logit_shift,
            **trajectory,
        )
        return canvases, entropies_override, fast_mask

    def _agrpo_logps(self, model, input_ids, attention_mask, prompt_width):
        """AGRPO: sample `agrpo_num_steps` denoising steps per trajectory (stratified), score the tokens unmasked at
        those steps in the state the sampler saw them in, with gradient weight 1 / inclusion probability; every other
        token keeps its constant sampling log-prob. The gradient is unbiased for the full-trajectory gradient."""
        records = self._rollout_rows(input_ids, attention_mask, prompt_width)
        completion_mask = attention_mask[:, prompt_width:]
        width = completion_mask.size(1)
        steps = self._recorded(records, "canvas_steps", width=self.max_completion_length, dtype=torch.long, fill=-1)
        weights = torch.zeros(completion_mask.shape, device=completion_mask.device)
        for row, length in enumerate(completion_mask.sum(1).tolist()):
            row_steps = steps[row, :length].tolist()
            chosen = stratified_step_weights(row_steps, self.args.agrpo_num_steps)
            weights[row, :length] = torch.tensor([chosen.get(step, 0.0) for step in row_steps])
        selected = (weights > 0) & completion_mask.bool()
        logps, entropies = self._exact_logps(
            model, input_ids, attention_mask, prompt_width, score_mask=selected.long(), records=records
        )
        sampling = self._recorded(records, "logprobs", width=width)
        weighted = weights * logps + (1 - weights) * logps.detach()  # value log p, gradient weight * grad log p
        return torch.where(selected, weighted, sampling + 0.0 * logps), entropies

    def _diffu_grpo_logps(self, model, input_ids, attention_mask, prompt_width):
        """d1's estimator, one forward per row. In TRL's old/reference passes right after a rollout, the log-probs
        under every inner iteration's mask seed are computed and kept; the first iteration's are returned, and
        `_compute_loss` swaps in those of the iteration being trained."""
        rows_per_forward = max(1, self.args.logprob_chunk_size // 4)
        num_forwards = self._max_across_sharded_ranks(-(-input_ids.size(0) // rows_per_forward))
        completion_mask = attention_mask[:, prompt_width:].bool()

        def under_seed(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
            canvas, canvas_mask = one_step_canvas(
                input_ids[:, :prompt_width],
                attention_mask[:, :prompt_width],
                self.max_completion_length,
                self.special_tokens.mask_id,
                self.args.p_mask_prompt,
                torch.Generator().manual_seed(seed),
            )
            score = partial(
                score_one_step,
                prompt_width=prompt_width - self.special_tokens.logit_shift,
                mask_id=self.special_tokens.mask_id,
                temperature=self.temperature,
                rows_per_forward=rows_per_forward,
                num_forwards=num_forwards,
                autocast=self.accelerator.autocast,
            )
            logps, entropies = self._call_model(model, score, canvas, canvas_mask, input_ids[:, prompt_width:])
            return logps.masked_fill(~completion_mask, 0.0), entropies.masked_fill(~completion_mask, 0.0)

        if not torch.is_grad_enabled() and self.model.training and self.num_iterations > 1:
            per_seed = [under_seed(seed) for seed in self._diffu_seeds]
            self._diffu_stash.append(torch.stack([logps for logps, _ in per_seed], dim=1))  # [B, mu, T]
            return per_seed[0]
        return under_seed(self._diffu_seeds[self._diffu_iteration])

    def _generate_and_score_completions(self, inputs):
        """TRL's generation step; for diffu-GRPO with several inner iterations, also the old and reference log-probs
        under each iteration's mask seed, as `[B, mu, T]` tensors that TRL splits with the batch."""
        self._diffu_stash, self._diffu_iteration = [], 0
        output = super()._generate_and_score_completions(inputs)
        stash = list(self._diffu_stash)
        for key in ("old_per_token_logps", "ref_per_token_logps"):  # the order TRL computes them in
            if stash and output.get(key) is not None:
                output[f"{key}_per_iteration"] = stash.pop(0)
        return output

    # ------------------------------------------------------------------ loss

    def _why_not_chunked_backward(self) -> str | None:
        """Why `chunked_backward` cannot run with these settings (None when it can): the loss must be a sum of
        per-token terms, and each chunk's backward must be a plain (or DDP) backward."""
        args = self.args
        reasons = {
            "chunked_backward=False": not args.chunked_backward,
            f"estimator={args.estimator!r}": args.estimator != "ar_exact",
            "importance_sampling_level='sequence'": self.importance_sampling_level != "token",
            f"loss_type={self.loss_type!r}": self.loss_type not in SEPARABLE_LOSS_TYPES,
            "off_policy_mask_threshold is set": self.off_policy_mask_threshold is not None,
            "an entropy mask from the current entropies (top_entropy_quantile < 1 without justgrpo_fast)": (
                self.top_entropy_quantile < 1.0 and not args.justgrpo_fast
            ),
            "an entropy bonus": self._entropy_bonus_enabled,
            "a router auxiliary loss": self.aux_loss_enabled,
            "DeepSpeed, whose backward also steps": self.is_deepspeed_enabled,
            "FSDP": self.is_fsdp_enabled,
            "torch.nn.DataParallel (n_gpu > 1)": args.n_gpu > 1,
        }
        blockers = [reason for reason, applies in reasons.items() if applies]
        return ", ".join(blockers) or None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss. Under `chunked_backward` (training, where it applies) the gradient of every scoring chunk but
        the last has already been accumulated when this returns; the returned loss, whose value is TRL's, carries
        the last chunk's gradient for the Trainer's own `backward`."""
        chunked = self._chunked_backward_blocker is None and self.model.training and torch.is_grad_enabled()
        if return_outputs or not chunked or "tool_mask" in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return self._chunked_backward_loss(model, inputs)

    def _chunked_backward_loss(self, model, inputs) -> torch.Tensor:
        """Score and backpropagate chunk by chunk (`chunked_backward.py`), then run TRL's `_compute_loss` once on the
        scored values, without gradient, for the loss value and metrics; the two losses must agree."""
        prompt_width = inputs["prompt_ids"].size(1)
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        canvases, entropies_override, fast_mask = self._ar_canvases(input_ids, attention_mask, prompt_width)
        token_loss = self._token_loss(inputs, policy_mask=fast_mask)
        score = partial(
            target_logps,
            mask_id=self.special_tokens.mask_id,
            temperature=self.temperature,
            autocast=self.accelerator.autocast,
        )

        def forward(chunk):
            logps, entropies = self._call_model(
                model, score, chunk.input_ids, chunk.attention_mask, chunk.positions, chunk.targets[:, None]
            )
            return logps[:, 0], entropies[:, 0]

        logps, entropies, value, last = backward_chunk_by_chunk(
            forward, canvases, token_loss, self.accelerator.backward, partial(self.accelerator.no_sync, model)
        )
        self._scored = (logps, entropies if entropies_override is None else entropies_override)
        try:
            with torch.no_grad():
                loss = self._compute_loss(model, inputs)
        finally:
            self._scored = None
        if not torch.isclose(value, loss, rtol=1e-4, atol=1e-5) and torch.isfinite(loss):
            raise RuntimeError(
                f"chunked_backward's loss ({value.item():.6g}) differs from TRL's _compute_loss ({loss.item():.6g}) "
                "on the same log-probs: this TRL version computes the loss differently. Set chunked_backward=False."
            )
        return loss.detach() + (last - last.detach())

    def _token_loss(self, inputs, policy_mask: torch.Tensor | None = None) -> TokenLoss:
        """This micro-batch's loss as TRL's `_compute_loss` would compute it, term by term (`chunked_backward.py`)."""
        return TokenLoss(
            loss_type=self.loss_type,
            weights=loss_weights(
                self.loss_type,
                inputs["completion_mask"],
                accumulation_steps=self.current_gradient_accumulation_steps,
                max_completion_length=self.max_completion_length,
                num_items_in_batch=inputs.get("num_items_in_batch"),
                num_processes=self.accelerator.num_processes,
                steps_per_generation=self.args.steps_per_generation,
            ),
            advantages=inputs["advantages"],
            old_logps=inputs.get("old_per_token_logps"),
            ref_logps=inputs.get("ref_per_token_logps"),
            policy_mask=policy_mask,
            epsilon_low=self.epsilon_low,
            epsilon_high=self.epsilon_high,
            delta=self.args.delta,
            beta=self.beta,
            bias_corrected_kl=self.args.use_bias_correction_kl,
            sapo_temperature_pos=self.args.sapo_temperature_pos,
            sapo_temperature_neg=self.args.sapo_temperature_neg,
        )

    def _compute_loss(self, model, inputs):
        """TRL's loss; for diffu-GRPO, under the current inner iteration's mask seed and its old/ref log-probs."""
        if self.args.estimator != "diffu_grpo":
            return super()._compute_loss(model, inputs)
        self._diffu_iteration = (self._step // self.args.steps_per_generation) % self.num_iterations
        inputs = dict(inputs)
        for key in ("old_per_token_logps", "ref_per_token_logps"):
            if f"{key}_per_iteration" in inputs:
                inputs[key] = inputs[f"{key}_per_iteration"][:, self._diffu_iteration]
        return super()._compute_loss(model, inputs)

    def _rollout_rows(self, input_ids, attention_mask, prompt_width) -> list[dict | None]:
        """What this trainer's rollout recorded for each row of a batch (None for rows with nothing to score)."""
        lengths = attention_mask[:, prompt_width:].sum(1).tolist()
        records = []
        for ids, mask, length in zip(input_ids.tolist(), attention_mask.tolist(), lengths):
            prompt = tuple(t for t, m in zip(ids[:prompt_width], mask[:prompt_width]) if m)
            key = (prompt, tuple(ids[prompt_width : prompt_width + length]))
            if length and key not in self._rollouts:
                raise RuntimeError(
                    f"estimator={self.args.estimator!r} (justgrpo_fast={self.args.justgrpo_fast}) needs what the "
                    "rollout recorded, but this completion was not sampled by this trainer's rollout."
                )
            records.append(self._rollouts.get(key) if length else None)
        return records

    def _recorded(self, records, name: str, width: int, dtype=torch.float32, fill=0) -> torch.Tensor:
        """One recorded per-token list per row (empty for rows without a record) as a `[B, width]` tensor."""
        return self._pad_lists([[] if r is None else r[name] for r in records], width, dtype=dtype, fill=fill)

    def _max_across_sharded_ranks(self, count: int) -> int:
        """Under ZeRO-3 or FSDP each forward gathers parameters collectively, so all ranks must run as many."""
        sharded = self.is_fsdp_enabled or (
            self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        )
        if not sharded or self.accelerator.num_processes == 1:
            return count
        return int(gather(torch.tensor([count], device=self.accelerator.device)).max())

    def _take_sampling_logps(self, input_ids: torch.Tensor, width: int) -> torch.Tensor | None:
        """The rollout's log-probs, if this call is TRL's old-log-prob pass over exactly that rollout."""
        pending, self._pending_sampling_logps = self._pending_sampling_logps, None
        if pending is None or torch.is_grad_enabled():
            return None
        logps, completions = pending
        if input_ids.size(0) != len(completions):
            return None
        for row, ids in zip(input_ids[:, input_ids.size(1) - width :].tolist(), completions):
            if row[: len(ids)] != ids:
                return None
        return self._pad_lists(logps, width)

    # ------------------------------------------------------------------ reliability

    def _get_train_sampler(self, dataset=None):
        """TRL's prompt sampler, made resumable: each epoch's order depends only on (seed, epoch)."""
        sampler = super()._get_train_sampler(dataset)
        sampler.__class__ = EpochSeededRepeatSampler
        return sampler

    def training_step(self, model, inputs, num_items_in_batch):
        """TRL's step, then: agree across processes whether this micro-batch's loss was finite (a non-finite one
        cancels the optimizer step), and zero non-finite gradient entries before clipping."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.is_deepspeed_enabled:
            return loss
        if self.args.skip_nonfinite_loss_steps:
            nonfinite = torch.tensor(float(not torch.isfinite(loss).all()), device=self.accelerator.device)
            if self.accelerator.reduce(nonfinite, reduction="sum").item() > 0:
                self._skip_optimizer_step = True
        if self.args.zero_nonfinite_grads:
            self._nonfinite_grad_elements += zero_nonfinite_gradients(model.parameters())
        return loss

    def create_optimizer(self, *args, **kwargs):
        """The usual optimizer, whose `step` is skipped for an accumulation window that saw a non-finite loss."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.is_deepspeed_enabled or getattr(optimizer, "_justgrpo_guarded", False):
            return optimizer
        step = optimizer.step

        def guarded_step(*step_args, **step_kwargs):
            if self._skip_optimizer_step:
                self._skip_optimizer_step = False
                self._skipped_steps += 1
                logger.warning(f"Skipped optimizer step {self.state.global_step + 1}: a loss was not finite.")
                return None
            return step(*step_args, **step_kwargs)

        optimizer.step = guarded_step
        optimizer._justgrpo_guarded = True
        return optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's logging, plus the run-health counters (summed over processes, cumulative)."""
        if self.model.training:
            names = self._guarded_reward_names  # the same list on every process, so the reduce lines up
            counts = [self._nonfinite_grad_elements, self._skipped_steps, *(self._reward_failures[n] for n in names)]
            totals = self.accelerator.reduce(torch.tensor(counts, dtype=torch.float64, device=self.accelerator.device))
            logs["nonfinite_grad_elements"] = totals[0].item()
            logs["skipped_steps"] = totals[1].item()
            for name, total in zip(names, totals[2:].tolist()):
                logs[f"reward_failures/{name}"] = total
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        """Write the checkpoint under `tmp-checkpoint-N`, then rename it to `checkpoint-N` once complete, so a crash
        while saving never leaves a directory that `--resume_from_checkpoint` would take for a checkpoint."""
        run_dir = self._get_output_dir(trial=trial)
        step = self.state.global_step
        staging = os.path.join(run_dir, f"{STAGING_PREFIX}-{step}")
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        with staged_checkpoint_names(transformers.trainer, trl.trainer.grpo_trainer):
            super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish_checkpoint(staging, final)
            if self.state.best_model_checkpoint == staging:
                self.state.best_model_checkpoint = final
        self.accelerator.wait_for_everyone()
