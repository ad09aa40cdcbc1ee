"""Run one evaluation: load the task and the model, decode every sample once (sharded over processes), grade, gather.

Samples are numbered `index = problem_index * n + sample_index`; process `r` of `w` decodes the indices `i` with
`i % w == r`, in batches of distinct prompts. The main process gathers every record (`accelerate.utils.gather_object`),
checks that each index came back exactly once, and writes `summary.json` and `samples.jsonl`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..decoding import REMASKING_STRATEGIES, DecodeOutput, ar_decode, block_decode, eb_decode
from ..models import SpecialTokens, apply_chat_template_fix, get_spec, resolve_special_tokens
from ..passk import parse_ks
from .tasks import Grader, Problem, load_problems

logger = logging.getLogger(__name__)

DECODERS = ("ar", "block", "eb")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class EvalConfig:
    """Everything that defines an evaluation run. The defaults are the paper's protocol: LLaDA's block decoding with
    low-confidence remasking, greedy, block length 32, steps = gen length."""

    task: str = field(
        default="gsm8k",
        metadata={"help": "gsm8k, math500, humaneval, mbpp, or a local .jsonl/.json file (layout read from columns)."},
    )
    model: str = field(default="GSAI-ML/LLaDA-8B-Instruct", metadata={"help": "Model id or local checkpoint."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer id or path; defaults to --model."})
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Override the task's hub dataset (e.g. ankner/math-500) or give a local file in its layout."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Dataset config name (e.g. 'sanitized' for MBPP); defaults to the task's."}
    )
    split: str | None = field(default=None, metadata={"help": "Dataset split; defaults to the task's ('test')."})
    task_format: str = field(
        default="auto",
        metadata={"help": "How to read a local --task file: 'auto' (from its columns) or a task name (gsm8k, ...)."},
    )
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "str.format template over the row's columns replacing the task's prompt, e.g. '{question}'."
        },
    )
    chat_template: bool = field(
        default=True, metadata={"help": "Wrap prompts in the tokenizer's chat template (turn off for base models)."}
    )
    limit: int | None = field(default=None, metadata={"help": "Evaluate the first N problems only."})
    decoder: str = field(
        default="block",
        metadata={
            "help": "'ar' (autoregressive order), 'block' (LLaDA semi-AR), or 'eb' (entropy-bounded).",
            "choices": list(DECODERS),
        },
    )
    gen_length: int = field(default=256, metadata={"help": "Generation length (masked slots on the canvas)."})
    block_length: int | None = field(
        default=32,
        metadata={
            "help": "Block length for 'block' and 'eb'; none (or = gen_length) decodes the canvas as one block."
        },
    )
    steps: int | None = field(
        default=None,
        metadata={"help": "Denoising steps for 'block' (multiple of the block count); default gen_length."},
    )
    gamma: float = field(default=0.1, metadata={"help": "Entropy budget of the EB sampler per step."})
    remasking: str = field(
        default="low_confidence",
        metadata={"help": "Which predictions a 'block' step keeps.", "choices": list(REMASKING_STRATEGIES)},
    )
    cfg_scale: float = field(default=0.0, metadata={"help": "Classifier-free guidance scale ('block', 'eb')."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 is greedy."})
    early_stop: bool = field(
        default=False,
        metadata={"help": "Stop decoding a row once its answer is final ('block', 'eb'); exact at temperature 0."},
    )
    n: int = field(default=1, metadata={"help": "Samples per problem."})
    k: str | None = field(default=None, metadata={"help": "pass@k values, e.g. '1,4,16'; default 1, 2, 4, ..., n."})
    batch_size: int = field(default=8, metadata={"help": "Samples decoded together per process."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling noise (per batch: seed and first index)."})
    dtype: str = field(default="auto", metadata={"help": "'auto' (bf16 on GPU, fp32 on CPU), bfloat16, float32."})
    cpu: bool = field(default=False, metadata={"help": "Run on CPU even when a GPU is available."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow hub code (families without a native class)."}
    )
    output_dir: str = field(default="eval_results", metadata={"help": "Where summary.json and samples.jsonl go."})
    plot: bool = field(default=False, metadata={"help": "Also draw pass@k and accuracy-vs-NFE plots (PNG)."})
    save_token_stats: bool = field(
        default=False,
        metadata={"help": "Store token ids, entropies, log-probs and unmask steps of every sample in samples.jsonl."},
    )
    math_timeout: float = field(default=5.0, metadata={"help": "Seconds per math answer comparison."})
    code_timeout: float = field(default=10.0, metadata={"help": "Seconds per sandboxed program."})
    grading_workers: int | None = field(default=None, metadata={"help": "Programs run at once (default: all cores)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar with the running accuracy."})

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"--decoder must be one of {DECODERS}, got {self.decoder!r}.")
        if self.n < 1 or self.batch_size < 1 or self.gen_length < 1:
            raise ValueError("--n, --batch_size and --gen_length must be >= 1.")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}.")
        if self.decoder == "ar" and self.cfg_scale > 0:
            raise ValueError("Classifier-free guidance is available with the 'block' and 'eb' decoders only.")
        if self.decoder in ("block", "eb") and self.gen_length % self.resolved_block_length != 0:
            raise ValueError(
                f"--gen_length {self.gen_length} must be divisible by --block_length {self.block_length}."
            )
        if self.decoder == "block":
            num_blocks = self.gen_length // self.resolved_block_length
            if self.resolved_steps % num_blocks != 0:
                raise ValueError(f"--steps {self.resolved_steps} must be a multiple of the {num_blocks} blocks.")
        parse_ks(self.k, self.n)  # fails early when a k exceeds --n

    @property
    def resolved_block_length(self) -> int:
        return self.block_length or self.gen_length

    @property
    def resolved_steps(self) -> int:
        return self.steps or self.gen_length

    @property
    def ks(self) -> list[int]:
        return parse_ks(self.k, self.n)

    def describe(self) -> dict[str, Any]:
        """The full configuration, with the values actually used for the defaults that depend on others."""
        described = asdict(self)
        described.update(block_length=self.resolved_block_length, steps=self.resolved_steps, k=self.ks)
        return described


@dataclass
class EvalResult:
    """What `evaluate` returns on the main process: the summary and every sample's record, in index order."""

    summary: dict[str, Any]
    records: list[dict[str, Any]]


