"""Distributed engines on CPU processes (gloo): FSDP2 against DDP.

Accelerate drops FSDP on CPU, so `fsdp_train_script.py` switches its state back to FSDP after building it; the model
is then sharded by torch's `fully_shard`, whose forwards all-gather parameters collectively. The checks:

* one SGD step under FSDP2 updates the weights as DDP does (1e-5 relative);
* the ranks' rollouts need very different numbers of forwards (one rank's completions stop early), and neither
  hangs: a rank that is done keeps running forwards until every rank is;
* the output head (never called as a module before) is gathered like every other FSDP unit;
* the checkpoint reloads with strict keys and holds the trained weights.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_stop_heavy
from test_trainer_runs import _free_port
from transformers import AutoModelForCausalLM

SCRIPT = Path(__file__).with_name("fsdp_train_script.py")


@pytest.fixture(scope="module")
def stop_heavy_checkpoint(tiny_checkpoint, tmp_path_factory) -> str:
    """The tiny LLaDA with the stop tokens made likely (`conftest.load_stop_heavy`), saved: completions then end
    at varied lengths, and one rank's rollout ends well before the other's."""
    model, tokenizer, _ = load_stop_heavy(tiny_checkpoint)
    directory = tmp_path_factory.mktemp("stop-heavy")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def launch(checkpoint: str, output_dir: Path, engine: str) -> dict:
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(_free_port()), str(SCRIPT), checkpoint, str(output_dir), engine),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-8000:]
    out = torch.load(output_dir / "result.pt", weights_only=False)
    out["lengths"] = [torch.load(output_dir / f"lengths{rank}.pt") for rank in (0, 1)]
    return out


def test_fsdp2_matches_ddp_and_survives_ranks_with_different_rollout_lengths(stop_heavy_checkpoint, tmp_path):
    ddp = launch(stop_heavy_checkpoint, tmp_path / "ddp", "ddp")
    fsdp = launch(stop_heavy_checkpoint, tmp_path / "fsdp2", "fsdp2")
    assert not ddp["fsdp"] and fsdp["fsdp"] and "FSDP" in fsdp["engine"]
    longest = [max(lengths) for lengths in fsdp["lengths"]]
    assert abs(longest[0] - longest[1]) >= 3, f"the ranks should need different forward counts: {fsdp['lengths']}"
    assert fsdp["lengths"] == ddp["lengths"]  # the same rollouts under both engines

    before = dict(AutoModelForCausalLM.from_pretrained(stop_heavy_checkpoint, dtype=torch.float32).named_parameters())
    assert sorted(fsdp["after"]) == sorted(ddp["after"]) == sorted(before)
    update = torch.cat([(ddp["after"][n] - before[n].detach()).flatten() for n in before])
    gap = torch.cat([(fsdp["after"][n] - ddp["after"][n]).flatten() for n in before])
    print(f"\n[fsdp2] |update| = {update.norm():.4g}, |FSDP2 - DDP| / |update| = {gap.norm() / update.norm():.3g}")
    assert update.norm() > 0 and gap.norm() <= 1e-5 * update.norm()

    checkpoint = tmp_path / "fsdp2" / "trainer" / "checkpoint-1"
    reloaded = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)  # strict keys
    for name, param in reloaded.named_parameters():
        torch.testing.assert_close(param.detach(), fsdp["after"][name], rtol=0, atol=0)
    assert (checkpoint / "modeling_llada.py").exists() and not list(checkpoint.glob("_fsdp*.py"))
