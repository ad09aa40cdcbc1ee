"""`JustGRPOConfig`: `GRPOConfig` plus the options of RL on diffusion LMs (kept beside the trainer, as TRL keeps
`grpo_config.py` beside `grpo_trainer.py`).

The config names its estimator by string and imports none of them: each estimator validates the options it owns
(`Estimator.check_config`) when the trainer looks it up (`estimators.estimator_for`), before any model is loaded.
The choices are the keys of `estimators.ESTIMATORS`.
"""

import dataclasses
from dataclasses import dataclass, field

from transformers.utils import logging
from trl import GRPOConfig

from .cache_correction import ImportanceCorrection
from .cached_decoding import RolloutCache
from .reliability import REWARD_ERROR_POLICIES

logger = logging.get_logger(__name__)
OBJECTIVES = ("trl", "paper", "paper_early_stop")
AGRPO_OBJECTIVES = ("trl", "reference")


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
    objective: str = field(
        default="trl",
        metadata={
            "help": "The training objective of estimator='ar_exact'. 'trl' (default): TRL's `loss_type` normaliser on "
            "the tokens up to each completion's first stop token (rollouts stop there). 'paper': the JustGRPO "
            "reference's `grpo.py` exactly: rollouts decode all max_completion_length slots (no early stop), every "
            "slot is trained, the tokens after the first stop token included, and each token's term is weighted "
            "1 / L / n_valid, n_valid being the number of samples with a non-zero advantage in the generation "
            "batch, per micro-batch of per_device_train_batch_size samples (the reference counts its own per "
            "accumulation step), averaged over processes (n_valid = 0: zero loss); rewards still "
            "see each completion up to its first stop token. 'paper_early_stop': the efficient mode, the paper's "
            "1 / L / n_valid weighting on the tokens up to the first stop token, with rollouts that stop there. "
            "The 'paper*' objectives need beta=0, a clipped loss_type and token-level importance sampling."
        },
    )
    agrpo_step_sampler: str = field(
        default="stratified",
        metadata={
            "help": "agrpo: how the agrpo_num_steps steps are sampled. 'stratified' (default): one uniform step per "
            "stratum of near-equal size, without replacement (every step when K >= the number of steps). 'entropy': "
            "the authors' recipe, K draws with replacement, probability proportional to the step's summed sampling "
            "entropy, low-discrepancy uniforms. Both are unbiased."
        },
    )
    agrpo_objective: str = field(
        default="trl",
        metadata={
            "help": "agrpo: 'trl' (default): TRL's loss_type on the tokens up to each completion's first stop token. "
            "'reference': the AGRPO authors' objective: the whole canvas is trained (rewards still see each "
            "completion up to its first stop token); each row averages over its denoising steps 0..T (T: the last "
            "step that unmasked a token other than the end-of-text fill), weight 1 / (T + 1) on every token unmasked "
            "at those steps (end-of-text tokens included, later ones excluded), summed over rows and divided by "
            "num_generations. Pair it with scale_rewards='none' for the reference's advantage r - mean."
        },
    )
    justgrpo_fast: bool = field(
        default=False,
        metadata={
            "help": "JustGRPO-Fast: train only on the `top_entropy_quantile` highest-entropy positions (the paper "
            "uses 0.25), chosen by the entropies recorded during the rollout, and never compute the other positions. "
            "Needs top_entropy_quantile < 1, beta = 0 and no entropy bonus."
        },
    )

    rollout_cache: str | None = field(
        default=None,
        metadata={
            "help": "estimator='ar_exact': an approximate key/value cache for the AR rollouts (cached_decoding.py). "
            "None (default): the exact rollout, one full-canvas forward per token. 'dual': prompt, decoded tokens "
            "and masked suffix cached, only the newest slots computed between refreshes (4x faster rollouts at "
            "r=4 on the 50m benchmark shape, per-token KL 0.002 on the trained long-sort demo model). 'prefix': the "
            "masked suffix is recomputed every step (closer to exact, about 2x). Recommended when rollouts "
            "dominate: 'dual', r=4, 'recompute'. The sampling log-probs are then approximate and each token's "
            "policy term is importance-weighted (rollout_cache_importance_sampling_*); watch the logged ratio "
            "metrics, the staleness depends on the model. Not under FSDP or ZeRO-3 without "
            "ds3_gather_for_generation. docs/rollout_cache.md has the measured speed, fidelity and RL accuracy."
        },
    )
    rollout_cache_refresh: int = field(
        default=4,
        metadata={"help": "rollout_cache: a full forward (a refresh) every r tokens; 1 is the exact rollout."},
    )
    rollout_cache_update: str = field(
        default="recompute",
        metadata={
            "help": "rollout_cache: between refreshes, 'append' computes each decoded token's keys/values once, one "
            "step after it was drawn (dKV-Cache style); 'recompute' recomputes every token decoded since the last "
            "refresh at every step (Fast-dLLM style)."
        },
    )
    rollout_cache_lookahead: int = field(
        default=0,
        metadata={
            "help": "rollout_cache='dual': also recompute this many masked positions after the current slot at every "
            "step, where the cached masked suffix is the stalest part (on the long-sort demo model, 32 cut the KL "
            "4x at r=4 and r=8 for 32 more positions per step); 0 caches the whole suffix."
        },
    )
    rollout_cache_importance_sampling_correction: bool = field(
        default=True,
        metadata={
            "help": "rollout_cache with r > 1: weight each token's policy-gradient term by its importance ratio "
            "exact / sampling probability (TRL's vllm_importance_sampling_correction, for the cache). The exact "
            "log-prob is the training forward's own; no extra scoring pass."
        },
    )
    rollout_cache_importance_sampling_mode: str = field(
        default="token_truncate",
        metadata={
            "help": "'token_truncate': ratios clipped to [clip_min, clip_max]; 'token_mask': ratios outside set to 0 "
            "(TRL's vllm_importance_sampling_mode; sequence-level modes are not offered)."
        },
    )
    rollout_cache_importance_sampling_clip_max: float | None = field(
        default=3.0, metadata={"help": "Upper cap C_max of the ratio (TRL's vllm_importance_sampling_clip_max)."}
    )
    rollout_cache_importance_sampling_clip_min: float | None = field(
        default=None, metadata={"help": "Lower cap C_min of the ratio (TRL's vllm_importance_sampling_clip_min)."}
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
        if self.generation_kwargs:
            raise ValueError(
                f"generation_kwargs={self.generation_kwargs!r} is not applied by the diffusion samplers, which are "
                "not `model.generate`. Set the sampling options through temperature, top_k, top_p and min_p, and "
                "leave generation_kwargs unset."
            )
        if self.repetition_penalty != 1.0:
            raise ValueError(
                f"repetition_penalty={self.repetition_penalty} is not supported: the trainer scores each token under "
                "the model's own (temperature-scaled, truncated) distribution, and a penalty depending on the other "
                "tokens would make the sampler's and the scorer's distributions differ. Set repetition_penalty=1.0."
            )
        if self.cache_implementation is not None:
            raise ValueError(
                f"cache_implementation={self.cache_implementation!r} does not apply: bidirectional attention has no "
                "KV cache. Leave it unset."
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.agrpo_objective not in AGRPO_OBJECTIVES:
            raise ValueError(f"agrpo_objective must be one of {AGRPO_OBJECTIVES}, got {self.agrpo_objective!r}.")
        if self.rollout_cache is not None:
            self.rollout_cache_settings()  # validates kind, refresh and update
            self.rollout_cache_correction()  # validates the mode
            if self.estimator != "ar_exact":
                raise ValueError("rollout_cache applies to estimator='ar_exact' only.")
            if self.loss_type == "vespo" and self.rollout_cache_correction() is not None:
                raise ValueError(
                    "loss_type='vespo' computes its own sequence-level weights; the rollout cache's importance "
                    "correction cannot be applied to it. Use another loss type or rollout_cache=None."
                )
            if self.objective == "paper":
                raise ValueError(
                    "rollout_cache stops each row at its first stop token, and objective='paper' decodes past it: use "
                    "objective='paper_early_stop' (the same weights) or rollout_cache=None."
                )
        if self.justgrpo_fast and self.estimator != "ar_exact":
            raise ValueError("justgrpo_fast applies to estimator='ar_exact' only.")
        if self.reward_errors not in REWARD_ERROR_POLICIES:
            raise ValueError(f"reward_errors must be one of {REWARD_ERROR_POLICIES}, got {self.reward_errors!r}.")
        if self.logprob_chunk_size < 1:
            raise ValueError(f"logprob_chunk_size must be >= 1, got {self.logprob_chunk_size}.")

    def rollout_cache_settings(self) -> "RolloutCache | None":
        """The rollout cache these options describe (None: exact rollouts)."""
        if self.rollout_cache is None:
            return None
        return RolloutCache(
            self.rollout_cache, self.rollout_cache_refresh, self.rollout_cache_update, self.rollout_cache_lookahead
        )

    def rollout_cache_correction(self) -> "ImportanceCorrection | None":
        """The importance correction of cached rollouts (None: exact rollouts, r = 1, or the correction off)."""
        cache = self.rollout_cache_settings()
        if cache is None or cache.exact or not self.rollout_cache_importance_sampling_correction:
            return None
        return ImportanceCorrection(
            self.rollout_cache_importance_sampling_mode,
            self.rollout_cache_importance_sampling_clip_min,
            self.rollout_cache_importance_sampling_clip_max,
        )

    @classmethod
    def from_grpo_config(cls, args: GRPOConfig) -> "JustGRPOConfig":
        """A plain `GRPOConfig` (a TRL user's existing config or YAML) as a `JustGRPOConfig`.

        Every field keeps the value it has, except a field still at `GRPOConfig`'s default where
        `JustGRPOConfig`'s default differs (`max_completion_length`: the canvas length, 256 here): it takes
        `JustGRPOConfig`'s, and the change is logged. The options only `JustGRPOConfig` has take their defaults.
        """
        if isinstance(args, cls):
            return args
        values, changes = {}, []
        for trl_field in dataclasses.fields(GRPOConfig):
            if not trl_field.init or trl_field.name == "generation_batch_size":
                continue  # derived again from steps_per_generation, which keeps the user's generation batch
            value = getattr(args, trl_field.name)
            ours = _field_default(cls.__dataclass_fields__[trl_field.name])
            if value == _field_default(trl_field) and ours != value:
                changes.append(f"{trl_field.name}: {value!r} (GRPOConfig's default) -> {ours!r}")
                continue
            values[trl_field.name] = value
        logger.warning(
            "JustGRPOTrainer got a GRPOConfig and uses it as a JustGRPOConfig: every field keeps its value"
            + ("; at JustGRPOConfig's defaults instead: " + ", ".join(changes) if changes else "")
            + ". Pass a JustGRPOConfig to choose the diffusion options (estimator, logprob_chunk_size, ...)."
        )
        return cls(**values)


def _field_default(dataclass_field: dataclasses.Field):
    if dataclass_field.default_factory is not dataclasses.MISSING:
        return dataclass_field.default_factory()
    return dataclass_field.default
