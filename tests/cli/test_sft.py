"""Instruction data on TRL's SFTTrainer (loss on the completion only) and TrainingArguments passed through
`--config`: the first-step loss against a hand computation, a stock PEFT reload, NaN guard and resume."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import senslora.finetune.pipeline as pipeline
import senslora.finetune.preparation as preparation
from senslora.cli import main
from senslora.finetune.config_file import load_config_file
from senslora.finetune.data import PLAIN_INSTRUCTION_TEMPLATE
from senslora.finetune.training.engine import training_arguments
from senslora.finetune.training.settings import TrainingConfig

# Three training examples of different lengths (one batch of 3: right padding inside the batch), two for validation.
TRAIN = [
    {"prompt": "was the movie good", "response": "the movie was very good"},
    {"prompt": "the plot", "response": "boring"},
    {"prompt": "and the actors", "response": "the actors were not bad but the story was awful"},
]
VALIDATION = [
    {"prompt": "was the film fun", "response": "the film was fun"},
    {"prompt": "the story", "response": "very boring"},
]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


@pytest.fixture(scope="session")
def save_tiny_llama(tiny_decoder_tokenizer, tiny_llama):
    """Factory: save_tiny_llama(directory, chat=...) saves the tiny Llama and its tokenizer, with or without
    a chat template, and returns the directory."""

    def save(directory, *, chat: bool):
        tokenizer = tiny_decoder_tokenizer()
        if not chat:
            tokenizer.chat_template = None
        model = tiny_llama()
        model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return directory

    return save


def instruction_options(folder, model_dir) -> list:
    return [
        "--model", model_dir, "--data", write_jsonl(folder / "train.jsonl", TRAIN),
        "--validation-data", write_jsonl(folder / "validation.jsonl", VALIDATION), "--no-progress",
        "--batch-size", "3", "--max-length", "48", "--calibration-examples", "3", "--log-every", "1",
        "--max-generation-examples", "2", "--max-new-tokens", "4",
    ]  # fmt: skip


@pytest.fixture(scope="module", params=["chat", "plain"])
def sft_run(request, tmp_path_factory, save_tiny_llama):
    """One finished instruction run per prompt format: 3 epochs of one step, lr 1e-2, two TrainingArguments
    fields senslora has no option for passed through --config."""
    folder = tmp_path_factory.mktemp(f"sft-{request.param}")
    model_dir = save_tiny_llama(folder / "model", chat=request.param == "chat")
    config = folder / "trainer.json"
    config.write_text(json.dumps({"run_name": "passed-through", "dataloader_pin_memory": False}))
    run_dir = folder / "run"
    options = [*instruction_options(folder, model_dir), "--epochs", "3", "--learning-rate", "1e-2"]
    code = main(["finetune", *map(str, [*options, "--config", config, "--output-dir", run_dir])])
    assert code == 0
    return request.param, model_dir, run_dir


def completion_boundaries(tokenizer, prompt: str, response: str, chat: bool) -> tuple[list[int], int]:
    """(token ids of prompt + completion, number of prompt tokens), computed here from the tokenizer alone."""
    if chat:
        user = [{"role": "user", "content": prompt}]
        prompt_ids = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=True)
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": response}], tokenize=True, return_dict=True
        )
        prompt_ids, full_ids = prompt_ids["input_ids"], full["input_ids"]
    else:
        text = PLAIN_INSTRUCTION_TEMPLATE.format(prompt=prompt)
        prompt_ids = tokenizer(text)["input_ids"]
        full_ids = tokenizer(text + response + tokenizer.eos_token)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids)
    return full_ids, len(prompt_ids)


def test_first_step_loss_is_the_mean_cross_entropy_over_completion_tokens(sft_run):
    """The loss logged at step 1 (one batch holding all three examples, LoRA's B still zero, so the model is
    the base model) equals -sum log p(completion token | earlier tokens) / number of completion tokens,
    computed with plain torch from the base model's logits; the loss over every token differs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind, model_dir, run_dir = sft_run
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    completion_sum, completion_count, all_sum, all_count = 0.0, 0, 0.0, 0
    with torch.no_grad():
        for example in TRAIN:
            ids, prompt_length = completion_boundaries(
                tokenizer, example["prompt"], example["response"], kind == "chat"
            )
            logits = model(torch.tensor([ids])).logits[0]
            # position t predicts token t + 1
            losses = F.cross_entropy(logits[:-1].double(), torch.tensor(ids[1:]), reduction="none")
            completion_sum += float(losses[prompt_length - 1 :].sum())
            completion_count += len(ids) - prompt_length
            all_sum, all_count = all_sum + float(losses.sum()), all_count + len(ids) - 1
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    first = next(r for r in records if "loss" in r)
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(completion_sum / completion_count, abs=2e-5)
    assert abs(all_sum / all_count - completion_sum / completion_count) > 1e-2