# --------------------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------------------


def shard_indices(total: int, rank: int, world_size: int) -> list[int]:
    """The sample indices process `rank` decodes: every `world_size`-th, so shards differ by at most one."""
    return list(range(rank, total, world_size))


def merge_shards(records: Sequence[dict[str, Any]], total: int) -> tuple[list[dict[str, Any]], int]:
    """Records gathered from all processes, deduplicated by `index` and sorted; fails unless every index in
    `range(total)` is present. Returns the records and the number of duplicates dropped."""
    by_index: dict[int, dict[str, Any]] = {}
    for record in records:
        by_index.setdefault(int(record["index"]), record)
    missing = sorted(set(range(total)) - set(by_index))
    unexpected = sorted(set(by_index) - set(range(total)))
    if missing or unexpected:
        raise RuntimeError(
            f"Gathered samples do not cover the run: missing {missing[:20]}, unexpected {unexpected[:20]}."
        )
    return [by_index[i] for i in range(total)], len(records) - len(by_index)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def load_model_and_tokenizer(config: EvalConfig, device: torch.device):
    """The model (through the Auto classes, which map LLaDA to the native class) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        config.model, dtype=resolve_dtype(config.dtype, device), trust_remote_code=config.trust_remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(
        config.tokenizer or config.model, trust_remote_code=config.trust_remote_code
    )
    return model.to(device).eval().requires_grad_(False), tokenizer


def encode_prompts(problems: Sequence[Problem], tokenizer, chat_template: bool) -> list[list[int]]:
    """Token ids of each problem's prompt: a user turn in the chat template plus the assistant header (the template
    writes BOS itself), or the raw text with the tokenizer's special tokens."""
    encoded = []
    for problem in problems:
        if chat_template and getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": problem.prompt}]
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            encoded.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            encoded.append(tokenizer(problem.prompt)["input_ids"])
    return encoded


def run_decoder(
    config: EvalConfig,
    model,
    prompts: Sequence[Sequence[int]],
    tokens: SpecialTokens,
    generator: torch.Generator | None,
) -> DecodeOutput:
    """Decode a batch of prompts with the configured sampler."""
    common = dict(
        gen_length=config.gen_length, temperature=config.temperature, generator=generator, **tokens.decode_kwargs()
    )
    if config.decoder == "ar":
        return ar_decode(model, prompts, **common)
    if config.decoder == "block":
        return block_decode(
            model,
            prompts,
            block_length=config.resolved_block_length,
            steps=config.resolved_steps,
            remasking=config.remasking,
            cfg_scale=config.cfg_scale,
            early_stop=config.early_stop,
            **common,
        )
    return eb_decode(
        model,
        prompts,
        gamma=config.gamma,
        block_length=config.resolved_block_length,
        cfg_scale=config.cfg_scale,
        early_stop=config.early_stop,
        **common,
    )


