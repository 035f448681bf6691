#!/usr/bin/env bash
# On the GPU machine (device tool: `run` with carry [".whl"], timeout_s 600): install the carried
# wheels, run the PPO throughput bench at gpt2 and gpt2-xl shapes (ours and classic TRL 0.11.4 in the
# same run), then the GPU test. Everything printed is also kept in $OUT/ for results/ppo/.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 WANDB_MODE=disabled
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, pyarrow, fsspec; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'pyarrow', pyarrow.__version__, 'fsspec', fsspec.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
# The figures first; the GPU test (it builds the offline stand-ins first) with what is left of
# the device tool's 600 s per command.
# Each preset measures ours in fp32, ours under bf16 autocast and classic TRL, in that order.
timeout 170 python3 bench/ppo_throughput.py --preset gpt2 --steps 3 --warmup 1 2>&1 | tee "$OUT/gpt2.txt"
timeout 290 python3 bench/ppo_throughput.py --preset gpt2-xl --steps 2 --warmup 1 2>&1 | tee "$OUT/gpt2-xl.txt"
timeout 100 python3 -m pytest -q tests/ppo/test_gpu.py 2>&1 | tail -5 | tee "$OUT/test_gpu.txt"
