"""The evaluation harness: pass@k, task loading and grading, end-to-end runs on local jsonl files with the tiny LLaDA
(and with an oracle decoder, so that a perfect score is checked too), the analyses, and a two-process run."""

import json
import math
import os
import socket
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest

from justgrpo_trl.decoding import DecodeOutput, ar_decode
from justgrpo_trl.eval import main
from justgrpo_trl.evaluation import runner
from justgrpo_trl.evaluation.runner import EvalConfig, encode_prompts, merge_shards, shard_indices
from justgrpo_trl.evaluation.tasks import Grader, load_problems
from justgrpo_trl.models import get_spec, resolve_special_tokens
from justgrpo_trl.passk import default_ks, mean_pass_at_k, parse_ks, pass_at_k

GSM8K_ROWS = [
    {"question": "What is 12 + 30?", "answer": "12 + 30 = 42\n#### 42"},
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in May?", "answer": "#### 24"},
    {"question": "If x = 5, what is 2x + 1?", "answer": "2 * 5 + 1 = 11\n#### 11"},
    {"question": "What is 1,000 + 234?", "answer": "#### 1,234"},
    {"question": "How many legs do 3 dogs have?", "answer": "#### 12"},
]
HUMANEVAL_ROWS = [
    {
        "task_id": "Toy/0",
        "prompt": 'def add(a, b):\n    """Return a + b."""\n',
        "entry_point": "add",
        "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
    },
    {
        "task_id": "Toy/1",
        "prompt": 'def double(x):\n    """Return 2 * x."""\n',
        "entry_point": "double",
        "test": "def check(candidate):\n    assert candidate(4) == 8\n",
    },
]
ORACLE_ANSWERS = {
    "What is 12 + 30?": "12 + 30 = 42. The answer is \\boxed{42}.",
    "Natalia sold": "Half of 48 is 24. The answer is 24.",
    "If x = 5": "2 * 5 + 1 = 11, so the answer is 11.",
    "1,000 + 234": "The total is 1,234.",
    "3 dogs": "Each dog has 4 legs: #### 12",
    "`add`": "```python\ndef add(a, b):\n    return a + b\n```",
    "`double`": "    return x * 2\n",  # only the body: the grader prepends the prompt's signature
}


pytestmark = pytest.mark.usefixtures("single_thread")  # every test on one torch thread (see conftest)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------------------------------------------


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The fraction of k-subsets of the n samples that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


def test_pass_at_k_known_values_and_brute_force():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(10, 0, 4) == 0.0 and pass_at_k(10, 10, 4) == 1.0 and pass_at_k(10, 7, 4) == 1.0
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)
    # Stable where binomials overflow floats: 1 - C(900, 100) / C(1000, 100).
    exact = 1 - math.comb(900, 100) / math.comb(1000, 100)
    assert pass_at_k(1000, 100, 100) == pytest.approx(exact, rel=1e-12)
    assert mean_pass_at_k([5, 5, 5], [2, 0, 5], 1) == pytest.approx((0.4 + 0 + 1) / 3)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_k_values():
    assert default_ks(16) == [1, 2, 4, 8, 16] and default_ks(6) == [1, 2, 4, 6] and default_ks(1) == [1]
    assert parse_ks("16,1,4", 16) == [1, 4, 16] and parse_ks(None, 3) == [1, 2, 3]
    with pytest.raises(ValueError, match="--n"):
        parse_ks("1,32", 16)
    with pytest.raises(ValueError, match="--n"):
        EvalConfig(k="1,4", n=2)


# ---------------------------------------------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------------------------------------------


def test_shards_cover_every_sample_once_and_merge_checks_it():
    for total, world in [(10, 2), (7, 3), (2, 4), (0, 2)]:
        shards = [shard_indices(total, rank, world) for rank in range(world)]
        assert sorted(i for shard in shards for i in shard) == list(range(total))
    records = [{"index": i, "rank": i % 2} for i in (3, 0, 2, 1, 2)]
    merged, duplicates = merge_shards(records, 4)
    assert [r["index"] for r in merged] == [0, 1, 2, 3] and duplicates == 1
    with pytest.raises(RuntimeError, match="missing \\[1\\]"):
        merge_shards(records[:3], 4)