def _batch_generator(config: EvalConfig, device: torch.device, first_index: int) -> torch.Generator | None:
    """Sampling noise seeded by the run's seed and the batch's first sample, so runs are reproducible."""
    if config.temperature == 0 and not (config.decoder == "block" and config.remasking == "random"):
        return None
    return torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + first_index)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _record(
    config: EvalConfig, index: int, problem: Problem, output: DecodeOutput, row: int, text: str, grade, rank: int, stop
) -> dict[str, Any]:
    ids, entropies = output.completion_ids[row], output.entropies[row]
    record = {
        "index": index,
        "problem_index": index // config.n,
        "sample_index": index % config.n,
        "problem_id": problem.problem_id,
        "rank": rank,
        "prompt": problem.prompt,
        "completion": text,
        "prediction": grade.prediction,
        "gold": grade.gold,
        "correct": grade.correct,
        "correct_reference": grade.reference_correct,
        "gradable": grade.gradable,
        "num_tokens": len(ids),
        "stopped": bool(ids) and ids[-1] in stop,
        "nfe": output.row_nfe[row] if output.row_nfe else output.nfe,
        "mean_entropy": sum(entropies) / len(entropies) if entropies else 0.0,
    }
    if config.save_token_stats:
        record.update(
            token_ids=ids,
            entropies=entropies,
            logprobs=output.logprobs[row],
            unmask_steps=output.unmask_steps[row] if output.unmask_steps else list(range(len(ids))),
        )
    return record


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------


def partial_state(config: EvalConfig):
    """accelerate's process state; on a machine without CUDA (or with `--cpu`) processes talk over gloo."""
    from accelerate import PartialState

    return PartialState(cpu=config.cpu or not torch.cuda.is_available())


def evaluate(config: EvalConfig, model=None, tokenizer=None, state=None) -> EvalResult | None:
    """Evaluate `config` and write its outputs; returns the result on the main process, `None` on the others.

    `model` and `tokenizer` may be given (already on the right device) to reuse them across runs.
    """
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from .report import build_summary, plot_run, write_outputs

    state = state or partial_state(config)
    if config.temperature == 0 and config.n > 1 and config.remasking != "random":
        logger.warning("--n %d with greedy decoding: every sample of a problem is the same.", config.n)
    spec, problems = load_problems(
        config.task,
        dataset=config.dataset,
        dataset_config=config.dataset_config,
        split=config.split,
        task_format=config.task_format,
        prompt_template=config.prompt_template,
        limit=config.limit,
    )
    if model is None:
        model, tokenizer = load_model_and_tokenizer(config, state.device)
    device = next(model.parameters()).device
    family = get_spec(model)
    apply_chat_template_fix(family, tokenizer)
    tokens = resolve_special_tokens(family, tokenizer, model.config)
    prompt_ids = encode_prompts(problems, tokenizer, config.chat_template)
    if any(tokens.mask_id in ids for ids in prompt_ids):
        raise ValueError("A prompt contains the mask token, which the samplers would read as a slot to fill.")

    total = len(problems) * config.n
    local = shard_indices(total, state.process_index, state.num_processes)
    grader = Grader(spec.kind, config.math_timeout, config.code_timeout, config.grading_workers)
    stop = set(tokens.stop_ids)
    records: list[dict[str, Any]] = []
    decode_seconds, forward_passes, correct = 0.0, 0, 0
    bar = tqdm(
        total=len(local),
        desc=f"{spec.name} [{config.decoder}]",
        disable=not (state.is_main_process and config.progress),
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    for start in range(0, len(local), config.batch_size):
        batch = local[start : start + config.batch_size]
        batch_problems = [problems[i // config.n] for i in batch]
        generator = _batch_generator(config, device, batch[0])
        _synchronize(device)
        tick = time.perf_counter()
        output = run_decoder(config, model, [prompt_ids[i // config.n] for i in batch], tokens, generator)
        _synchronize(device)
        decode_seconds += time.perf_counter() - tick
        forward_passes += output.nfe
        texts = tokenizer.batch_decode(output.completion_ids, skip_special_tokens=True)
        grades = grader(batch_problems, texts)
        for row, (index, problem, text, grade) in enumerate(zip(batch, batch_problems, texts, grades)):
            records.append(_record(config, index, problem, output, row, text, grade, state.process_index, stop))
            correct += grade.correct
        bar.update(len(batch))
        bar.set_postfix(acc=f"{correct / len(records):.3f}")
    bar.close()
    stats = {
        "rank": state.process_index,
        "num_samples": len(local),
        "decode_seconds": decode_seconds,
        "forward_passes": forward_passes,
        "wall_seconds": time.perf_counter() - started,
    }
    gathered, all_stats = gather_object(records), gather_object([stats])
    result = None
    if state.is_main_process:
        merged, duplicates = merge_shards(gathered, total)
        summary = build_summary(config, spec, len(problems), merged, all_stats, tokens, duplicates)
        write_outputs(config.output_dir, summary, merged)
        if config.plot:
            summary["plots"] = plot_run(summary, config.output_dir)
        result = EvalResult(summary=summary, records=merged)
    state.wait_for_everyone()
    return result
