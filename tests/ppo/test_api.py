"""Classic TRL's public PPO API from trl_ppo: TRL's gpt2-sentiment notebook, its imports changed, on the stand-ins.

The notebook's code is kept as it is (its cells in order: dataset, models, trainer, reward pipeline, training loop,
model inspection, saving), except for what the stand-ins and a test need: local paths for the hub names, the first
256 reviews instead of 25,000, batches of 8 and two steps, W&B offline.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset
from peft import LoraConfig
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, pipeline

from trl_ppo import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, create_reference_model, set_seed
from trl_ppo.core import LengthSampler


def build_dataset(config, dataset_name="imdb", input_min_text_length=2, input_max_text_length=8):  # noqa: ANN001, ANN201
    """The notebook's, but for the slice of the split."""
    tokenizer = AutoTokenizer.from_pretrained(config.model_name)
    tokenizer.pad_token = tokenizer.eos_token
    # load imdb with datasets
    ds = load_dataset(dataset_name, split="train[:256]")
    ds = ds.rename_columns({"text": "review"})
    ds = ds.filter(lambda x: len(x["review"]) > 200, batched=False)

    input_size = LengthSampler(input_min_text_length, input_max_text_length)

    def tokenize(sample):  # noqa: ANN001, ANN202
        sample["input_ids"] = tokenizer.encode(sample["review"])[: input_size()]
        sample["query"] = tokenizer.decode(sample["input_ids"])
        return sample

    ds = ds.map(tokenize, batched=False)
    ds.set_format(type="torch")
    return ds


def collator(data):  # noqa: ANN001, ANN201
    return dict((key, [d[key] for d in data]) for key in data[0])  # noqa: C402


