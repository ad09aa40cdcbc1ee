"""The samplers against rigged models whose logits come from fixed tables (exact unmask order, schedule and NFE),
against a literal port of LLaDA's reference `generate()`, and against the trainer's AR rollout."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from justgrpo_trl.decoding import (
    ar_decode,
    block_decode,
    eb_decode,
    entropy_bounded_selection,
    get_num_transfer_tokens,
    gumbel_argmax,
    logprobs_and_entropy,
)
from justgrpo_trl.models import get_spec, resolve_special_tokens

VOCAB = 12
MASK, STOP, PAD = 11, 10, 9


class TableModel(nn.Module):
    """A rigged 'diffusion LM': the logits of generation slot j are `tables[key][j]`, whatever the canvas holds.

    `key` is the row's last prompt token, so rows of a batch can follow different tables; in the unconditional copy
    of classifier-free guidance that token is the mask, so `tables[MASK]` is the unconditional table. Every call is
    recorded, and reading logits outside the generation region fails.
    """

    def __init__(self, tables: dict[int, torch.Tensor] | torch.Tensor, gen_start: int):
        super().__init__()
        self.tables = tables if isinstance(tables, dict) else {None: tables}
        self.gen_start = gen_start
        self.anchor = nn.Parameter(torch.zeros(()))
        self.calls: list[dict] = []

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        assert input_ids.size(1) >= self.gen_start and isinstance(logits_to_keep, torch.Tensor)
        assert logits_to_keep.dim() == 2 and logits_to_keep.size(0) == input_ids.size(0)
        slots = logits_to_keep - self.gen_start
        assert bool((slots >= 0).all()), "read logits outside the generation region"
        self.calls.append({"input_ids": input_ids.clone(), "attention_mask": attention_mask, "slots": slots.clone()})
        rows = []
        for row in range(input_ids.size(0)):
            key = int(input_ids[row, self.gen_start - 1]) if None not in self.tables else None
            rows.append(self.tables[key][slots[row]])
        return SimpleNamespace(logits=torch.stack(rows))


def peaked_table(preferred: list[int], strength: list[float]) -> torch.Tensor:
    """Slot j prefers token `preferred[j]` with logit `strength[j]` (others 0): its confidence grows with it."""
    table = torch.zeros(len(preferred), VOCAB)
    for slot, (token, value) in enumerate(zip(preferred, strength)):
        table[slot, token] = value
    return table


KWARGS = dict(mask_id=MASK, stop_ids=[STOP], pad_id=PAD)


pytestmark = pytest.mark.usefixtures("single_thread")  # every test on one torch thread (see conftest)


# ---------------------------------------------------------------------------------------------------------------
# Block decoding
# ---------------------------------------------------------------------------------------------------------------


def test_get_num_transfer_tokens_matches_llada_schedule():
    schedule = get_num_transfer_tokens(torch.tensor([5, 4, 32, 3]), 3)
    assert schedule.tolist() == [[2, 2, 1], [2, 1, 1], [11, 11, 10], [1, 1, 1]]
    assert get_num_transfer_tokens(torch.tensor([2]), 4).tolist() == [[1, 1, 0, 0]]


def test_block_decode_unmasks_by_confidence_within_the_current_block():
    # gen 8, block 4, steps 6 -> 2 blocks of 3 steps unmasking [2, 1, 1] tokens. Slot 5 is the most confident of all
    # but lies in block 1, so it must wait.
    strength = [1.0, 5.0, 4.0, 3.0, 2.0, 9.0, 6.0, 0.5]
    model = TableModel(peaked_table([1, 2, 3, 4, 5, 6, 7, 8], strength), gen_start=3)
    out = block_decode(model, [[1, 2, 3]], gen_length=8, block_length=4, steps=6, **KWARGS)
    assert out.completion_ids == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert out.unmask_steps == [[2, 0, 0, 1, 4, 3, 3, 5]]
    assert out.nfe == 6 and out.row_nfe == [6] and len(model.calls) == 6
    # Only the current block's still-masked slots are read.
    read = [sorted(call["slots"][0].tolist()) for call in model.calls]
    assert read == [[0, 1, 2, 3], [0, 3], [0], [4, 5, 6, 7], [4, 7], [7]]


def test_block_decode_reference_protocol_steps_equal_gen_length_is_one_token_per_step():
    strength = [3.0, 1.0, 2.0, 4.0]
    model = TableModel(peaked_table([1, 2, 3, 4], strength), gen_start=1)
    out = block_decode(model, [[1]], gen_length=4, block_length=4, steps=4, **KWARGS)
    assert out.unmask_steps == [[1, 3, 2, 0]] and out.nfe == 4
    # More steps than tokens: the schedule's empty steps are skipped, the tokens' steps keep their schedule index.
    model.calls.clear()
    out = block_decode(model, [[1]], gen_length=4, block_length=2, steps=6, **KWARGS)
    assert get_num_transfer_tokens(torch.tensor([2]), 3).tolist() == [[1, 1, 0]]
    assert out.unmask_steps == [[0, 1, 4, 3]] and out.nfe == 4 == len(model.calls)


def test_block_decode_stops_at_the_first_stop_token_and_never_predicts_the_mask():
    table = peaked_table([1, STOP, 3, 4], [2.0, 3.0, 1.0, 4.0])
    table[:, MASK] = 50.0  # the mask token is never a prediction, however likely
    model = TableModel(table, gen_start=2)
    out = block_decode(model, [[5, 6]], gen_length=4, block_length=4, steps=4, **KWARGS)
    assert out.completion_ids == [[1, STOP]] and out.unmask_steps == [[2, 1]] and out.nfe == 4
    # early_stop: after step 2 everything up to the stop token is decoded, so the row is done after 3 forwards.
    model.calls.clear()
    early = block_decode(model, [[5, 6]], gen_length=4, block_length=4, steps=4, early_stop=True, **KWARGS)
    assert early.completion_ids == out.completion_ids and early.nfe == 3 == len(model.calls)


def test_block_decode_batches_distinct_prompts_with_their_own_tables_and_padding():
    tables = {
        3: peaked_table([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0]),
        7: peaked_table([5, 6, 7, 8], [4.0, 3.0, 2.0, 1.0]),
    }
    model = TableModel(tables, gen_start=3)
    out = block_decode(model, [[1, 2, 3], [7]], gen_length=4, block_length=2, steps=4, **KWARGS)
    assert out.completion_ids == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert out.unmask_steps == [[1, 0, 3, 2], [0, 1, 2, 3]]
    assert model.calls[0]["attention_mask"][1].tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert model.calls[0]["input_ids"][1, :2].tolist() == [PAD, PAD]


def test_block_decode_random_remasking_keeps_the_schedule():
    model = TableModel(peaked_table(list(range(1, 9)), [1.0] * 8), gen_start=1)
    outs = [
        block_decode(
            model,
            [[1]],
            gen_length=8,
            block_length=4,
            steps=4,
            remasking="random",
            generator=torch.Generator().manual_seed(seed),
            **KWARGS,
        )
        for seed in (0, 0, 1, 2, 3)
    ]
    assert outs[0].unmask_steps == outs[1].unmask_steps  # reproducible from the generator
    assert len({tuple(o.unmask_steps[0]) for o in outs}) > 1  # but the order is random
    for out in outs:
        steps = out.unmask_steps[0]
        assert sorted(steps[:4]) == [0, 0, 1, 1] and sorted(steps[4:]) == [2, 2, 3, 3]


def test_classifier_free_guidance_runs_the_unprompted_canvas_and_counts_two_evaluations():
    conditional = peaked_table([1, 2, 3], [1.0, 2.0, 3.0])
    unconditional = peaked_table([1, 2, 3], [1.0, 0.0, 5.5])
    model = TableModel({4: conditional, MASK: unconditional}, gen_start=3)
    scale = 1.0  # guided strength = un + 2 * (cond - un) = [1, 4, 0.5]: slot 1 first, then 0, then 2
    out = block_decode(model, [[4], [5, 6, 4]], gen_length=3, block_length=3, steps=3, cfg_scale=scale, **KWARGS)
    assert out.unmask_steps == [[1, 0, 2], [1, 0, 2]]
    assert out.nfe == 6 and out.row_nfe == [6, 6] and len(model.calls) == 3
    first = model.calls[0]["input_ids"]
    assert first.size(0) == 4
    assert first[2].tolist()[:3] == [PAD, PAD, MASK] and first[3].tolist()[:3] == [MASK, MASK, MASK]
    # Without guidance the conditional table alone decides.
    plain = block_decode(model, [[5, 6, 4]], gen_length=3, block_length=3, steps=3, **KWARGS)
    assert plain.unmask_steps == [[2, 1, 0]] and plain.nfe == 3


def test_gumbel_argmax_samples_the_tempered_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    assert int(gumbel_argmax(logits, 0.0)) == 0
    draws = gumbel_argmax(logits.expand(40000, 4), 0.7, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=4).double() / draws.numel()
    torch.testing.assert_close(frequencies, torch.softmax(logits.double() / 0.7, -1), atol=0.01, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Entropy-bounded sampler
# ---------------------------------------------------------------------------------------------------------------


def test_entropy_bounded_selection_on_a_hand_made_table():
    entropy = torch.tensor(
        [
            [0.05, 0.50, 0.01, 0.30, 0.02, 1.00],  # sorted .01 .02 .05 .30 .50 1: sums before = 0 .01 .03 .08 .38
            [0.90, 0.80, 0.70, 0.60, 0.50, 0.40],  # the lowest alone: the next would bring 0.4 > 0.1
            [0.00, 0.00, 0.00, 0.20, 0.00, 0.00],  # zeros are free; 0.2 is last and still allowed
            [0.50, 0.01, 0.02, 0.03, 0.04, 0.05],  # slot 1 is not a candidate: .02 .03 .04 | .05 -> sum before .09
        ]
    )
    candidates = torch.ones_like(entropy, dtype=torch.bool)
    candidates[3, 1] = False
    chosen = entropy_bounded_selection(entropy, candidates, gamma=0.1)
    assert chosen.tolist() == [
        [True, False, True, True, True, False],
        [False, False, False, False, False, True],
        [True, True, True, True, True, True],
        [False, False, True, True, True, True],
    ]
    assert not entropy_bounded_selection(entropy, torch.zeros_like(candidates), 0.1).any()
    # gamma = 0 still unmasks one token; a huge gamma unmasks every candidate.
    assert entropy_bounded_selection(entropy[1:2], candidates[1:2], 0.0).sum() == 1
    assert entropy_bounded_selection(entropy, candidates, 1e9).equal(candidates)


def table_with_entropies(targets: list[float]) -> torch.Tensor:
    """Logits whose (mask-excluded) distributions have roughly increasing entropy with `targets` (exact values are
    measured, not assumed)."""
    table = torch.zeros(len(targets), VOCAB)
    for slot, sharpness in enumerate(targets):
        table[slot, slot % (VOCAB - 3)] = sharpness
    return table


def expected_eb_steps(entropy: list[float], gamma: float, block_length: int) -> list[int]:
    """Brute-force EB schedule with canvas-independent entropies: per step, the current block's remaining slots by
    increasing entropy, the longest prefix whose sum minus its max is <= gamma."""
    steps, step = [None] * len(entropy), 0
    while None in steps:
        first = steps.index(None)
        block = range(first // block_length * block_length, (first // block_length + 1) * block_length)
        remaining = sorted((entropy[s], s) for s in block if steps[s] is None)
        for count in range(len(remaining), 0, -1):
            prefix = [h for h, _ in remaining[:count]]
            if sum(prefix) - max(prefix) <= gamma:
                for _, slot in remaining[:count]:
                    steps[slot] = step
                break
        step += 1
    return steps


@pytest.mark.parametrize(("gamma", "block_length"), [(0.5, 8), (2.0, 8), (0.0, 8), (1e9, 8), (1.0, 4)])
def test_eb_decode_unmask_order_and_nfe_follow_the_entropy_rule(gamma, block_length):
    table = table_with_entropies([9.0, 3.0, 6.0, 1.0, 8.0, 7.5, 2.0, 5.0])
    entropy = logprobs_and_entropy(table.index_fill(-1, torch.tensor([MASK]), float("-inf")))[1].tolist()
    model = TableModel(table, gen_start=2)
    out = eb_decode(model, [[1, 2]], gen_length=8, gamma=gamma, block_length=block_length, **KWARGS)
    expected = expected_eb_steps(entropy, gamma, block_length)
    assert out.unmask_steps == [expected]
    assert out.nfe == max(expected) + 1 == len(model.calls) == out.row_nfe[0]
    torch.testing.assert_close(torch.tensor(out.entropies[0]), torch.tensor(entropy))
    if gamma == 0.0:
        assert out.nfe == 8  # one token per step, lowest entropy first
    if gamma == 1e9:
        assert out.nfe == 1


def test_eb_decode_rows_leave_the_batch_when_done():
    tables = {3: table_with_entropies([9.0] * 4), 7: table_with_entropies([0.5] * 4)}
    model = TableModel(tables, gen_start=1)
    out = eb_decode(model, [[3], [7]], gen_length=4, gamma=0.5, **KWARGS)
    assert out.row_nfe[0] < out.row_nfe[1] and out.nfe == out.row_nfe[1] == len(model.calls)
    assert [call["input_ids"].size(0) for call in model.calls][-1] == 1


# ---------------------------------------------------------------------------------------------------------------
# Real (tiny) LLaDA: the reference sampler, batching, and the AR rollout
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def llada(tiny_model, tiny_tokenizer):
    tokens = resolve_special_tokens(get_spec(tiny_model), tiny_tokenizer, tiny_model.config)
    with torch.no_grad():  # peaky, stop-prone distributions so that completions end at varied lengths
        head = tiny_model.model.transformer.ff_out.weight
        head.mul_(8.0)
        generator = torch.Generator().manual_seed(0)
        for stop_id in tokens.stop_ids:
            head[stop_id] = torch.randn(head.size(1), generator=generator) * 0.5
    prompts = [tiny_tokenizer(t)["input_ids"] for t in ("hi", "the quick brown fox", "12 + 30 =", "def add(a, b):")]
    kwargs = dict(mask_id=tokens.mask_id, stop_ids=tokens.stop_ids, pad_id=tokens.pad_id)
    return tiny_model, prompts, kwargs


def reference_generate(model, prompt, *, steps, gen_length, block_length, mask_id, cfg_scale=0.0):
    """LLaDA's `generate()` transcribed for one unpadded prompt (full-canvas logits), with the project rule that the
    mask token is never predicted."""
    x = torch.full((1, len(prompt) + gen_length), mask_id, dtype=torch.long)
    x[0, : len(prompt)] = torch.tensor(prompt)
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for block in range(num_blocks):
        lo, hi = len(prompt) + block * block_length, len(prompt) + (block + 1) * block_length
        masked = int((x[:, lo:hi] == mask_id).sum())
        counts = [
            masked // steps_per_block + (1 if i < masked % steps_per_block else 0) for i in range(steps_per_block)
        ]
        for i in range(steps_per_block):
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                cond, un = model(torch.cat([x, un_x])).logits.chunk(2)
                logits = un + (cfg_scale + 1) * (cond - un)
            else:
                logits = model(x).logits
            logits[..., mask_id] = float("-inf")
            x0 = logits.argmax(-1)
            x0_p = torch.softmax(logits.double(), -1).gather(-1, x0[..., None])[..., 0]
            x0_p[:, hi:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.tensor(float("-inf"), dtype=torch.float64))
            selected = torch.topk(confidence[0], k=counts[i]).indices
            x[0, selected] = x0[0, selected]
    return x[0, len(prompt) :].tolist()


def cut(tokens: list[int], stop_ids) -> list[int]:
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[: index + 1]
    return tokens


@pytest.mark.parametrize(
    ("gen_length", "block_length", "steps", "cfg_scale"), [(8, 4, 8, 0.0), (12, 4, 6, 0.0), (8, 8, 4, 0.5)]
)
def test_block_decode_equals_the_reference_sampler(llada, gen_length, block_length, steps, cfg_scale):
    model, prompts, kwargs = llada
    config = dict(gen_length=gen_length, block_length=block_length, steps=steps, cfg_scale=cfg_scale)
    batched = block_decode(model, prompts, **config, **kwargs)
    for index, prompt in enumerate(prompts):
        expected = reference_generate(model, prompt, mask_id=kwargs["mask_id"], **config)
        assert batched.completion_ids[index] == cut(expected, kwargs["stop_ids"]), index
    assert batched.nfe == steps * (2 if cfg_scale else 1)


@pytest.mark.parametrize("decoder", ["block", "eb"])
def test_batch_of_distinct_prompts_equals_each_prompt_alone(llada, decoder):
    model, prompts, kwargs = llada
    if decoder == "block":
        run = lambda p: block_decode(model, p, gen_length=8, block_length=4, steps=8, **kwargs)  # noqa: E731
    else:
        run = lambda p: eb_decode(model, p, gen_length=8, gamma=0.3, block_length=4, **kwargs)  # noqa: E731
    batched = run(prompts)
    for index, prompt in enumerate(prompts):
        alone = run([prompt])
        assert alone.completion_ids[0] == batched.completion_ids[index]
        assert alone.unmask_steps[0] == batched.unmask_steps[index]
        assert alone.row_nfe[0] == batched.row_nfe[index]


def test_block_length_one_is_the_ar_rollout_and_early_stop_keeps_greedy_answers(llada):
    model, prompts, kwargs = llada
    ar = ar_decode(model, prompts, gen_length=10, temperature=0.0, **kwargs)
    assert len({len(c) for c in ar.completion_ids}) >= 2
    full = block_decode(model, prompts, gen_length=10, block_length=1, steps=10, **kwargs)
    early = block_decode(model, prompts, gen_length=10, block_length=1, steps=10, early_stop=True, **kwargs)
    assert full.completion_ids == ar.completion_ids == early.completion_ids
    assert full.unmask_steps == ar.unmask_steps
    for got, want in zip(full.logprobs, ar.logprobs):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=1e-5)
    assert full.nfe == 10 and early.nfe == ar.nfe and early.row_nfe == ar.row_nfe
    eb_early = eb_decode(model, prompts, gen_length=10, gamma=0.0, block_length=1, early_stop=True, **kwargs)
    assert eb_early.completion_ids == ar.completion_ids and eb_early.nfe == ar.nfe


def test_early_stop_does_not_change_greedy_block_answers(llada):
    model, prompts, kwargs = llada
    full = block_decode(model, prompts, gen_length=16, block_length=4, steps=16, **kwargs)
    early = block_decode(model, prompts, gen_length=16, block_length=4, steps=16, early_stop=True, **kwargs)
    assert early.completion_ids == full.completion_ids and early.nfe <= full.nfe


def plain_greedy_ar(model, prompt: list[int], gen_length: int, mask_id: int, stop_ids) -> list[int]:
    """The AR rollout written plainly: one unpadded prompt, one full forward per slot, the argmax (never the mask
    token) written into the next slot; stop after the first stop token, keeping it."""
    canvas = prompt + [mask_id] * gen_length
    for j in range(gen_length):
        logits = model(input_ids=torch.tensor([canvas])).logits[0, len(prompt) + j].float()
        logits[mask_id] = float("-inf")
        canvas[len(prompt) + j] = int(logits.argmax())
        if canvas[len(prompt) + j] in stop_ids:
            break
    return cut(canvas[len(prompt) :], stop_ids)


def test_trainers_greedy_rollout_equals_a_plain_loop(llada, tmp_path):
    """The trainer's rollout (batched, left-padded prompts) against one forward per slot for each prompt alone."""
    from datasets import Dataset

    from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer

    model, prompts, kwargs = llada
    args = JustGRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=10,
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
    )
    trainer = JustGRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["hi"] * 4}),
    )
    trainer.temperature = 0.0  # the trainer refuses greedy rollouts in its config; the decoder supports them
    rollout, _ = trainer._generate_single_turn(prompts, None, {}, 1)
    expected = [plain_greedy_ar(model, p, 10, kwargs["mask_id"], kwargs["stop_ids"]) for p in prompts]
    assert rollout == expected
    assert len({len(c) for c in expected}) >= 2  # rows stop at different lengths: padding and early exit matter
