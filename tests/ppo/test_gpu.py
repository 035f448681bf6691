"""The GPU path: bf16 autocast, static KV cache, memory metric. Skipped without CUDA."""

import math

import pytest
import torch


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_steps_on_gpu(run_ppo, small: list[str]) -> None:
    history = run_ppo(*small, "--ppo_config.steps", "48", "--bf16")
    last = history[-1]
    assert math.isfinite(last["env/reward_mean"]) and math.isfinite(last["ppo/loss/total"])
    assert 0 < last["perf/peak_gpu_mem_gib"] < 10
    # The first pass over fresh rollouts reproduces their log-probabilities closely, even in bf16.
    assert abs(last["ppo/policy/ratio"] - 1) < 0.1
