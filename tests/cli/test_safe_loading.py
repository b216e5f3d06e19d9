"""Loading on the command line runs no code from the files it reads: a config file cannot construct Python
objects, and a model's own code runs only with --trust-remote-code."""

from __future__ import annotations

import senslora.finetune.preparation as preparation


def test_config_file_cannot_run_code(tiny_bert_dir, sentiment_csv, tmp_path, run_cli, stderr_lines):
    marker = tmp_path / "code-ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    code, _, err = run_cli(["finetune", "--config", config, "--output-dir", tmp_path / "out"])
    assert code == 2 and "is not valid YAML" in err and len(stderr_lines(err)) == 1
    assert not marker.exists()


def test_trust_remote_code_only_with_the_flag(tiny_bert_dir, sentiment_csv, tmp_path, run_cli, monkeypatch):
    import inspect

    from senslora.finetune.config import RunConfig
    from senslora.finetune.models import load_model_and_tokenizer

    assert RunConfig().trust_remote_code is False
    assert inspect.signature(load_model_and_tokenizer).parameters["trust_remote_code"].default is False
    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise ValueError("stop here")

    monkeypatch.setattr(preparation, "load_model_and_tokenizer", record)
    args = ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--no-progress"]
    assert run_cli([*args, "--output-dir", tmp_path / "a"])[0] == 2
    assert run_cli([*args, "--output-dir", tmp_path / "b", "--trust-remote-code"])[0] == 2
    assert seen == [False, True]
