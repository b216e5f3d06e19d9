"""Distributed sensitivity and training: real 2-process gloo runs (torchrun, accelerate) against one process.

The 2-process run (torchrun, CPU, gloo) shards 6 fixed batches round-robin over the ranks; every estimator
must give the same diagonal, metrics and ranks on both ranks, equal to one process over all 6 batches
(activation, fisher) or to an independent Hutchinson computation with the same per-rank probes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import senslora
from senslora.core.estimators import activation_diagonals, fisher_diagonals
from senslora.utils.distributed import PROBE_SEED_STRIDE

# ----------------------------------------------------------------------------- the 2-process run

WORKER = textwrap.dedent(
    '''
    """One process of the 2-process sensitivity run (started by torchrun)."""

    import sys
    from datetime import timedelta
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from transformers import BertConfig, BertForSequenceClassification

    import senslora
    from senslora.utils.distributed import (
        broadcast_object, is_main_process, main_process_first, rank, shard_batches, world_size,
    )
    from senslora.core.estimators import activation_diagonals, fisher_diagonals, hutchinson_diagonals
    from senslora.utils.io import atomic_write_text

    SEED = 3
    NUM_PROBES = 2
    AVG_RANK = 4


    def build_model():
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32, num_labels=2,
        )
        return BertForSequenceClassification(config).eval()


    def build_batches(count=6):
        generator = torch.Generator().manual_seed(1)
        batches = []
        for index in range(count):
            size, length = 3, 7 + index % 3
            input_ids = torch.randint(1, 100, (size, length), generator=generator)
            attention_mask = torch.ones(size, length, dtype=torch.long)
            for row in range(size):
                padding = (index + row) % 4
                if padding:
                    attention_mask[row, length - padding:] = 0
                    input_ids[row, length - padding:] = 0
            labels = torch.randint(0, 2, (size,), generator=generator)
            batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
        return batches


    def main(output):
        # A collective that waits for a process which never comes fails after a minute instead of hanging.
        dist.init_process_group("gloo", timeout=timedelta(seconds=60))
        torch.set_num_threads(1)
        model, batches = build_model(), build_batches()
        layers = senslora.find_target_layers(model)
        record = {"rank": rank(), "world_size": world_size(), "sensitivity": {}, "ranks": {}}
        for estimator in senslora.ESTIMATORS:
            sensitivities = senslora.estimate_sensitivity(
                model, shard_batches(batches), estimator=estimator, num_probes=NUM_PROBES, seed=SEED,
                progress=False,
            )
            allocation = senslora.allocate_ranks(sensitivities, avg_rank=AVG_RANK, dominance_share=None)
            record["sensitivity"][estimator] = senslora.sensitivities_to_json(sensitivities)
            record["ranks"][estimator] = allocation.to_json()
        diagonals = {
            "activation": activation_diagonals(model, layers, shard_batches(batches), progress=False),
            "fisher": fisher_diagonals(model, layers, shard_batches(batches), progress=False),
            "hutchinson": hutchinson_diagonals(
                model, layers, shard_batches(batches), num_probes=NUM_PROBES, seed=SEED, progress=False
            ),
            # One batch for two processes: rank 1 has an empty shard and must still join the reductions.
            "activation_one_batch": activation_diagonals(model, layers, shard_batches(batches[:1]), progress=False),
            "fisher_one_batch": fisher_diagonals(model, layers, shard_batches(batches[:1]), progress=False),
        }
        record["my_batches"] = [int(batch["input_ids"][0, 0]) for batch in shard_batches(batches)]
        record["broadcast"] = broadcast_object(f"chosen by rank {rank()}")
        with main_process_first():
            output.mkdir(parents=True, exist_ok=True)
            record["directory_seen"] = output.is_dir()
        torch.save({"record": record, "diagonals": diagonals}, output / f"rank{rank()}.pt")
        if is_main_process():
            atomic_write_text(output / "ranks.json", record["ranks"]["activation"])
        dist.barrier()
        dist.destroy_process_group()


    if __name__ == "__main__":
        main(Path(sys.argv[1]))
    '''
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def load_worker(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("distributed_worker", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_hutchinson(worker: ModuleType, model, batches, world: int) -> dict[str, torch.Tensor]:
    """E[z * Hz] written out directly: rank r draws Rademacher probes from process_seed(SEED, r) over its shard."""
    layers = senslora.find_target_layers(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    weights = [layer.weight for layer in layers]
    for weight in weights:
        weight.requires_grad_(True)
    totals = [torch.zeros_like(weight) for weight in weights]
    count = 0
    with sdpa_kernel(SDPBackend.MATH):
        for process in range(world):
            generator = torch.Generator().manual_seed(worker.SEED + process * PROBE_SEED_STRIDE)
            sums = [torch.zeros_like(weight) for weight in weights]
            for batch in batches[process::world]:
                gradients = torch.autograd.grad(model(**batch).loss, weights, create_graph=True)
                assert all(g.requires_grad for g in gradients)
                for _ in range(worker.NUM_PROBES):
                    probes = [
                        torch.randint(0, 2, w.shape, generator=generator, dtype=torch.int8).float() * 2 - 1
                        for w in weights
                    ]
                    products = torch.autograd.grad(gradients, weights, grad_outputs=probes, retain_graph=True)
                    for total, probe, product in zip(sums, probes, products, strict=True):
                        total += probe * product
                    count += 1
            totals = [total + part for total, part in zip(totals, sums, strict=True)]
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    # unclamped, as the estimator returns it (the metrics clamp entries for top-k and effective rank only)
    return {layer.name: (total / count).reshape(-1) for layer, total in zip(layers, totals, strict=True)}


def assert_same_sensitivities(actual_json: str, expected: dict[str, senslora.ModuleSensitivity]) -> None:
    actual, _ = senslora.sensitivities_from_json(actual_json)
    assert list(actual) == list(expected)
    for name, item in expected.items():
        assert actual[name].trace == pytest.approx(item.trace, rel=1e-6), name
        assert actual[name].topk == pytest.approx(item.topk, rel=1e-6), name
        assert actual[name].effective_rank == item.effective_rank, name
        assert actual[name].num_entries == item.num_entries, name


def launch_two_processes(
    program: list[str], timeout: int = 240, accelerate_config: Path | None = None
) -> subprocess.CompletedProcess:
    """Run `program` (a script and its arguments, or -m module ...) as 2 CPU processes under torchrun, or
    under `accelerate launch --config_file accelerate_config` when one is given."""
    if accelerate_config is None:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), *program]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)]
        command += ["--main_process_port", str(free_port()), *program]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # A new session, so that on a hang the launcher and both workers are ended together.
    launcher = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        _, stderr = launcher.communicate()
        pytest.fail(f"the 2-process run did not finish in {timeout} s:\n{stderr[-5000:]}")
    return subprocess.CompletedProcess(command, launcher.returncode, stdout, stderr)


@pytest.mark.distributed
def test_two_process_gloo_run_matches_single_process(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    output = tmp_path / "out"
    launched = launch_two_processes([str(script), str(output)], timeout=180)
    assert launched.returncode == 0, launched.stderr[-5000:]

    runs = [torch.load(output / f"rank{r}.pt", weights_only=True) for r in range(2)]
    records = [run["record"] for run in runs]
    assert [record["rank"] for record in records] == [0, 1]
    assert all(record["world_size"] == 2 for record in records)
    assert all(record["broadcast"] == "chosen by rank 0" for record in records)
    assert all(record["directory_seen"] for record in records)

    worker = load_worker(script)
    torch.set_num_threads(1)
    model, batches = worker.build_model(), worker.build_batches()
    first_tokens = [int(batch["input_ids"][0, 0]) for batch in batches]
    assert records[0]["my_batches"] == first_tokens[0::2]
    assert records[1]["my_batches"] == first_tokens[1::2]

    # Both ranks hold exactly the same result.
    for key in runs[0]["diagonals"]:
        for name, diagonal in runs[0]["diagonals"][key].items():
            assert torch.equal(diagonal, runs[1]["diagonals"][key][name]), (key, name)
    assert records[0]["sensitivity"] == records[1]["sensitivity"]
    assert records[0]["ranks"] == records[1]["ranks"]
    assert (output / "ranks.json").read_text() == records[0]["ranks"]["activation"]

    # ... equal to one process over all batches (activation, fisher) ...
    layers = senslora.find_target_layers(model)
    single = {
        "activation": activation_diagonals(model, layers, batches, progress=False),
        "fisher": fisher_diagonals(model, layers, batches, progress=False),
        "activation_one_batch": activation_diagonals(model, layers, batches[:1], progress=False),
        "fisher_one_batch": fisher_diagonals(model, layers, batches[:1], progress=False),
        # ... and, for hutchinson, to the estimate written out directly with the same per-rank probes.
        "hutchinson": reference_hutchinson(worker, model, batches, world=2),
    }
    for key, diagonals in single.items():
        for name, expected in diagonals.items():
            actual = runs[0]["diagonals"][key][name].to(expected.dtype)
            scale = float(expected.abs().max())
            torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6 * scale, msg=f"{key} {name}")

    for estimator in ("activation", "fisher"):
        expected = senslora.estimate_sensitivity(model, batches, estimator=estimator, progress=False)
        assert_same_sensitivities(records[0]["sensitivity"][estimator], expected)
        allocation = senslora.allocate_ranks(expected, avg_rank=worker.AVG_RANK, dominance_share=None)
        assert senslora.Allocation.from_json(records[0]["ranks"][estimator]).ranks == allocation.ranks
    hutchinson = {
        layer.name: senslora.ModuleSensitivity.from_diagonal(
            layer.name, single["hutchinson"][layer.name].double().numpy(), d_in=layer.d_in, d_out=layer.d_out
        )
        for layer in layers
    }
    assert_same_sensitivities(records[0]["sensitivity"]["hutchinson"], hutchinson)
    allocation = senslora.allocate_ranks(hutchinson, avg_rank=worker.AVG_RANK, dominance_share=None)
    assert senslora.Allocation.from_json(records[0]["ranks"]["hutchinson"]).ranks == allocation.ranks


# ----------------------------------------------------------------------------- senslora finetune under torchrun


@pytest.fixture(scope="module")
def dropout_free_bert_dir(tmp_path_factory, tiny_bert_dir):
    """The tiny BERT without dropout, so that one training step is a deterministic function of its batch."""
    from transformers import BertConfig, BertModel

    directory = tmp_path_factory.mktemp("bert-no-dropout")
    config = BertConfig.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (Path(tiny_bert_dir) / name).exists():
            (directory / name).write_bytes((Path(tiny_bert_dir) / name).read_bytes())
    return directory


@pytest.mark.distributed
@pytest.mark.parametrize(
    "per_process", [["--batch-size", "8"], ["--batch-size", "4", "--gradient-accumulation-steps", "2"]]
)
def test_torchrun_finetune_equals_one_process_with_twice_the_batch(
    dropout_free_bert_dir, sentiment_csv, tmp_path, per_process
):
    """DDP over 2 processes with 8 examples per step each takes the same steps as one process with 16.

    The sentiment data's 160 rows less an 18-row test split and 14 validation rows leave 128 training
    examples: 8 steps of 16 per epoch, so every global batch is whole; without dropout, both runs compute
    the same gradients (DDP averages the two halves' means;
    with accumulation, the first micro-batch's gradients are not synchronised, the second's are).
    """
    from safetensors.torch import load_file

    from senslora.cli import main

    common = ["--model", dropout_free_bert_dir, "--data", sentiment_csv, "--estimator", "fisher"]
    common += ["--calibration-examples", "32", "--calibration-batch-size", "8", "--max-length", "32"]
    common += ["--epochs", "2", "--lora-dropout", "0", "--learning-rate", "5e-3", "--no-progress", "--log-every", "1"]
    common += ["--test-examples", "18"]  # 160 - 18 test - 14 validation = 128 training rows
    common = [str(a) for a in common]
    two = launch_two_processes(
        ["-m", "senslora.cli", "finetune", *common, *per_process, "--output-dir", str(tmp_path / "two")]
    )
    assert two.returncode == 0, two.stderr[-5000:]
    assert two.stdout.count("validation accuracy") == 1  # the main process alone reports
    assert two.stdout.count("test (18 held-out examples)") == 1
    assert main(["finetune", *common, "--batch-size", "16", "--output-dir", str(tmp_path / "one")]) == 0

    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in two_dir.iterdir()) == sorted(p.name for p in one_dir.iterdir())
    assert not list(two_dir.rglob("*.tmp*"))  # nothing half-written by a second process
    one_sensitivity = json.loads((one_dir / "sensitivity.json").read_text())
    two_sensitivity = json.loads((two_dir / "sensitivity.json").read_text())
    assert two_sensitivity["calibration"]["processes"] == 2
    for a, b in zip(one_sensitivity["modules"], two_sensitivity["modules"], strict=True):
        assert a["name"] == b["name"] and b["trace"] == pytest.approx(a["trace"], rel=1e-5)
    one_ranks = senslora.Allocation.from_json((one_dir / "ranks.json").read_text()).ranks
    assert senslora.Allocation.from_json((two_dir / "ranks.json").read_text()).ranks == one_ranks

    one_metrics = json.loads((one_dir / "metrics.json").read_text())
    two_metrics = json.loads((two_dir / "metrics.json").read_text())
    assert two_metrics["global_step"] == one_metrics["global_step"] == 16
    assert two_metrics["test"] == pytest.approx(one_metrics["test"], rel=1e-4, abs=1e-6)
    one_log = [json.loads(line) for line in (one_dir / "log.jsonl").read_text().splitlines()]
    two_log = [json.loads(line) for line in (two_dir / "log.jsonl").read_text().splitlines()]
    one_losses = [line["loss"] for line in one_log if "loss" in line]
    two_losses = [line["loss"] for line in two_log if "loss" in line]
    assert len(two_losses) == 16 and two_losses == pytest.approx(one_losses, rel=1e-4, abs=1e-6)
    assert two_losses[-1] < two_losses[0]  # it trained
    one_weights = load_file(str(one_dir / "adapter" / "adapter_model.safetensors"))
    two_weights = load_file(str(two_dir / "adapter" / "adapter_model.safetensors"))
    assert set(one_weights) == set(two_weights)
    for name, expected in one_weights.items():
        torch.testing.assert_close(two_weights[name], expected, rtol=1e-4, atol=1e-5, msg=name)
    assert two_metrics["validation"]["accuracy"] == pytest.approx(one_metrics["validation"]["accuracy"])


FSDP_ON_CPU = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
rdzv_backend: static
same_network: true
use_cpu: true
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_cpu_ram_efficient_loading: false
"""