def test_the_gpt2_sentiment_notebook_runs_with_trl_ppo(assets: Path, wandb_offline: Path, tmp_path: Path) -> None:
    import wandb

    config = PPOConfig(
        model_name=str(assets / "gpt2-imdb"),
        learning_rate=1.41e-5,
        log_with="wandb",
        batch_size=8,
        mini_batch_size=4,
    )
    sent_kwargs = {"top_k": None, "function_to_apply": "none", "batch_size": 16}
    wandb.init()

    dataset = build_dataset(config, dataset_name=str(assets / "imdb"))
    model = AutoModelForCausalLMWithValueHead.from_pretrained(config.model_name)
    ref_model = AutoModelForCausalLMWithValueHead.from_pretrained(config.model_name)
    tokenizer = AutoTokenizer.from_pretrained(config.model_name)
    tokenizer.pad_token = tokenizer.eos_token

    ppo_trainer = PPOTrainer(config, model, ref_model, tokenizer, dataset=dataset, data_collator=collator)

    device = ppo_trainer.accelerator.device
    if ppo_trainer.accelerator.num_processes == 1:
        device = 0 if torch.cuda.is_available() else "cpu"  # to avoid a `pipeline` bug
    sentiment_pipe = pipeline("sentiment-analysis", model=str(assets / "distilbert-imdb"), device=device)

    gen_kwargs = {
        "min_length": -1, "top_k": 0.0, "top_p": 1.0, "do_sample": True, "pad_token_id": tokenizer.eos_token_id
    }
    output_min_length = 4
    output_max_length = 16
    output_length_sampler = LengthSampler(output_min_length, output_max_length)
    generation_kwargs = {
        "min_length": -1,
        "top_k": 0.0,
        "top_p": 1.0,
        "do_sample": True,
        "pad_token_id": tokenizer.eos_token_id,
    }

    all_stats = []
    for epoch, batch in enumerate(ppo_trainer.dataloader):
        if epoch == 2:
            break
        assert set(batch) == {"input_ids", "query", "label"}  # the review column left out, as classic TRL's
        query_tensors = batch["input_ids"]
        assert len(query_tensors) == config.batch_size

        #### Get response from gpt2
        if epoch == 0:  # the notebook: one query at a time, the prompt returned
            response_tensors = []
            for query in query_tensors:
                gen_len = output_length_sampler()
                generation_kwargs["max_new_tokens"] = gen_len
                query_response = ppo_trainer.generate(query, **generation_kwargs)
                assert query_response.dim() == 2 and torch.equal(query_response[0, : len(query)], query)
                query_response = query_response.squeeze()
                response_len = len(query_response) - len(query)
                assert 1 <= response_len <= gen_len
                response_tensors.append(query_response[-response_len:])
        else:  # examples/scripts/ppo.py: the whole list, without prompts, and the reference's responses
            response_tensors, ref_response_tensors = ppo_trainer.generate(
                query_tensors, return_prompt=False, generate_ref_response=True, length_sampler=output_length_sampler,
                **generation_kwargs,
            )
            batch["ref_response"] = tokenizer.batch_decode(ref_response_tensors)
            for responses in (response_tensors, ref_response_tensors):
                assert len(responses) == config.batch_size and all(r.dim() == 1 for r in responses)
                assert all(1 <= len(r) < output_max_length for r in responses)
                # No padding: a response's EOS (the pad token) can only be its last token.
                assert all(tokenizer.eos_token_id not in r[:-1].tolist() for r in responses)
        batch["response"] = [tokenizer.decode(r.squeeze()) for r in response_tensors]

        #### Compute sentiment score
        texts = [q + r for q, r in zip(batch["query"], batch["response"], strict=True)]
        pipe_outputs = sentiment_pipe(texts, **sent_kwargs)
        positive_scores = [item["score"] for output in pipe_outputs for item in output if item["label"] == "POSITIVE"]
        rewards = [torch.tensor(score) for score in positive_scores]

        #### Run PPO step
        stats = ppo_trainer.step(query_tensors, response_tensors, rewards)
        ppo_trainer.log_stats(stats, batch, rewards)
        all_stats.append(stats)

    assert len(all_stats) == 2
    for stats in all_stats:
        for key in ["objective/kl", "objective/kl_coef", "ppo/loss/total", "ppo/mean_scores", "ppo/policy/clipfrac",
                    "ppo/val/var_explained", "tokens/responses_len_mean", "time/ppo/total"]:
            assert isinstance(stats[key], float) and np.isfinite(stats[key]), key
        assert isinstance(stats["objective/kl_dist"], np.ndarray) and stats["objective/kl_dist"].shape == (8,)
    assert all_stats[1]["ppo/mean_scores"] == pytest.approx(float(np.mean(positive_scores)), rel=1e-5)

    #### Model inspection: both models generate from a 1-D query, as the notebook calls them
    query = dataset[0]["input_ids"].to(device)
    for generator in (ref_model, model):
        query_response = generator.generate(query, max_new_tokens=4, **gen_kwargs).squeeze()
        assert torch.equal(query_response[: len(query)], query) and len(query_response) > len(query)

    #### Save model: the value head goes along and comes back
    ppo_trainer.save_pretrained(tmp_path / "trainer")
    model.save_pretrained(tmp_path / "model")
    reloaded = AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path / "model")
    torch.testing.assert_close(reloaded.v_head.state_dict(), model.v_head.state_dict(), rtol=0, atol=0)
    for name, weight in model.pretrained_model.state_dict().items():
        torch.testing.assert_close(reloaded.pretrained_model.state_dict()[name], weight, rtol=0, atol=0, msg=name)
    from_trainer = AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path / "trainer")
    torch.testing.assert_close(from_trainer.v_head.state_dict(), model.v_head.state_dict(), rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(tmp_path / "trainer")("Hello world")["input_ids"] == [15496, 995]

    #### What W&B got: each step's statistics with the reward's, and the game log
    wandb.finish()
    (run_file,) = (wandb_offline / "wandb").glob("offline-run-*/run-*.wandb")
    dump = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)],
                          capture_output=True, text=True, check=True, timeout=120).stdout
    records = [json.loads(line) for line in dump.splitlines()]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    configs = [r["config"] for r in records if r["type"] == "config"]
    assert len(history) == 2
    for logged, stats in zip(history, all_stats, strict=True):
        assert float(logged["objective/kl"]) == pytest.approx(stats["objective/kl"], rel=1e-6)
        for key in ["env/reward_mean", "env/reward_std", "env/reward_dist._type", "objective/kl_dist._type",
                    "ppo/loss/total", "game_log._type"]:
            assert key in logged, key
    assert float(history[1]["env/reward_mean"]) == pytest.approx(float(np.mean(positive_scores)), rel=1e-5)
    assert any("trl_ppo_trainer_config" in json.dumps(c) for c in configs)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=3, n_head=2, n_positions=32, bos_token_id=1,
                               eos_token_id=1)).save_pretrained(folder)
    return folder


