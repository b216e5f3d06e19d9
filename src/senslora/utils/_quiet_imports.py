"""Silence two import-time notices of an optional dependency, before the package imports it.

peft imports bitsandbytes when it is installed, for every run, quantized or not. bitsandbytes then looks for
an optional CPU kernel on the Hugging Face hub through the `kernels` package, which says so twice when the
hub is unreachable or offline (`HF_HUB_OFFLINE=1`): "Skipping publisher trust check for
'kernels-community/quantization-bitsandbytes' ..." and, on CPUs with AVX512-BF16, "Failed to load CPU
gemm_4bit_forward ...". Neither changes what runs (bitsandbytes falls back to its own kernels). Only those
two notices are dropped; every other message of bitsandbytes and kernels still shows.
"""

import logging

_NOTICES = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
}

for _logger, _start in _NOTICES.items():
    logging.getLogger(_logger).addFilter(lambda record, start=_start: not record.getMessage().startswith(start))