@pytest.mark.distributed
def test_accelerate_fsdp_config_on_cpu_warns_and_trains_as_data_parallel(
    dropout_free_bert_dir, sentiment_csv, tmp_path
):
    """`accelerate launch` with an FSDP config on the CPU: Accelerate does not shard there (it enables FSDP
    for accelerators only), so the run is data parallel; senslora says so, and the result is the one of a
    single process with the global batch (losses and adapter), like the torchrun test above."""
    from safetensors.torch import load_file

    from senslora.cli import main
    from senslora.finetune.training.engine import FSDP_ON_CPU_MESSAGE

    config = tmp_path / "fsdp_cpu.yaml"
    config.write_text(FSDP_ON_CPU)
    common = ["--model", str(dropout_free_bert_dir), "--data", str(sentiment_csv), "--method", "lora"]
    common += ["--max-length", "32", "--epochs", "1", "--lora-dropout", "0", "--learning-rate", "5e-3"]
    common += ["--no-progress", "--log-every", "1", "--test-examples", "18"]  # 128 training rows: 8 whole steps
    launched = launch_two_processes(
        ["-m", "senslora.cli", "finetune", *common, "--batch-size", "8", "--output-dir", str(tmp_path / "two")],
        accelerate_config=config,
    )
    assert launched.returncode == 0, launched.stderr[-5000:]
    assert launched.stderr.count(FSDP_ON_CPU_MESSAGE) == 1  # the main process alone warns
    assert main(["finetune", *common, "--batch-size", "16", "--output-dir", str(tmp_path / "one")]) == 0

    logs = {}
    for name in ("one", "two"):
        lines = (tmp_path / name / "log.jsonl").read_text().splitlines()
        logs[name] = [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]
    assert len(logs["two"]) == 8 and logs["two"] == pytest.approx(logs["one"], rel=1e-4, abs=1e-6)
    one = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    two = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    assert set(one) == set(two)
    for name, expected in one.items():
        torch.testing.assert_close(two[name], expected, rtol=1e-4, atol=1e-5, msg=name)


def test_fsdp_config_with_ram_efficient_loading_is_refused_on_cpu(
    tiny_bert_dir, sentiment_csv, tmp_path, monkeypatch, capsys
):
    """Accelerate's default `fsdp_cpu_ram_efficient_loading` loads the model on the meta device in every
    process but the main one, which fails on the CPU ("Cannot copy out of meta tensor"): one line first."""
    from senslora.cli import main

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    output = tmp_path / "run"
    code = main(["finetune", "--model", str(tiny_bert_dir), "--data", str(sentiment_csv), "--output-dir", str(output)])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "fsdp_cpu_ram_efficient_loading" in error
    assert not output.exists()
