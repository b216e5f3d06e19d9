"""A failed run does not block its own correction.

A new user's first try: review text in `review`, the label in `stars`, only `--text-column` given, on an
encoder (BERT). Without a label column the task would be inferred as causal_lm, which an encoder cannot be
trained for: the command must say "no label column: pass --label-column", name the columns, and leave no run
directory, so that the corrected command simply runs. A run that fails after its directory was created but
before anything but the configuration was written leaves nothing behind either; one that wrote results keeps
them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import senslora.finetune.pipeline as pipeline
import senslora.finetune.preparation as preparation

FAST = ["--no-progress", "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--calibration-examples", "16"]
GOOD = [
    "A warm, funny film with a cast that clearly enjoys itself.",
    "The story moves briskly and the ending lands.",
    "Beautifully shot and surprisingly moving.",
    "Sharp writing and a terrific lead performance.",
    "Smart, tender and never dull.",
]
BAD = [
    "Two hours I will never get back.",
    "The plot makes no sense and the acting is wooden.",
    "A dull, lifeless remake of a much better film.",
    "The jokes fall flat and the pacing drags.",
    "Loud, long and empty.",
]


@pytest.fixture
def reviews_csv(tmp_path) -> Path:
    """48 review snippets with a star rating (1, 2, 4 or 5) in a column named `stars`, none named `label`."""
    rng = random.Random(0)
    lines = ["review,stars"]
    for index in range(48):
        good = index % 2 == 1
        text = " ".join(rng.sample(GOOD if good else BAD, 2))
        lines.append(f'"{text}",{rng.choice([4, 5] if good else [1, 2])}')
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_encoder_without_label_column_is_refused_and_the_correction_runs(tiny_bert_dir, reviews_csv, tmp_path, run_cli):
    run_dir = tmp_path / "x"
    first = ["finetune", "--model", tiny_bert_dir, "--data", reviews_csv, "--text-column", "review"]
    code, _, err = run_cli([*first, "--output-dir", run_dir, *FAST, "--max-steps", "2"])
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "no label column: pass --label-column" in lines[0]
    assert "review, stars" in lines[0]
    assert not run_dir.exists()

    code, out, err = run_cli([*first, "--label-column", "stars", "--output-dir", run_dir, *FAST, "--max-steps", "2"])
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "classification" and metrics["global_step"] == 2
    assert metrics["data"]["label_names"] == ["1", "2", "4", "5"]


def test_encoder_check_needs_no_model_weights(tiny_bert_dir, reviews_csv, tmp_path, run_cli, monkeypatch):
    """The model kind comes from its config.json: the refusal comes before any weights are loaded."""

    def refuse_model(*args, **kwargs):
        raise RuntimeError("the model must not be loaded for this input error")

    monkeypatch.setattr(preparation, "load_model_and_tokenizer", refuse_model)
    for extra, message in [
        (["--text-column", "review"], "no label column: pass --label-column"),
        (["--text-column", "review", "--task", "causal_lm"], "task causal_lm needs a decoder"),
    ]:
        argv = ["finetune", "--model", tiny_bert_dir, "--data", reviews_csv, *extra, "--output-dir", tmp_path / "r"]
        code, _, err = run_cli([*argv, *FAST])
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "r").exists()


def test_decoder_without_label_column_still_trains_as_causal_lm(tiny_llama_dir, reviews_csv, tmp_path, run_cli):
    """The refusal is for encoders only: a decoder given text alone learns it as a language model."""
    run_dir = tmp_path / "lm"
    argv = ["finetune", "--model", tiny_llama_dir, "--data", reviews_csv, "--text-column", "review"]
    code, _, err = run_cli([*argv, "--output-dir", run_dir, *FAST, "--max-steps", "1"])
    assert code == 0, err
    assert json.loads((run_dir / "metrics.json").read_text())["task"] == "causal_lm"


def fail_with(error: BaseException):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize(
    ("step", "error", "code"),
    [
        ("run_sensitivity", ValueError("the calibration data is empty after tokenization"), 2),
        ("build_peft_model", RuntimeError("out of memory"), 1),
        ("train", KeyboardInterrupt(), 130),
    ],
    ids=["sensitivity-bad-input", "adapter-internal-error", "interrupted-before-training"],
)
def test_run_failing_before_results_leaves_no_directory(
    step, error, code, tiny_bert_dir, sentiment_csv, tmp_path, run_cli, monkeypatch
):
    run_dir = tmp_path / "run"
    argv = ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST]
    if step != "run_sensitivity":  # lora: no sensitivity results are written before the adapter is built
        argv += ["--method", "lora"]
    monkeypatch.setattr(pipeline, step, fail_with(error))
    assert run_cli(argv)[0] == code
    assert not run_dir.exists()
    monkeypatch.undo()
    code, _, err = run_cli([*argv, "--max-steps", "1"])
    assert code == 0, err
    assert (run_dir / "metrics.json").exists()


def test_empty_output_directory_given_by_the_user_is_kept(tiny_bert_dir, sentiment_csv, tmp_path, run_cli, monkeypatch):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    monkeypatch.setattr(pipeline, "build_peft_model", fail_with(RuntimeError("out of memory")))
    argv = ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST]
    assert run_cli([*argv, "--method", "lora"])[0] == 1
    assert run_dir.is_dir() and not any(run_dir.iterdir())


def test_run_failing_after_results_keeps_them(tiny_bert_dir, sentiment_csv, tmp_path, run_cli, monkeypatch):
    """sensitivity.json and ranks.json are results: a later failure must not delete them."""
    run_dir = tmp_path / "run"
    monkeypatch.setattr(pipeline, "build_peft_model", fail_with(RuntimeError("out of memory")))
    argv = ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST]
    assert run_cli(argv)[0] == 1
    assert {p.name for p in run_dir.iterdir()} == {"config.json", "sensitivity.json", "ranks.json"}


def test_run_failing_after_a_checkpoint_keeps_it(tiny_bert_dir, sentiment_csv, tmp_path, run_cli, monkeypatch):
    """A failure in training after the first checkpoint leaves the run to --resume."""
    import senslora.finetune.run_files.checkpoints as checkpoint_files
    import senslora.finetune.training.callbacks as callbacks

    run_dir = tmp_path / "run"
    save = callbacks.write_checkpoint_state

    def save_then_fail(*args, **kwargs):
        save(*args, **kwargs)
        raise RuntimeError("disk full")

    monkeypatch.setattr(callbacks, "write_checkpoint_state", save_then_fail)
    argv = ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST]
    assert run_cli([*argv, "--method", "lora", "--save-steps", "1"])[0] == 1
    assert checkpoint_files.last_checkpoint(run_dir) is not None  # complete: the run can be resumed from it
    assert (run_dir / "config.json").is_file() and any((run_dir / "checkpoints").iterdir())


@pytest.mark.parametrize(("method", "kept"), [("lora", False), ("senslora", True)])
def test_interrupt_message_says_whether_a_run_can_resume(
    method, kept, tiny_bert_dir, sentiment_csv, tmp_path, run_cli, monkeypatch
):
    """Ctrl-C before training: lora has written nothing (the directory goes, so no --resume hint);
    senslora has written sensitivity.json and ranks.json (the directory stays, and --resume is named)."""
    run_dir = tmp_path / "run"
    monkeypatch.setattr(pipeline, "train", fail_with(KeyboardInterrupt()))
    argv = ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST]
    code, _, err = run_cli([*argv, "--method", method])
    assert code == 130 and run_dir.exists() is kept
    if kept:
        assert f"the unfinished run in {run_dir} continues with --resume" in err
    else:
        assert "no run directory was kept" in err and "--resume" not in err
