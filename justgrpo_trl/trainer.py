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
`num_iterations`, `steps_per_generation`, entropy masking, logging) is TRL's own code. What differs between methods
lives in one strategy per method (`estimators/`: JustGRPO and its Fast variant, diffu-GRPO, AGRPO), chosen by
`JustGRPOConfig.estimator`, which also owns any objective-specific bookkeeping (decoding past the stop token, a cached
rollout's importance correction); the run-reliability features come from `RunReliabilityMixin` (`reliability.py`).
"""

from functools import partial

import torch
from accelerate.utils import gather
from transformers.utils import logging
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import _ForwardRedirection, unwrap_model_for_generation

from . import validation
from .chunked_backward import (
    ChunkBackward,
    backward_chunk_by_chunk,
    chunked_backward_blockers,
    token_loss_for,
    trl_loss_weights,
)
from .config import JustGRPOConfig
from .estimators import EstimatorContext, ScoringBatch, estimator_for
from .estimators.scoring import target_logps
from .models import apply_chat_template_fix, get_spec, resolve_special_tokens
from .reliability import RunReliabilityMixin

logger = logging.get_logger(__name__)

__all__ = ["JustGRPOConfig", "JustGRPOTrainer"]


class JustGRPOTrainer(RunReliabilityMixin, GRPOTrainer):
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

    def __init__(self, model, reward_funcs=None, args: GRPOConfig | None = None, *pargs, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = JustGRPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-JustGRPO")
        args = JustGRPOConfig.from_grpo_config(args)  # a TRL user's plain GRPOConfig keeps every value it set
        validation.check_supported(args)
        estimator = estimator_for(args)  # the estimator checks its own options before any model is loaded
        validation.check_trainer_kwargs(kwargs)
        validation.check_dataset(kwargs.get("train_dataset", pargs[0] if pargs else None))
        reward_funcs = self._init_run_health(reward_funcs, args)
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
        validation.check_lengths(args.max_prompt_length, self.max_completion_length, self.max_sequence_length)
        if self.is_deepspeed_enabled and (args.zero_nonfinite_grads or args.skip_nonfinite_loss_steps):
            logger.warning(
                "zero_nonfinite_grads / skip_nonfinite_loss_steps do not apply under DeepSpeed, which steps the "
                "optimizer inside its backward; rely on DeepSpeed's own overflow handling there."
            )
        self.estimator = estimator(
            EstimatorContext(
                args=args,
                tokens=self.special_tokens,
                device=self.accelerator.device,
                autocast=self.accelerator.autocast,
                sync_forward_count=self._max_across_sharded_ranks,
                high_entropy_mask=self.get_high_entropy_mask,
                gather=self.accelerator.gather,
                loss_weights=partial(trl_loss_weights, self),
                rollout_all_done=self._all_sharded_ranks_done if self._forwards_are_collective() else None,
                policy_logps=self._policy_logps,
                log_metric=lambda name, value: self._metrics["train" if self.model.training else "eval"][name].append(
                    value
                ),
            )
        )
        self._forward_redirection = _ForwardRedirection()
        self._scored: tuple[torch.Tensor, torch.Tensor] | None = None
        self._chunked_backward_blocker = chunked_backward_blockers(self, self.estimator.chunkable)
        if args.chunked_backward and self._chunked_backward_blocker:
            logger.info(
                f"chunked_backward does not apply ({self._chunked_backward_blocker}); scoring chunks are "
                "checkpointed and backpropagated together."
            )

    # ------------------------------------------------------------------ rollouts

    def _tokenize_prompts(self, prompts: list):
        """TRL's tokenisation, then the prompt checks: empty prompts, and `max_prompt_length`."""
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        validation.limit_prompt_lengths(prompt_ids, self.args.max_prompt_length, self.args.prompt_truncation)
        return prompt_ids, images, multimodal_fields

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """Sample completions with the estimator's sampler (AR order for JustGRPO) and keep what scoring will need;
        returns `(completion_ids, logprobs)` lists as TRL expects."""
        if images is not None or multimodal_fields:
            raise ValueError("JustGRPOTrainer supports text-only prompts.")
        validation.check_rollout_prompts(
            prompt_ids, self.special_tokens.mask_id, self.max_completion_length, self.max_sequence_length
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
            output = self.estimator.rollout(unwrapped_model, prompt_ids, self.temperature)
        self.estimator.keep_sampling_logps(output, self.model.training)
        return self.estimator.completions_for_trl(output)

    def _generate(self, prompts: list):
        """TRL's `_generate`, with the whole canvases back where the estimator decodes past the stop token."""
        return self.estimator.restore_past_stop(super()._generate(prompts))

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards, on the completions as the estimator has them rewarded (up to the first stop token)."""
        ids = self.estimator.rewarded_ids(completion_ids_list)
        return super()._calculate_rewards(inputs, prompts, completions, ids)

    def _generate_and_score_completions(self, inputs):
        """TRL's generation step, bracketed by the estimator's per-generation-batch hooks."""
        self.estimator.start_generation_batch()
        return self.estimator.finish_generation_batch(super()._generate_and_score_completions(inputs))

    # ------------------------------------------------------------------ log-probs

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
        softmax, as in the rollout. The other estimators are documented in `estimators/`.
        """
        if any(value is not None for value in multimodal_inputs.values()):
            raise ValueError("JustGRPOTrainer supports text-only inputs.")
        if self._scored is not None:  # `_chunked_backward_loss` already scored this batch
            (logps, entropies), self._scored = self._scored, None
            return logps, (entropies if compute_entropy else None), (logps.new_zeros(()) if compute_aux_loss else None)
        cached = self.estimator.take_sampling_logps(input_ids, logits_to_keep)
        if cached is not None:
            return cached, None, None
        prompt_width = input_ids.size(1) - logits_to_keep
        batch = ScoringBatch(input_ids, attention_mask, prompt_width, self.temperature, self.model.training)
        logps, entropies = self.estimator.logps(partial(self._call_model, model), batch)
        aux_loss = logps.new_zeros(()) if compute_aux_loss else None
        return logps, (entropies if compute_entropy else None), aux_loss

    def _policy_logps(self, inputs) -> torch.Tensor:
        """A micro-batch's log-probs under the policy, scored once: TRL's `_compute_loss` takes them from `_scored`."""
        if self._scored is None:
            batch = ScoringBatch.from_inputs(inputs, self.temperature, self.model.training)
            width = inputs["completion_ids"].size(1)
            self._scored = self._get_per_token_logps_and_entropies(
                self.model_wrapped, batch.input_ids, batch.attention_mask, width, compute_entropy=True
            )[:2]
        return self._scored[0]

    def _call_model(self, model, function, *args):
        """Run `function(unwrapped_module, *args)` through one pass of the DDP/DeepSpeed wrapper's forward, however
        many forwards of the module it makes inside."""
        unwrapped = self.accelerator.unwrap_model(model)
        if unwrapped is model:
            return function(unwrapped, *args)
        return self._forward_redirection(model, unwrapped, partial(function, unwrapped), *args)

    def _forwards_are_collective(self, generation: bool = True) -> bool:
        """Under FSDP, and under ZeRO-3 (in generation, unless its weights are gathered for it), every forward
        gathers parameters collectively, so every rank must run as many forwards."""
        if self.accelerator.num_processes == 1:
            return False
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        gathered = generation and self.args.ds3_gather_for_generation
        return self.is_fsdp_enabled or (zero3 and not gathered)

    def _max_across_sharded_ranks(self, count: int) -> int:
        """The largest forward count over the ranks whose forwards are collective (`count` elsewhere)."""
        if not self._forwards_are_collective(generation=False):
            return count
        return int(gather(torch.tensor([count], device=self.accelerator.device)).max())

    def _all_sharded_ranks_done(self, done_here: bool) -> bool:
        """Whether every rank has finished its rollout (one collective call per decoding step on every rank)."""
        pending = torch.tensor([0.0 if done_here else 1.0], device=self.accelerator.device)
        return self.accelerator.reduce(pending, reduction="sum").item() == 0

    # ------------------------------------------------------------------ loss

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
        loss_inputs = self.estimator.loss_inputs(inputs, self._inner_iteration())
        plan = self.estimator.plan(ScoringBatch.from_inputs(inputs, self.temperature, self.model.training))
        token_loss = token_loss_for(self, loss_inputs, plan.policy_mask, plan.token_weights)
        score = partial(
            target_logps,
            mask_id=self.special_tokens.mask_id,
            temperature=self.temperature,
            autocast=self.accelerator.autocast,
            sampling=self.estimator.sampling,
        )

        def forward(chunk):
            logps, entropies = self._call_model(
                model, score, chunk.input_ids, chunk.attention_mask, chunk.positions, chunk.targets[:, None]
            )
            return logps[:, 0], entropies[:, 0]

        engine = ChunkBackward.for_accelerator(self.accelerator, model)
        logps, entropies, value, last = backward_chunk_by_chunk(
            forward, plan.canvases, token_loss, engine.backward, engine.no_sync, engine.num_chunks(len(plan.canvases))
        )
        self._scored = (logps, entropies if plan.entropies is None else plan.entropies)
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

    def _token_loss(self, inputs, policy_mask: torch.Tensor | None = None):
        """This micro-batch's loss as TRL's `_compute_loss` would compute it, term by term (`chunked_backward.py`)."""
        return token_loss_for(self, inputs, policy_mask)

    def _compute_loss(self, model, inputs):
        """TRL's loss, through the estimator (which may adjust its inputs or replace it), at the inner iteration
        (of `num_iterations`) being trained."""
        return self.estimator.compute_loss(partial(super()._compute_loss, model), inputs, self._inner_iteration())

    def _inner_iteration(self) -> int:
        """The inner iteration (of `num_iterations`) the current micro-batch trains."""
        return (self._step // self.args.steps_per_generation) % self.num_iterations