# ---------------------------------------------------------------------------------------------------------------
# Tasks and grading
# ---------------------------------------------------------------------------------------------------------------


def test_local_task_layouts_prompts_and_grading(tmp_path):
    spec, problems = load_problems(write_jsonl(tmp_path / "gsm.jsonl", GSM8K_ROWS))
    assert spec.kind == "math" and problems[0].prompt == "What is 12 + 30?"
    assert problems[0].columns == {"answer": GSM8K_ROWS[0]["answer"]}
    spec, problems = load_problems(write_jsonl(tmp_path / "gsm2.jsonl", GSM8K_ROWS), limit=2, task_format="math500")
    assert len(problems) == 2 and problems[0].prompt.endswith("within \\boxed{}.")
    math_rows = [{"problem": "Compute $\\frac{1}{2} + \\frac{1}{4}$.", "answer": "\\frac{3}{4}", "unique_id": "m/1"}]
    spec, problems = load_problems(write_jsonl(tmp_path / "math.jsonl", math_rows))
    assert problems[0].problem_id == "m/1" and "\\boxed{}" in problems[0].prompt
    grades = Grader("math")(problems * 2, ["So the sum is \\boxed{0.75}.", "The answer is 1/2."])
    assert [g.correct for g in grades] == [True, False] and grades[0].prediction == "0.75"

    spec, problems = load_problems(write_jsonl(tmp_path / "he.jsonl", HUMANEVAL_ROWS))
    assert spec.kind == "code" and problems[0].problem_id == "Toy/0" and "`add`" in problems[0].prompt
    completions = [ORACLE_ANSWERS["`add`"], "```python\ndef double(x):\n    return x + 1\n```"]
    assert [g.correct for g in Grader("code")(problems, completions)] == [True, False]

    mbpp = [
        {
            "task_id": 11,
            "text": "Write a function to remove first and last occurrence of a character.",
            "code": "def helper():\n    pass\ndef remove_Occ(s, ch):\n    return s",
            "test_list": ['assert remove_Occ("hello","l") == "heo"'],
            "test_setup_code": "",
        },
        {"task_id": 12, "text": "Sort the set.", "code": "", "test_list": ["assert set(sort_set([2, 1])) == {1, 2}"]},
    ]
    stdio = [{"task_id": "io/1", "question": "Print the sum of two numbers.", "inputs": ["1 2\n"], "outputs": ["3\n"]}]
    spec, problems = load_problems(write_jsonl(tmp_path / "stdio.jsonl", stdio))
    assert spec.kind == "code"
    reads = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert [g.correct for g in Grader("code")(problems * 2, [reads, "```python\nprint(4)\n```"])] == [True, False]

    spec, problems = load_problems(write_jsonl(tmp_path / "mbpp.jsonl", mbpp))
    assert "`remove_Occ`" in problems[0].prompt and "`sort_set`" in problems[1].prompt
    spec, problems = load_problems(write_jsonl(tmp_path / "t.jsonl", GSM8K_ROWS), prompt_template="Q: {question}")
    assert problems[0].prompt == "Q: What is 12 + 30?"
    with pytest.raises(ValueError, match="must be one of"):
        load_problems(str(tmp_path / "missing.jsonl"))