def word_level_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer for the tiny model's 40 tokens, t1 its EOS and padding."""
    vocab = {f"t{i}": i for i in range(40)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                   eos_token="t1", pad_token="t1")


def test_peft_model_saves_and_reloads_its_adapters_and_value_head(tiny_gpt2: Path, tmp_path: Path) -> None:
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn"], bias="none", task_type="CAUSAL_LM")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_gpt2, peft_config=lora)
    assert model.is_peft_model
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would hide the adapters
            torch.nn.init.normal_(p)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path, is_trainable=True)
    assert reloaded.is_peft_model
    torch.testing.assert_close(reloaded.state_dict(), model.state_dict(), rtol=0, atol=0)
    assert any(p.requires_grad for name, p in reloaded.named_parameters() if "lora_" in name)


def test_reference_model_shares_and_freezes_the_lower_layers(tiny_gpt2: Path) -> None:
    model = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_gpt2)
    reference = create_reference_model(model, num_shared_layers=2)
    assert not any(p.requires_grad for p in reference.parameters())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert not any(".h.0." in n or ".h.1." in n or "wte" in n or "wpe" in n for n in trainable)
    assert any(".h.2." in n for n in trainable) and "v_head.summary.weight" in trainable


def test_trainer_makes_the_reference_seeds_and_checks_its_batch(tiny_gpt2: Path) -> None:
    tokenizer = word_level_tokenizer()
    config = PPOConfig(batch_size=4, mini_batch_size=2, seed=3)
    responses = []
    for _ in range(2):
        trainer = PPOTrainer(config, AutoModelForCausalLMWithValueHead.from_pretrained(tiny_gpt2), tokenizer=tokenizer)
        assert trainer.ref_model is not None and trainer.dataloader is None
        responses.append(trainer.generate([torch.tensor([5, 6, 7]), torch.tensor([8])], max_new_tokens=5,
                                          do_sample=True, top_k=0, top_p=1.0, return_prompt=False))
    for first, second in zip(*responses, strict=True):
        assert torch.equal(first, second)  # the constructor seeded generation with config.seed
    with pytest.raises(ValueError, match="batch_size is 4"):
        trainer.step([torch.tensor([5])] * 3, [torch.tensor([6])] * 3, [torch.tensor(1.0)] * 3)
    queries = [torch.tensor([5, 6]), torch.tensor([7]), torch.tensor([8, 9, 10]), torch.tensor([11])]
    responses = trainer.generate(queries, return_prompt=False, max_new_tokens=3, do_sample=True, top_k=0, top_p=1.0)
    rewards = [torch.tensor(float(i)) for i in range(4)]
    stats = trainer.step(queries, responses, rewards)
    assert stats["ppo/mean_scores"] == pytest.approx(1.5)
    import wandb

    trainer.log_stats(stats, {"query": ["a"] * 4, "response": ["b"] * 4}, rewards)  # log_with none: nothing
    assert wandb.run is None
    set_seed(0)  # what the trainer seeded is not left for the tests after this one
