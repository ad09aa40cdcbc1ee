"""Engines on 2 CPU processes (gloo): DeepSpeed ZeRO-2 and ZeRO-3 against DDP, and ZeRO-2 as two machines on
127.0.0.1 (with a shared `output_dir`, and with each machine's own tmpfs there, in its own mount namespace).

One `accelerate launch` per engine runs `engine_train_script.py` (one SGD step, two accumulation steps, a checkpoint),
shared by every test of the module; the DeepSpeed launches use the recipes' own `accelerate_configs/zero{2,3}.yaml`.
Rank 0 keeps one token per completion and rank 1 eight, so the ranks score 1 and 8 chunks: every launch finishing
within its timeout is the no-hang check (under ZeRO-2/3 the chunked backward pads to the same chunk count).

Cost: about 30 s per launch on 2 cores, after DeepSpeed's CPU communication op is built. That build (about 3 minutes)
runs once per fresh environment, in `deepspeed_comm_op`, and is cached by torch under `~/.cache/torch_extensions`
(or `$TORCH_EXTENSIONS_DIR`): a CI that caches that folder skips it.
"""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer_runs import _free_port
from transformers import AutoConfig, AutoModelForCausalLM

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("engine_train_script.py")
LAUNCH_TIMEOUT = 300  # a launch takes ~30 s; a hang (ranks running different collectives) stops here
ENGINE_FLAGS = {
    "ddp": ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"],
    "zero2": ["--config_file", str(ROOT / "accelerate_configs" / "zero2.yaml")],
    "zero3": ["--config_file", str(ROOT / "accelerate_configs" / "zero3.yaml")],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}


def accelerate_launch(*flags: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--mixed_precision", "no", *flags]


@pytest.fixture(scope="module")
def deepspeed_comm_op() -> None:
    """Build (or find in torch's extension cache) the communication op DeepSpeed's CPU accelerator loads, once, so
    that the launches' own timeouts do not have to cover a 3-minute compile."""
    build = "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()"
    result = subprocess.run([sys.executable, "-c", build], env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory, tiny_checkpoint, deepspeed_comm_op):
    """`engine_run(name)`: what each rank of that engine's launch saved (launched once, on first use)."""
    runs: dict[str, list[dict]] = {}

    def run(engine: str) -> list[dict]:
        if engine not in runs:
            output = tmp_path_factory.mktemp(engine)
            command = [
                *accelerate_launch(*ENGINE_FLAGS[engine], "--num_processes", "2"),
                *("--main_process_port", str(_free_port()), str(SCRIPT), tiny_checkpoint, str(output)),
            ]
            result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
            runs[engine] = [{**torch.load(output / f"rank{r}.pt", weights_only=False), "dir": output} for r in (0, 1)]
        return runs[engine]

    return run


@pytest.fixture(scope="module")
def initial(tiny_checkpoint) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def relative_update_error(after: dict, reference: dict, initial: dict) -> float:
    """`|Δ - Δ_ref| / |Δ_ref|` over all parameters, Δ being a run's update of the initial weights."""
    delta = torch.cat([(after[n] - initial[n]).flatten() for n in sorted(initial)])
    delta_ref = torch.cat([(reference[n] - initial[n]).flatten() for n in sorted(initial)])
    return ((delta - delta_ref).norm() / delta_ref.norm()).item()


def zero_partitions_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))


@pytest.mark.parametrize("engine", ["zero2", "zero3"])
def test_deepspeed_chunked_update_equals_ddp(engine_run, initial, engine):
    """The chunked backward runs under the recipes' ZeRO configs (every rank padded to the same chunk count) and its
    SGD update equals DDP's to 1e-5 relative."""
    ranks, ddp = engine_run(engine), engine_run("ddp")
    assert [r["engine"] for r in ranks] == [engine] * 2 and [r["world_size"] for r in ranks] == [2, 2]
    assert all(r["blocker"] is None for r in [*ranks, *ddp]), [r["blocker"] for r in ranks]
    real = [[n for n, _ in r["chunk_calls"]] for r in ranks]
    assert len(real[0]) == 2 and real[0] == [1, 1] and real[1] == [8, 8]  # one call per accumulation step
    assert [[n for _, n in r["chunk_calls"]] for r in ranks] == [[8, 8]] * 2  # rank 0 pads with dummy chunks
    assert [[n for _, n in r["chunk_calls"]] for r in ddp] == [[1, 1], [8, 8]]  # DDP needs no padding
    for name in initial:
        assert torch.equal(ranks[0]["after"][name], ranks[1]["after"][name]), f"ranks diverged: {name}"
        assert not torch.equal(ranks[0]["after"][name], initial[name]), f"did not change: {name}"
    error = relative_update_error(ranks[0]["after"], ddp[0]["after"], initial)
    assert error < 1e-5, f"{engine} update differs from DDP's by {error:.3g} (relative)"


