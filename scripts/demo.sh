#!/usr/bin/env bash
# The main job on its embedded default: PPO sentiment tuning on offline stand-ins for gpt2-imdb,
# distilbert-imdb and IMDB (built from data that PyPI packages ship), two variants (full
# fine-tuning, LoRA) x two seeds on the local pool, CPU only, W&B in offline mode; then the
# seed-aggregated report. A few minutes on 2 cores; no GPU, no account, no model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate

assets=assets/offline
[ -f "$assets/complete" ] || { python -m trl_ppo.offline_assets "$assets" && touch "$assets/complete"; }

run=runs/demo-$(date -u +%Y-%m-%dT%H-%M-%S)
export WANDB_MODE=offline WANDB_SILENT=true WANDB_DIR="$PWD/$run"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
ppo="python -m trl_ppo.ppo --ppo_config.log_with wandb --ppo_config.model_name $assets/gpt2-imdb \
--ppo_config.reward_model sentiment-analysis:$assets/distilbert-imdb --ppo_config.query_dataset $assets/imdb \
--ppo_config.batch_size 16 --ppo_config.mini_batch_size 16 --ppo_config.ppo_epochs 2 --max_new_tokens 8 \
--ppo_config.steps 480"
# LoRA adapts the output projection too: on this 2-layer stand-in, adapters on attention alone (PEFT's
# default for GPT-2) do not raise the reward (tests/ppo/test_learning.py, results/ppo/).
python benchmark/benchmark.py \
  --command "$ppo --ppo_config.exp_name sentiment --ppo_config.learning_rate 1e-3" \
  --command "$ppo --ppo_config.exp_name sentiment_peft --use_peft --lora_r 4 --lora_target_modules c_attn lm_head \
--ppo_config.learning_rate 2e-2" \
  --num-seeds 2 --workers 2 --run-dir "$run"
benchmark report --wandb-dir "$run/wandb" --run-dir "$run" --output-dir "$run/report"
echo "report: $run/report/index.html"