def test_instruction_run_writes_a_stock_peft_adapter(sft_run):
    """The best adapter reloads with stock PEFT and scores exactly what the run recorded for it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from senslora.finetune.data import DataSpec, load_task_data
    from senslora.finetune.evaluation.evaluate import evaluate_model
    from senslora.finetune.tokenization import make_collator, tokenize_dataset

    kind, model_dir, run_dir = sft_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "instruction" and metrics["best_step"] > 0
    adapter = run_dir / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert json.loads((adapter / "senslora.json").read_text())["allocation"]["modules"]
    weights = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_B" in name and bool(value.abs().sum() > 0) for name, value in weights.items())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(base, adapter).eval()
    data = load_task_data(
        DataSpec(source=str(run_dir.parent / "train.jsonl"), validation_split=str(run_dir.parent / "validation.jsonl"))
    )
    validation = tokenize_dataset(data.validation, tokenizer, data, max_length=48)
    reloaded = evaluate_model(
        model, validation, make_collator(tokenizer, "instruction"), data, tokenizer=tokenizer,
        max_generation_examples=2, max_new_tokens=4, progress=False,
    )  # fmt: skip
    assert reloaded == pytest.approx(metrics["validation"], abs=1e-6)
    with model.disable_adapter():
        bare = evaluate_model(
            model, validation, make_collator(tokenizer, "instruction"), data, max_generation_examples=0, progress=False
        )
    assert abs(bare["loss"] - reloaded["loss"]) > 1e-3  # the adapter matters: the check above is not vacuous


def test_trainer_arguments_from_the_config_file_reach_the_trainer(sft_run):
    """run_name and dataloader_pin_memory came through --config into the arguments the Trainer ran with (its
    checkpoint's training_args.bin), next to SFTConfig's completion-only loss; config.json records them."""
    _, _, run_dir = sft_run
    (checkpoint,) = (run_dir / "checkpoints").glob("checkpoint-*")
    arguments = torch.load(checkpoint / "training_args.bin", weights_only=False)  # written by this test's run
    assert (arguments.run_name, arguments.dataloader_pin_memory) == ("passed-through", False)
    assert type(arguments).__name__ == "SFTConfig" and arguments.completion_only_loss is True
    assert (arguments.num_train_epochs, arguments.learning_rate, arguments.max_length) == (3, 1e-2, 48)
    recorded = json.loads((run_dir / "config.json").read_text())["trainer_arguments"]
    assert recorded == {"run_name": "passed-through", "dataloader_pin_memory": False}
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [entry["step"] for entry in history] == [1, 2, 3]  # each evaluation once, the last one too


def test_trainer_arguments_are_passed_as_they_are(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("avg_rank: 2\ndataloader-num-workers: 2\npush_to_hub: true\nhub_model_id: me/adapter\n")
    values = load_config_file(path)
    assert values["avg_rank"] == 2
    passed = values["trainer_arguments"]
    assert passed == {"dataloader_num_workers": 2, "push_to_hub": True, "hub_model_id": "me/adapter"}
    arguments = training_arguments(
        TrainingConfig(trainer_arguments={"dataloader_num_workers": 2, "hub_model_id": "me/adapter"}),
        tmp_path,
        torch.device("cpu"),
    )
    assert (arguments.dataloader_num_workers, arguments.hub_model_id) == (2, "me/adapter")
    assert training_arguments(TrainingConfig(), tmp_path, torch.device("cpu")).dataloader_num_workers == 0


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"num_train_epochs": 3}, "'num_train_epochs' is set by senslora: use --epochs"),
        ({"per_device_train_batch_size": 8}, "use --batch-size"),
        ({"lr_scheduler_type": "cosine"}, "use --scheduler"),
        ({"trainer_arguments": {"learning_rate": 0.1}}, "'learning_rate' is set by senslora: use --learning-rate"),
        ({"trainer_arguments": {"output_dir": "x"}}, "use --output-dir"),
        ({"load_best_model_at_end": True}, "keeps the best adapter in run_dir/adapter"),
        ({"dataloader_workers": 2}, "unknown option 'dataloader_workers' (neither a senslora option nor"),
        ({"trainer_arguments": {"colour": 1}}, "'colour' is not a field of transformers.TrainingArguments"),
        ({"trainer_arguments": [1]}, "'trainer_arguments' must be a mapping"),
    ],
)
def test_refused_trainer_arguments_end_before_loading(document, message, tmp_path, run_cli, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nothing may be loaded for this input error")

    monkeypatch.setattr(preparation, "load_model_and_tokenizer", refuse)
    monkeypatch.setattr(preparation, "load_task_data", refuse)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(document))
    code, _, err = run_cli(["finetune", "--config", path, "--output-dir", tmp_path / "out"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "out").exists()


def test_a_value_trainer_arguments_refuses_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=re.escape("TrainingArguments refuses the passed-through fields (optim)")):
        training_arguments(
            TrainingConfig(trainer_arguments={"optim": "no-such-optimizer"}), tmp_path, torch.device("cpu")
        )


def test_nan_loss_on_the_sft_path_names_step_and_module(tmp_path, capsys, run_cli, monkeypatch, save_tiny_llama):
    """A NaN from the second forward on: exit 3, the step and the first module with a non-finite output."""
    source = "model.layers.1.mlp.act_fn"
    calls = []
    build = pipeline.build_peft_model

    def build_and_poison(*args, **kwargs):
        model = build(*args, **kwargs)

        def poison(module, inputs, output):
            calls.append(1)
            return output * float("nan") if len(calls) >= 2 else output

        model.get_submodule("base_model.model." + source).register_forward_hook(poison)
        return model

    monkeypatch.setattr(pipeline, "build_peft_model", build_and_poison)
    model_dir = save_tiny_llama(tmp_path / "model", chat=True)
    options = [*instruction_options(tmp_path, model_dir), "--batch-size", "1", "--method", "lora"]
    capsys.readouterr()  # saving the model reported its progress
    code, _, err = run_cli(["finetune", *options, "--output-dir", tmp_path / "run"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 3 and len(lines) == 1, err
    assert "non-finite loss (nan) at step 2" in lines[0]
    assert f"first non-finite output in 'base_model.model.{source}'" in lines[0]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_interrupted_sft_run_resumes_exactly(tmp_path, run_cli, monkeypatch, save_tiny_llama):
    """Ctrl-C mid-epoch (step 5, checkpoint at step 3), then --resume: the same adapter, metrics and log as
    an uninterrupted run."""
    import senslora.finetune.training.settings as training

    model_dir = save_tiny_llama(tmp_path / "model", chat=True)
    options = [*instruction_options(tmp_path, model_dir), "--batch-size", "1", "--epochs", "3", "--method", "lora"]
    options += ["--save-steps", "3", "--learning-rate", "1e-2"]
    check = training._check_gradients

    def interrupt(model, step):
        if step == 5:
            raise KeyboardInterrupt
        check(model, step)

    run_dir, straight = tmp_path / "run", tmp_path / "straight"
    with monkeypatch.context() as patch:
        patch.setattr(training, "_check_gradients", interrupt)
        code, _, err = run_cli(["finetune", *options, "--output-dir", run_dir])
    assert code == 130, err
    assert (run_dir / "checkpoints" / "checkpoint-3" / "senslora" / "state.json").is_file()
    assert run_cli(["finetune", *options, "--output-dir", run_dir, "--resume"])[0] == 0
    assert run_cli(["finetune", *options, "--output-dir", straight])[0] == 0
    resumed = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    reference = load_file(straight / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], atol=1e-6, rtol=1e-6)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (run_dir, straight)]
    assert metrics[0]["global_step"] == metrics[1]["global_step"] == 9
    assert [h["step"] for h in metrics[0]["history"]] == [h["step"] for h in metrics[1]["history"]], metrics
    assert metrics[0]["history"] == pytest.approx(metrics[1]["history"], abs=1e-6)
    logs = [[json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()] for d in (run_dir, straight)]
    assert logs[0] == pytest.approx(logs[1], abs=1e-6)
