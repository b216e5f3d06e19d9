"""Silence one import-time notice of an optional dependency, before the package imports it.

peft imports bitsandbytes when it is installed; on CPUs with AVX512-BF16 bitsandbytes then logs that an
optional kernel from the Hugging Face hub is missing. Only that notice is dropped; every other message of
bitsandbytes still shows.
"""

import logging

logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward")
)