def test_named_tasks_load_from_the_hub_or_a_local_file_in_their_layout(tmp_path, monkeypatch):
    import datasets

    requests = []

    def fake_load_dataset(path, name=None, split=None):
        requests.append((path, name, split))
        row = {"question": "q", "answer": "#### 1", "problem": "p", "unique_id": "u", **HUMANEVAL_ROWS[0]}
        return [{**row, "text": "t", "code": "def f(x):\n    return x", "test_list": ["assert f(1) == 1"]}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    kinds = [load_problems(task)[0].kind for task in ("gsm8k", "math500", "humaneval", "mbpp")]
    assert kinds == ["math", "math", "code", "code"]
    load_problems("mbpp", dataset_config="sanitized", split="validation")
    load_problems("math500", dataset="ankner/math-500")
    assert requests == [
        ("openai/gsm8k", "main", "test"),
        ("HuggingFaceH4/MATH-500", None, "test"),
        ("openai/openai_humaneval", None, "test"),
        ("google-research-datasets/mbpp", "full", "test"),
        ("google-research-datasets/mbpp", "sanitized", "validation"),
        ("ankner/math-500", None, "test"),
    ]
    spec, problems = load_problems("gsm8k", dataset=write_jsonl(tmp_path / "local.jsonl", GSM8K_ROWS), limit=1)
    assert spec.name == "gsm8k" and problems[0].prompt == "What is 12 + 30?" and len(requests) == 6


# ---------------------------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------------------------


def read_run(directory: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((directory / "summary.json").read_text())
    records = [json.loads(line) for line in (directory / "samples.jsonl").read_text().splitlines()]
    return summary, records


def test_end_to_end_block_decoding_with_the_tiny_model(tmp_path, tiny_checkpoint):
    data = write_jsonl(tmp_path / "gsm.jsonl", GSM8K_ROWS[:3])
    out = tmp_path / "run"
    args = ["--task", data, "--model", tiny_checkpoint, "--gen_length", "8", "--block_length", "4"]
    args += ["--temperature", "1.0", "--n", "2", "--k", "1,2", "--batch_size", "4", "--output_dir", str(out)]
    assert main([*args, "--plot", "--save_token_stats", "--no_progress"]) == 0
    summary, records = read_run(out)
    assert [r["index"] for r in records] == list(range(6))
    assert [(r["problem_index"], r["sample_index"]) for r in records] == [(p, s) for p in range(3) for s in range(2)]
    assert summary["num_problems"] == 3 and summary["num_samples"] == 6 and set(summary["pass_at_k"]) == {"1", "2"}
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["world_size"] == 1
    assert summary["config"]["steps"] == 8 and summary["config"]["decoder"] == "block"
    assert all(r["nfe"] == 8 for r in records) and summary["nfe"]["total_forward_passes"] == 16
    assert summary["tokens"]["per_second"] > 0
    for record in records:
        assert len(record["token_ids"]) == len(record["entropies"]) == record["num_tokens"]
        assert set(record["unmask_steps"]) <= set(range(8)) and -1 not in record["unmask_steps"]
    assert (out / "pass_at_k.png").stat().st_size > 0 and (out / "accuracy_vs_nfe.png").stat().st_size > 0
    # Reproducible: the sampling noise is seeded per batch.
    assert main([*args, "--output_dir", str(tmp_path / "again"), "--no_progress"]) == 0
    assert [r["completion"] for r in read_run(tmp_path / "again")[1]] == [r["completion"] for r in records]


def test_ar_decoder_in_the_harness_is_the_trainers_decoder(tmp_path, tiny_checkpoint, tiny_model, tiny_tokenizer):
    data = write_jsonl(tmp_path / "gsm.jsonl", GSM8K_ROWS)
    config = EvalConfig(
        task=data,
        model=tiny_checkpoint,
        decoder="ar",
        gen_length=6,
        batch_size=3,
        save_token_stats=True,
        output_dir=str(tmp_path / "ar"),
        progress=False,
    )
    result = runner.evaluate(config, tiny_model, tiny_tokenizer)
    tokens = resolve_special_tokens(get_spec(tiny_model), tiny_tokenizer, tiny_model.config)
    _, problems = load_problems(data)
    expected = ar_decode(
        tiny_model,
        encode_prompts(problems, tiny_tokenizer, True),
        gen_length=6,
        temperature=0.0,
        mask_id=tokens.mask_id,
        stop_ids=tokens.stop_ids,
        pad_id=tokens.pad_id,
    )
    assert [r["token_ids"] for r in result.records] == expected.completion_ids
    assert [r["nfe"] for r in result.records] == [len(c) for c in expected.completion_ids]


def oracle_decoder(tokenizer):
    """A stand-in for the sampler that writes the known answer of each prompt, then a stop token."""

    def decode(config, model, prompts, tokens, generator):
        completions = []
        for ids in prompts:
            text = tokenizer.decode(ids)
            answer = next(a for key, a in ORACLE_ANSWERS.items() if key in text)
            completions.append(tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokens.stop_ids[0]])
        zeros = [[0.0] * len(c) for c in completions]
        return DecodeOutput(
            completions,
            zeros,
            zeros,
            nfe=1,
            row_nfe=[1] * len(prompts),
            unmask_steps=[list(range(len(c))) for c in completions],
        )

    return decode


@pytest.mark.parametrize("rows", [GSM8K_ROWS, HUMANEVAL_ROWS], ids=["math", "code"])
def test_oracle_decoder_scores_everything_and_the_bar_shows_accuracy(
    tmp_path, tiny_checkpoint, tiny_tokenizer, monkeypatch, capsys, rows
):
    monkeypatch.setattr(runner, "run_decoder", oracle_decoder(tiny_tokenizer))
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "oracle"
    assert main(["--task", data, "--model", tiny_checkpoint, "--batch_size", "2", "--output_dir", str(out)]) == 0
    summary, records = read_run(out)
    assert summary["accuracy"] == 1.0 and summary["pass_at_k"] == {"1": 1.0} and summary["stopped_fraction"] == 1.0
    assert all(r["correct"] for r in records)
    captured = capsys.readouterr()
    if rows is GSM8K_ROWS:
        assert [r["gold"] for r in records] == ["42", "24", "11", "1234", "12"]
        # Both graders: this project's and the reference-compatible one, in the summary and the printed line.
        assert summary["accuracy_reference"] == 1.0 and all(r["correct_reference"] for r in records)
        assert "accuracy 100.00% (reference-compatible grader: 100.00%)" in captured.out
    else:
        assert summary["accuracy_reference"] is None
    assert "acc=1.000" in captured.err


def test_compare_and_the_order_and_entropy_analyses(tmp_path, tiny_checkpoint, capsys):
    data = write_jsonl(tmp_path / "gsm.jsonl", GSM8K_ROWS[:2])
    common = ["--task", data, "--model", tiny_checkpoint, "--gen_length", "8", "--no_progress"]
    order_dir, entropy_dir = tmp_path / "order", tmp_path / "entropy"
    assert main(["analyze-order", *common, "--n", "2", "--output_dir", str(order_dir)]) == 0
    report = json.loads((order_dir / "order_analysis.json").read_text())
    assert set(report["orders"]) == {"ar", "low_confidence"} and report["config"]["temperature"] == 1.0
    assert report["config"]["block_length"] == 8 and (order_dir / "order_pass_at_k.png").exists()
    ar_summary, _ = read_run(order_dir / "ar")
    lc_summary, _ = read_run(order_dir / "low_confidence")
    assert ar_summary["decoder"] == "ar" and lc_summary["decoder"] == "block" and lc_summary["n"] == 2
    assert lc_summary["nfe"]["mean_per_sample"] == 8

    assert main(["analyze-entropy", *common, "--output_dir", str(entropy_dir)]) == 0
    report = json.loads((entropy_dir / "entropy_analysis.json").read_text())
    for name in ("ar", "low_confidence"):
        stats = report["orders"][name]["entropy"]
        _, records = read_run(entropy_dir / name)
        values = [h for r in records for h in r["entropies"]]
        assert stats["count"] == len(values) and stats["mean"] == pytest.approx(sum(values) / len(values))
    assert (entropy_dir / "entropy.png").exists()

    capsys.readouterr()
    table_file, plot_file = tmp_path / "cmp.md", tmp_path / "cmp.png"
    runs = [str(order_dir / "ar"), str(order_dir / "low_confidence" / "summary.json")]
    assert main(["compare", *runs, "--labels", "AR,LC", "--output", str(plot_file), "--table", str(table_file)]) == 0
    table = capsys.readouterr().out
    assert "| AR |" in table and "| LC |" in table and "pass@2" in table
    assert table_file.read_text().startswith("| run |") and plot_file.stat().st_size > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_evaluate_every_sample_exactly_once(tmp_path, tiny_checkpoint, tiny_model, tiny_tokenizer):
    data = write_jsonl(tmp_path / "gsm.jsonl", GSM8K_ROWS)
    args = ["--task", data, "--model", tiny_checkpoint, "--gen_length", "8", "--block_length", "4"]
    args += ["--n", "2", "--batch_size", "2", "--no_progress"]
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(_free_port()), "-m", "justgrpo_trl.eval", *args),
        *("--output_dir", str(tmp_path / "ddp")),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    summary, records = read_run(tmp_path / "ddp")
    assert summary["world_size"] == 2 and summary["samples_per_process"] == [5, 5]
    assert summary["duplicates_dropped"] == 0
    assert [r["index"] for r in records] == list(range(10))
    assert {r["rank"] for r in records} == {0, 1} and all(r["rank"] == r["index"] % 2 for r in records)
    # The same run in one process gives the same (greedy) answers.
    config = EvalConfig(
        task=data,
        model=tiny_checkpoint,
        gen_length=8,
        block_length=4,
        n=2,
        batch_size=3,
        output_dir=str(tmp_path / "single"),
        progress=False,
    )
    single = runner.evaluate(config, tiny_model, tiny_tokenizer)
    assert [r["completion"] for r in single.records] == [r["completion"] for r in records]


