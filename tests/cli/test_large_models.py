"""The large-model paths end to end on a tiny Llama on the CPU: bf16 weights, QLoRA (NF4) through the command
line, and a sensitivity pass on a model offloaded to disk by Accelerate's big-model inference.

References are independent of senslora's own loading: the adapter is reloaded with stock PEFT
(`PeftModel.from_pretrained`) onto bases loaded by plain transformers, and the offloaded sensitivity is
compared with the in-memory one.
"""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch
from safetensors.torch import load_file

from senslora.reporting.kendall import kendall_tau_b

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import bitsandbytes as bnb

WORDS = ["the", "a", "movie", "film", "was", "is", "good", "bad", "great", "plot", "story", "and", "not", "very"]
CALIBRATION = ["--max-length", "16", "--calibration-examples", "8", "--no-progress"]
FAST = [*CALIBRATION, "--batch-size", "4"]


@pytest.fixture(scope="module")
def word_text(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "words.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(80)) + "\n")
    return path


def _nf4_base(directory):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from senslora.finetune.model_loading import keep_4bit_weights_unpacked

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(directory, quantization_config=config, device_map={"": "cpu"})
    # The tiny model's 32-wide layers are narrower than one 4-bit block (64), which bitsandbytes' AVX512-BF16
    # eval-time repacking cannot handle; the weights themselves are the stock load's.
    keep_4bit_weights_unpacked(model)
    return model


def test_nf4_finetune_through_the_cli_reloads_with_stock_peft(run_cli, tiny_llama_dir, word_text, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    argv = ["finetune", "--model", tiny_llama_dir, "--data", word_text, "--quantization", "nf4", "--max-steps", "3"]
    code, out, err = run_cli([*argv, *FAST, "--output-dir", run])
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["quantization"] == "nf4"
    side = json.loads((run / "adapter" / "senslora.json").read_text())
    assert side["model_loading"]["quantization"] == "nf4" and side["sensitivity"]["model_loading"]["dtype"] == "float32"
    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert saved and all(t.dtype == torch.float32 for t in saved.values())  # adapters stay float32
    ranks = {m["name"]: m["rank"] for m in json.loads((run / "ranks.json").read_text())["modules"]}
    assert len(set(ranks.values())) > 1  # a real senslora allocation, not uniform ranks

    batch = torch.randint(3, 30, (2, 10))
    outputs = {}
    for name, base in [
        ("nf4", _nf4_base(tiny_llama_dir)),
        ("full", AutoModelForCausalLM.from_pretrained(tiny_llama_dir)),
    ]:
        model = PeftModel.from_pretrained(base, run / "adapter").eval()
        if name == "nf4":
            query = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
            assert isinstance(query, bnb.nn.Linear4bit)
        loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        for key, tensor in saved.items():  # every trained adapter tensor arrives unchanged, at its rank
            match = [
                v for k, v in loaded.items() if k.replace(".default", "").endswith(key.removeprefix("base_model."))
            ]
            assert len(match) == 1 and torch.equal(match[0].float(), tensor), key
        with torch.no_grad():
            outputs[name] = model(input_ids=batch).logits
    difference = (outputs["nf4"] - outputs["full"]).abs().max()
    assert 0 < difference < 0.5  # the same adapter on two bases that differ by 4-bit rounding only


def test_bf16_weights_train_float32_adapters(run_cli, tiny_llama_dir, word_text, tmp_path):
    run = tmp_path / "run"
    argv = ["finetune", "--model", tiny_llama_dir, "--data", word_text, "--model-dtype", "bfloat16", "--max-steps", "2"]
    code, _, err = run_cli([*argv, *FAST, "--output-dir", run])
    assert code == 0, err
    side = json.loads((run / "adapter" / "senslora.json").read_text())
    assert side["model_loading"]["dtype"] == "bfloat16"
    assert all(t.dtype == torch.float32 for t in load_file(str(run / "adapter" / "adapter_model.safetensors")).values())
    sensitivity = json.loads((run / "sensitivity.json").read_text())
    assert sensitivity["model_loading"]["dtype"] == "bfloat16"
    assert all(m["trace"] > 0 for m in sensitivity["modules"])


def test_ranks_on_the_nf4_model_against_the_float32_model(run_cli, tiny_llama_dir, word_text, tmp_path):
    """Not asserted equal (4-bit rounding moves the inputs of later layers); the agreement is printed."""
    traces = {}
    for name, extra in [("float32", []), ("nf4", ["--quantization", "nf4"])]:
        output = tmp_path / f"{name}.json"
        code, _, err = run_cli(
            ["sensitivity", "--model", tiny_llama_dir, "--data", word_text, *CALIBRATION, *extra, "--output", output]
        )
        assert code == 0, err
        document = json.loads(output.read_text())
        assert document["model_loading"]["quantization"] == ("none" if name == "float32" else "nf4")
        traces[name] = {m["name"]: m["trace"] for m in document["modules"]}
    assert traces["nf4"].keys() == traces["float32"].keys()
    names = sorted(traces["float32"])
    tau = kendall_tau_b([traces["float32"][n] for n in names], [traces["nf4"][n] for n in names])
    print(f"Kendall tau of the activation traces, NF4 vs float32, {len(names)} modules: {tau:.3f}")
    assert -1 <= tau <= 1


def test_offloaded_model_gives_the_in_memory_sensitivities(run_cli, tiny_llama_dir, word_text, tmp_path):
    from transformers import AutoModelForCausalLM

    weights = (tiny_llama_dir / "model.safetensors").stat().st_size
    cap = f"cpu={weights // 3}B"  # a third of the weights fit in memory: the rest goes to disk
    placed = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, device_map="auto", max_memory={"cpu": weights // 3}, offload_folder=str(tmp_path / "probe")
    )
    assert "disk" in set(placed.hf_device_map.values())  # the cap really offloads
    results = {}
    for name, extra in [
        ("memory", []),
        ("offload", ["--device-map", "auto", "--max-memory", cap, "--offload-folder", tmp_path / "off"]),
    ]:
        output = tmp_path / f"{name}.json"
        code, _, err = run_cli(
            ["sensitivity", "--model", tiny_llama_dir, "--data", word_text, *CALIBRATION, *extra, "--output", output]
        )
        assert code == 0, err
        results[name] = json.loads(output.read_text())
    assert results["offload"]["model_loading"]["device_map"] == "auto"
    assert "disk" in results["offload"]["model_loading"]["placement"]  # the command's own model was offloaded
    assert results["offload"]["model_loading"]["max_memory"] == {"cpu": weights // 3}
    for memory, offload in zip(results["memory"]["modules"], results["offload"]["modules"], strict=True):
        assert memory["name"] == offload["name"]
        for key in ("trace", "topk", "effective_rank"):
            assert offload[key] == pytest.approx(memory[key], rel=1e-5), (memory["name"], key)


@pytest.mark.parametrize(("method", "steps"), [("lora", 2), ("eva", 2), ("adalora", 10)])
def test_baselines_train_on_an_nf4_base(method, steps, run_cli, tiny_llama_dir, word_text, tmp_path):
    run = tmp_path / "run"
    argv = ["finetune", "--model", tiny_llama_dir, "--data", word_text, "--quantization", "nf4", "--method", method]
    code, _, err = run_cli([*argv, "--max-steps", steps, *FAST, "--output-dir", run])
    assert code == 0, err
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == ("ADALORA" if method == "adalora" else "LORA")
    assert json.loads((run / "adapter" / "senslora.json").read_text())["model_loading"]["quantization"] == "nf4"


def test_4bit_layers_stay_in_the_portable_layout_through_eval_and_training(tiny_llama_dir):
    """bitsandbytes repacks 4-bit weights for AVX512-BF16 CPUs at the first no-grad eval forward; senslora
    turns that off on every Linear4bit so training after an evaluation still runs (checked on any CPU)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from senslora.finetune.model_loading import keep_4bit_weights_unpacked

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=config, device_map={"": "cpu"})
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert keep_4bit_weights_unpacked(model) == len(layers) > 0
    assert not any(layer.support_avx512bf16_for_cpu for layer in layers)
    batch = torch.randint(3, 30, (2, 10))
    with torch.no_grad():
        model.eval()(input_ids=batch)
    assert not any(getattr(layer.weight.quant_state, "packing_format_for_cpu", False) for layer in layers)
