"""Estimators: one strategy per method of RL on diffusion LMs, selected by `JustGRPOConfig.estimator`.

| estimator | module | rollout | per-token log-probs |
|---|---|---|---|
| `ar_exact` (JustGRPO, -Fast) | `ar_exact.py` | AR order | exact, AR-order canvases |
| `diffu_grpo` (d1) | `diffu_grpo.py` | block decoding | one forward, completion masked, prompt masked at random |
| `agrpo` | `agrpo.py` | block decoding | exact, in the sampler's own states, sampled steps |

The protocol is `base.Estimator`; the shared forwards are in `scoring.py`. A new estimator is one module with an
`Estimator` subclass, plus one line in `ESTIMATORS`. The config names an estimator by string and imports none of
them; the trainer looks it up (`estimator_for`), and the estimator checks the options it owns (`check_config`).
"""

from typing import TYPE_CHECKING

from .agrpo import AGRPO, entropy_step_weights, stratified_step_weights
from .ar_exact import ARExact
from .base import Estimator, EstimatorContext, ScoringBatch, ScoringPlan
from .diffu_grpo import DiffuGRPO
from .scoring import score_canvases, score_one_step, target_logps

if TYPE_CHECKING:
    from ..config import JustGRPOConfig

ESTIMATORS: dict[str, type[Estimator]] = {
    ARExact.name: ARExact,
    DiffuGRPO.name: DiffuGRPO,
    AGRPO.name: AGRPO,
}


def estimator_for(args: "JustGRPOConfig") -> type[Estimator]:
    """The estimator class `args.estimator` names, after it checked the options it owns (`Estimator.check_config`)."""
    if args.estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {tuple(ESTIMATORS)}, got {args.estimator!r}.")
    estimator = ESTIMATORS[args.estimator]
    estimator.check_config(args)
    return estimator


__all__ = [
    "AGRPO",
    "ESTIMATORS",
    "ARExact",
    "DiffuGRPO",
    "Estimator",
    "EstimatorContext",
    "ScoringBatch",
    "ScoringPlan",
    "entropy_step_weights",
    "estimator_for",
    "score_canvases",
    "score_one_step",
    "stratified_step_weights",
    "target_logps",
]