def test_math_grades_carry_the_reference_compatible_verdict(tmp_path):
    """The project's grader and the paper's rules disagree on purpose (here: the reference accepts x100 of the
    gold); both verdicts travel with each grade, and code grades have none."""
    rows = [{"problem": "What is half of one?", "answer": "0.5", "unique_id": "h/1"}]
    _, problems = load_problems(write_jsonl(tmp_path / "half.jsonl", rows))
    grades = Grader("math")(problems * 3, ["\\boxed{0.5}", "\\boxed{50}", "\\boxed{7}"])
    assert [g.correct for g in grades] == [True, False, False]
    assert [g.reference_correct for g in grades] == [True, True, False]
    _, problems = load_problems(write_jsonl(tmp_path / "he.jsonl", HUMANEVAL_ROWS))
    assert Grader("code")(problems[:1], [ORACLE_ANSWERS["`add`"]])[0].reference_correct is None


def test_both_accuracies_in_summary_line_and_table():
    from justgrpo_trl.evaluation.report import format_accuracy, format_table, reference_accuracy

    records = [
        {"correct": True, "correct_reference": True, "gradable": True},
        {"correct": False, "correct_reference": True, "gradable": True},
    ]
    assert reference_accuracy(records) == 1.0
    assert reference_accuracy([{"correct": True, "correct_reference": None, "gradable": True}]) is None
    summary = {"task": "math500", "n": 1, "accuracy": 0.5, "accuracy_reference": 1.0, "nfe": {"mean_per_sample": 4}}
    assert format_accuracy(summary) == "accuracy 50.00% (reference-compatible grader: 100.00%)"
    table = format_table([summary], labels=["run"])
    assert "accuracy (ref.)" in table.splitlines()[0] and "| 50.00 | 100.00 |" in table
    assert format_accuracy({**summary, "accuracy_reference": None}) == "accuracy 50.00%"
