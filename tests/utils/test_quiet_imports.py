"""Importing senslora with the hub offline prints none of bitsandbytes' kernel-lookup notices."""

from __future__ import annotations

import os
import subprocess
import sys

NOTICE = "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"


def stderr_of(code: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stderr


def test_bitsandbytes_alone_prints_the_notice():
    # The reference: without senslora's filter the notice shows, so the next test can fail.
    assert NOTICE in stderr_of("import bitsandbytes")


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