@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
def test_checkpoint_reloads_with_strict_keys(engine_run, engine):
    """`checkpoint-1` is published (no staging left), its weights load with strict keys and equal the trained ones;
    under ZeRO, the partitions saved beside them rebuild the same weights."""
    ranks = engine_run(engine)
    run_dir = ranks[0]["dir"] / "trainer"
    assert sorted(p.name for p in run_dir.iterdir() if "checkpoint" in p.name) == ["checkpoint-1"]
    checkpoint = run_dir / "checkpoint-1"
    state = load_file(checkpoint / "model.safetensors")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint), dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    for name, param in model.named_parameters():
        assert torch.equal(param, ranks[0]["after"][name]), name
    if engine != "ddp":
        rebuilt = zero_partitions_state_dict(checkpoint)
        assert rebuilt.keys() == state.keys() and all(torch.equal(rebuilt[k], state[k]) for k in state)


def private_mount_prefix(directory: Path) -> list[str] | None:
    """`unshare` arguments giving a command its own mount namespace (root: `-m`; otherwise a user namespace too), or
    None where this machine allows neither."""
    for prefix in (["unshare", "-m"], ["unshare", "-U", "-r", "-m"]):
        if prefix == ["unshare", "-m"] and os.geteuid() != 0:
            continue
        probe = subprocess.run([*prefix, "sh", "-c", f"mount -t tmpfs none '{directory}'"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


@pytest.mark.parametrize("disks", ["private", "shared"])
def test_two_machines_on_localhost(tmp_path, tiny_checkpoint, deepspeed_comm_op, engine_run, initial, disks):
    """`accelerate_configs/multinode_zero2.yaml` launched as two machines of one process each on 127.0.0.1: both join
    and train (the update is DDP's), and their ZeRO partitions together rebuild the saved model exactly.

    `private`: each machine has its own tmpfs at the same `output_dir` (disks that are not shared), and each publishes
    its own `checkpoint-1`. `shared`: one `checkpoint-1` holds both partitions, published once."""
    run_dir = tmp_path / "trainer"
    run_dir.mkdir()
    prefix = []
    if disks == "private":
        prefix = private_mount_prefix(run_dir)
        if prefix is None:
            pytest.skip("no mount namespace (unshare -m as root, or unshare -U -r -m) to give each machine a disk")
    port = str(_free_port())
    config = str(ROOT / "accelerate_configs" / "multinode_zero2.yaml")
    machines = []
    for rank in (0, 1):
        launch = accelerate_launch(
            *("--config_file", config, "--num_processes", "2", "--num_machines", "2", "--machine_rank", str(rank)),
            *("--main_process_ip", "127.0.0.1", "--main_process_port", port),
            *(str(SCRIPT), tiny_checkpoint, str(tmp_path), "--copy_out"),
        )
        if prefix:
            launch = [*prefix, "sh", "-c", f"mount -t tmpfs none '{run_dir}' && exec \"$@\"", "machine", *launch]
        machines.append(
            subprocess.Popen(
                launch, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
            )
        )
    logs = []
    try:
        for machine in machines:
            logs.append(machine.communicate(timeout=LAUNCH_TIMEOUT)[0])
    finally:
        for machine in machines:
            if machine.poll() is None:
                os.killpg(machine.pid, signal.SIGKILL)
    assert [m.returncode for m in machines] == [0, 0], "\n".join(log[-4000:] for log in logs)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and all(r["blocker"] is None for r in ranks)
    error = relative_update_error(ranks[0]["after"], engine_run("ddp")[0]["after"], initial)
    assert error < 1e-5, f"two-machine ZeRO-2 update differs from DDP's by {error:.3g} (relative)"

    # What each machine's `output_dir` held at the end (its copy: a private tmpfs is gone once the machine exits).
    outputs = [tmp_path / f"machine_of_rank{r}" for r in (0, 1)]
    for output in outputs:
        assert sorted(p.name for p in output.iterdir() if "checkpoint" in p.name) == ["checkpoint-1"], output
    partitions = [
        sorted(p.name for p in (out / "checkpoint-1" / "global_step1").glob("*optim_states.pt")) for out in outputs
    ]
    names = [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    merged = tmp_path / "merged"
    shutil.copytree(outputs[0] / "checkpoint-1", merged)
    if disks == "private":
        assert not any(run_dir.iterdir())  # the trainer wrote to the machines' own disks only
        assert partitions == [names[:1], names[1:]]
        shutil.copy(outputs[1] / "checkpoint-1" / "global_step1" / names[1], merged / "global_step1")
    else:
        assert sorted(p.name for p in run_dir.iterdir()) == ["README.md", "checkpoint-1"]
        assert partitions == [names, names]
    saved = load_file(merged / "model.safetensors")
    rebuilt = zero_partitions_state_dict(merged)
    assert rebuilt.keys() == saved.keys()
    for name in saved:
        assert torch.equal(rebuilt[name], saved[name]) and torch.equal(saved[name], ranks[1]["after"][name]), name
