"""Answer log-likelihoods for the TOFU eval requests: msa_bench's `score_answers` against lm-eval's HFLM.

Both score every (question, answer) pair the TOFU metrics read, with the same batch size: forget10_perturbed and the
first `retain_eval_size` retain_perturbed items (answer, paraphrased and perturbed answers), real_authors_perturbed and
world_facts_perturbed (answer and perturbed answers); `--max-items N` keeps the first N items of each set.

Two models, fresh weights (speed does not depend on them):
- `--model tiny` (the default): the default embedded model, conf/model/tiny_llama.yaml (1.4M parameters);
- `--model large`: a random Llama with hidden 512, 8 layers and a 32k vocabulary (58M parameters), where the model's
  compute dominates as it does at paper scale; on a 2-core CPU use it with `--max-items 25` or so.

msa_bench scores the answers of one question from one pass over its prompt (core/shared_prefix.py) and projects onto
the vocabulary only the hidden states that predict a scored token; lm-eval runs every (context, continuation) pair in
full and takes the log-softmax over the vocabulary at every position. The script prints both sides' token counts.

msa_bench scores " answer" + eos after "bos Question: ...\\nAnswer:" (`encode_qa`); lm-eval is given the same tokens:
the continuation carries the eos token's text, which the tokenizer turns into the eos id, and its tokenizer prepends
bos (`tokenizer_adding_bos`, as the lm_eval suite does). The summed log-likelihoods must then agree. The two run
alternately, several times, in one process, so that machine noise hits both alike; both times include tokenization.

    python scripts/bench_loglikelihood.py [--model tiny|large] [--max-items N] [--repeats 3] [--batch-size 32]
                                          [--threads 2]   (use --threads 1 on a shared machine)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from bench_common import default_world_and_tokenizer, random_llama

from msa_bench.config.schema import BenchmarkConfig
from msa_bench.data.formatting import format_answer, format_prompt
from msa_bench.metrics.core.scoring import AnswerScores, encode_pairs, score_answers
from msa_bench.metrics.lm_eval_suite import make_lm
from msa_bench.models.build import build_embedded_model

LARGE_MODEL = dict(hidden_size=512, num_layers=8, vocab_size=32_000)


def tofu_requests(
    qa_files: dict[str, list[dict]], retain_eval_size: int, max_items: int | None = None
) -> dict[str, list[tuple[str, str]]]:
    """Eval set -> the (question, answer) pairs its TOFU metrics score (of its first `max_items` items)."""
    sets = {
        "forget10": qa_files["forget10_perturbed"],
        "retain": qa_files["retain_perturbed"][:retain_eval_size],
        "real_authors": qa_files["real_authors_perturbed"],
        "world_facts": qa_files["world_facts_perturbed"],
    }
    sets = {name: items[:max_items] for name, items in sets.items()}
    requests: dict[str, list[tuple[str, str]]] = {}
    for name, items in sets.items():
        with_paraphrase = name in ("forget10", "retain")
        pairs = []
        for item in items:
            answers = [item["answer"]]
            answers += [item["paraphrased_answer"]] if with_paraphrase else []
            answers += item["perturbed_answer"]
            pairs += [(item["question"], answer) for answer in answers]
        requests[name] = pairs
    return requests


def ours(model, tokenizer, pairs, batch_size: int) -> tuple[float, np.ndarray, AnswerScores]:
    """(seconds, summed log-likelihoods, the scores with their token counts)."""
    start = time.perf_counter()
    questions, answers = zip(*pairs, strict=True)
    scores = score_answers(model, tokenizer, questions, answers, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return seconds, -scores.nlls * scores.n_answer_tokens, scores


def lm_eval_loglikelihoods(lm, tokenizer, pairs) -> tuple[float, np.ndarray]:
    from lm_eval.api.instance import Instance

    start = time.perf_counter()
    requests = [
        Instance(
            "loglikelihood",
            doc={},
            arguments=(format_prompt(question), format_answer(answer) + tokenizer.eos_token),
            idx=0,
        )
        for question, answer in pairs
    ]
    with torch.no_grad():
        results = lm.loglikelihood(requests, disable_tqdm=True)
    seconds = time.perf_counter() - start
    return seconds, np.array([loglikelihood for loglikelihood, _ in results])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["tiny", "large"], default="tiny")
    parser.add_argument("--max-items", type=int, default=None, help="first N items of each eval set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    world, model_cfg, tokenizer = default_world_and_tokenizer()
    if args.model == "tiny":
        model = build_embedded_model(model_cfg, tokenizer, seed=0).eval()
    else:
        model = random_llama(tokenizer, **LARGE_MODEL)
    by_set = tofu_requests(world.qa_files, BenchmarkConfig(name="bench").retain_eval_size, args.max_items)
    pairs = [pair for set_pairs in by_set.values() for pair in set_pairs]
    counts = ", ".join(f"{name} {len(set_pairs)}" for name, set_pairs in by_set.items())
    print(
        f"model {args.model} ({sum(p.numel() for p in model.parameters()):,} params), {len(pairs)} requests "
        f"({counts}), batch {args.batch_size}, {args.threads} thread(s)"
    )

    lm = make_lm(model, tokenizer, batch_size=args.batch_size)  # one-time wrapping, not timed
    timings: dict[str, list[float]] = {"ours": [], "lm_eval": []}
    values: dict[str, np.ndarray] = {}
    for repeat in range(args.repeats):
        for name in ["ours", "lm_eval"] if repeat % 2 == 0 else ["lm_eval", "ours"]:
            if name == "ours":
                seconds, values[name], scores = ours(model, tokenizer, pairs, args.batch_size)
            else:
                seconds, values[name] = lm_eval_loglikelihoods(lm, tokenizer, pairs)
            timings[name].append(seconds)
            print(f"repeat {repeat}: {name:8s} {seconds:.2f} s", flush=True)

    # lm-eval feeds every request's context and continuation in full (the same ids as encode_qa's) and takes the
    # log-softmax at every position; ours takes one per scored token.
    questions, answers = zip(*pairs, strict=True)
    unshared_tokens = sum(len(encoded.input_ids) for encoded in encode_pairs(tokenizer, questions, answers))
    print(
        f"\ntokens through the model (padding aside): ours {scores.tokens_processed:,}, lm-eval {unshared_tokens:,}; "
        f"log-softmax rows: ours {int(scores.n_answer_tokens.sum()):,}, lm-eval {unshared_tokens:,} and its padding"
    )
    difference = np.abs(values["ours"] - values["lm_eval"])
    relative = difference / np.maximum(np.abs(values["ours"]), 1e-9)
    print(
        f"agreement of summed log-likelihoods (answer + eos): max |diff| {difference.max():.2e}, "
        f"max relative {relative.max():.2e}, mean log-likelihood {values['ours'].mean():.3f}"
    )
    if not np.allclose(values["ours"], values["lm_eval"], rtol=1e-4, atol=1e-3):
        raise SystemExit("the two disagree: the comparison is not of the same quantity")
    ours_s, lm_eval_s = statistics.median(timings["ours"]), statistics.median(timings["lm_eval"])
    ratios = [lm_eval / ours for ours, lm_eval in zip(timings["ours"], timings["lm_eval"], strict=True)]
    print("per-repeat ratio lm-eval/ours: " + ", ".join(f"{ratio:.2f}" for ratio in ratios))
    print(
        f"model {args.model}, median of {args.repeats}: "
        f"ours {ours_s:.2f} s ({1000 * ours_s / len(pairs):.2f} ms/request)   "
        f"lm-eval {lm_eval_s:.2f} s ({1000 * lm_eval_s / len(pairs):.2f} ms/request)   "
        f"ratio lm-eval/ours = {lm_eval_s / ours_s:.2f}"
    )


if __name__ == "__main__":
    main()
