"""Importing senslora with the hub offline prints none of bitsandbytes' kernel-lookup notices."""

from __future__ import annotations

import os
import subprocess
import sys

NOTICE = "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"


def stderr_of(code: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stderr


def _emit(prefix: str) -> str:
    """Code that logs both notices as bitsandbytes and kernels do (whether this installation emits them at
    import depends on the kernels version and the hub cache), after `prefix`."""
    return (
        f"{prefix}import logging; "
        f"logging.getLogger('kernels._internals.hf_hub').warning({NOTICE!r} + ' (offline)'); "
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('Failed to load CPU gemm_4bit_forward: x')"
    )


def test_the_notices_show_without_senslora():
    # The reference: without senslora's filter both notices show, so the next tests can fail.
    err = stderr_of(_emit(""))
    assert NOTICE in err and "gemm_4bit_forward" in err, err


def test_the_notices_are_dropped_once_senslora_is_imported():
    err = stderr_of(_emit("import senslora; "))
    assert NOTICE not in err and "gemm_4bit_forward" not in err, err


def test_senslora_and_its_fine_tuning_modules_print_nothing_of_it():
    err = stderr_of("import senslora, senslora.finetune.models, senslora.finetune.pipeline, peft, bitsandbytes")
    assert NOTICE not in err and "gemm_4bit_forward" not in err, err


def test_other_messages_of_those_loggers_still_show():
    code = (
        "import senslora, logging; "
        "logging.getLogger('kernels._internals.hf_hub').warning('another kernels notice'); "
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('another bitsandbytes notice')"
    )
    err = stderr_of(code)
    assert "another kernels notice" in err and "another bitsandbytes notice" in err, err
