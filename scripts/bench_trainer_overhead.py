"""Overhead of transformers' Trainer against a bare PyTorch loop, on the same model, data and batches.

Both loops train the default embedded model (conf/model/tiny_llama.yaml) from the same initial weights on the same
padded QA batches with AdamW and a linear schedule, for the same number of steps. They run alternately, several
times, in one process, so that machine noise hits both alike. Prints seconds per step and the ratio.

    python scripts/bench_trainer_overhead.py [--steps 200] [--repeats 3] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_common import default_world_and_tokenizer
from transformers import get_scheduler

from msa_bench.config.schema import TrainRecipe
from msa_bench.models.build import build_embedded_model
from msa_bench.training.data import ExampleDataset, PaddingCollator, qa_examples
from msa_bench.training.losses import mean_token_nll
from msa_bench.training.trainer import run_training


def bare_loop(model, examples, recipe: TrainRecipe, steps: int, pad_id: int, seed: int) -> float:
    collator = PaddingCollator(pad_id)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        ExampleDataset(examples),
        batch_size=recipe.batch_size,
        shuffle=True,
        collate_fn=collator,
        generator=generator,
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=int(recipe.warmup_ratio * steps), num_training_steps=steps
    )
    model.train()
    done = 0
    start = time.perf_counter()
    while done < steps:
        for batch in loader:
            loss = mean_token_nll(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    world, model_cfg, tokenizer = default_world_and_tokenizer()
    items = world.qa_files["full"]
    examples = qa_examples(tokenizer, items, model_cfg.max_position_embeddings)
    # Epochs chosen so the Trainer runs exactly `steps` optimizer steps.
    steps_per_epoch = -(-len(examples) // args.batch_size)
    recipe = TrainRecipe(epochs=args.steps / steps_per_epoch, learning_rate=1e-3, batch_size=args.batch_size)
    initial = build_embedded_model(model_cfg, tokenizer, seed=0).state_dict()

    timings: dict[str, list[float]] = {"trainer": [], "bare": []}
    for repeat in range(args.repeats):
        for name in ["trainer", "bare"] if repeat % 2 == 0 else ["bare", "trainer"]:
            model = build_embedded_model(model_cfg, tokenizer, seed=0)
            model.load_state_dict(initial)
            if name == "trainer":
                # Random batches, as in the bare loop (the pipeline's default groups QA by length, which would
                # make the Trainer look faster for a reason unrelated to its overhead).
                stats = run_training(
                    model,
                    ExampleDataset(examples),
                    recipe,
                    pad_token_id=tokenizer.pad_token_id,
                    seed=0,
                    device="cpu",
                    progress=False,
                    group_by_length=False,
                )
                assert stats.steps == args.steps, (stats.steps, args.steps)
                timings[name].append(stats.seconds)
            else:
                timings[name].append(
                    bare_loop(model, examples, recipe, args.steps, tokenizer.pad_token_id, 0)
                )
            print(f"repeat {repeat}: {name:8s} {timings[name][-1]:.2f} s for {args.steps} steps", flush=True)

    trainer_s = statistics.median(timings["trainer"]) / args.steps
    bare_s = statistics.median(timings["bare"]) / args.steps
    print(
        f"\nmodel {sum(p.numel() for p in model.parameters()):,} params, batch {args.batch_size} QA, "
        f"{args.steps} steps, median of {args.repeats}"
    )
    print(
        f"Trainer: {1000 * trainer_s:.1f} ms/step   bare loop: {1000 * bare_s:.1f} ms/step   "
        f"ratio Trainer/bare = {trainer_s / bare_s:.3f}"
    )


if __name__ == "__main__":
    main()
