# shellcheck shell=bash
# Shared by the study scripts (sourced, not run): their flags, the PPO command of each scale, and
# `run_study`, which sweeps the variants through the harness on Slurm and has the report follow.
#
#   bash studies/<study>.sh [--scale cpu|gpu] [--seeds N] [--steps N] [--out DIR] [--runs DIR] [--template FILE]
#
# --out: where the report goes (default results/<study>); --runs: where run dirs go (default runs/).
#
# --scale gpu: the seed's command lines as they stand (hub models, the seed's batch sizes), for a GPU
#   cluster; W&B as configured in your environment.
# --scale cpu (default): the same studies on the offline stand-ins (python -m trl_ppo.offline_assets),
#   sized for a CPU (--steps PPO steps of 16 rollouts, default 48), on the cluster that `sbatch` reaches
#   (the lab's: scripts/slurm-up.sh), W&B offline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCALE=cpu SEEDS=5 STEPS=48 OUT="" RUNS=runs TEMPLATE=templates/trl.slurm_template
while [ $# -gt 0 ]; do
  case $1 in
    --scale) SCALE=$2 ;;
    --seeds) SEEDS=$2 ;;
    --steps) STEPS=$2 ;;
    --out) OUT=$2 ;;
    --runs) RUNS=$2 ;;
    --template) TEMPLATE=$2 ;;
    *) echo "unknown flag $1 (see studies/lib.sh)" >&2; exit 2 ;;
  esac
  shift 2
done
[ "$SCALE" = cpu ] || [ "$SCALE" = gpu ] || { echo "--scale must be cpu or gpu, not $SCALE" >&2; exit 2; }

if [ "$SCALE" = gpu ]; then
  PPO="python -m trl_ppo.ppo --ppo_config.log_with wandb"
  # TRL's own launcher flags (benchmark_level*.sh).
  LAUNCH=(--workers 10 --slurm-nodes 1 --slurm-gpus-per-task 1 --slurm-ntasks 1 --slurm-total-cpus 12)
else
  ASSETS=${ASSETS:-assets/offline-sizes}
  [ -f "$ASSETS/complete" ] || {
    python -m trl_ppo.offline_assets "$ASSETS" --sizes small medium large && touch "$ASSETS/complete"
  }
  export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  export OMP_NUM_THREADS=1
  # The PPO settings that learn on the 2-layer stand-in within a few minutes (tests/ppo/test_learning.py).
  PPO="python -m trl_ppo.ppo --ppo_config.log_with wandb --ppo_config.model_name $ASSETS/gpt2-imdb \
--ppo_config.reward_model sentiment-analysis:$ASSETS/distilbert-imdb --ppo_config.query_dataset $ASSETS/imdb \
--ppo_config.batch_size 16 --ppo_config.mini_batch_size 16 --ppo_config.ppo_epochs 2 \
--ppo_config.learning_rate 3e-3 --max_new_tokens 8 --ppo_config.steps $((16 * STEPS))"
  # A fake GPU per task, as the seed's flags ask; one CPU each, two tasks at a time on the two cores.
  LAUNCH=(--workers 2 --slurm-nodes 1 --slurm-gpus-per-task 1 --slurm-ntasks 1 --slurm-total-cpus 1
          --slurm-partition "${PARTITION:-debug}")
fi

# run_study NAME "REPORT FLAGS" --command ... [--command ...]: the variants x SEEDS seeds on Slurm, waited
# for, then `benchmark report REPORT FLAGS` (e.g. --preset baseline) as the follow-up job, into OUT
# (default results/NAME).
run_study() {
  local name=$1 report=$2
  shift 2
  local out run
  out=$(realpath -m "${OUT:-results/$name}")
  run=$(realpath -m "$RUNS/$name-$SCALE-$(date -u +%Y-%m-%dT%H-%M-%S)")
  mkdir -p "$run"
  [ "$SCALE" = gpu ] || export WANDB_DIR=$run
  # The run dir picks this sweep's runs (offline from its own W&B folder, else from the cloud project) by
  # the W&B ids the harness gave its tasks, or, through a template that hands them no ids (TRL's own),
  # by each run's group (the variant) and seed.
  local source=(--run-dir "$run")
  [ "$SCALE" = cpu ] || source+=(--entity "${WANDB_ENTITY:?set WANDB_ENTITY}" --project "${WANDB_PROJECT:-trl}")
  python benchmark/benchmark.py "$@" --num-seeds "$SEEDS" --start-seed 1 "${LAUNCH[@]}" \
    --slurm-template-path "$TEMPLATE" --run-dir "$run" --wait \
    --then "benchmark report ${source[*]} $report --output-dir $out"
  echo "$name: runs in $run, report in $out"
}
