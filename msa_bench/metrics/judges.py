"""Judges: which of several candidate answers a model's output matches in meaning.

The paper's judged accuracies (Acc_forget, Acc_recover, Acc_retain; see `judged.py`) ask a judge, for each question,
which candidate answer is most similar to the model's output. Two judges are provided:

- `RougeJudge` (the default): offline and deterministic, the candidate with the highest ROUGE-L F1.
- `OpenAICompatibleJudge`: an LLM behind an OpenAI-compatible chat endpoint (the paper used GPT-4o; a local vLLM or
  llama.cpp server works the same way). A judge that does not answer raises `JudgeError`, never a guess.
"""

from __future__ import annotations

import functools
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Protocol, runtime_checkable

from msa_bench.errors import JudgeError  # noqa: F401  (re-exported)

JUDGE_KINDS = ("rouge", "openai")


@runtime_checkable
class Judge(Protocol):
    name: str  # recorded next to the numbers it produced

    def choose(self, output: str, candidates: Sequence[str]) -> int:
        """Index of the candidate most similar in meaning to `output`."""
        ...

    def choose_many(self, outputs: Sequence[str], candidate_lists: Sequence[Sequence[str]]) -> list[int]:
        """`choose` for each (output, candidates) pair, in order."""
        ...


def _check_batch(outputs: Sequence[str], candidate_lists: Sequence[Sequence[str]]) -> None:
    if len(outputs) != len(candidate_lists):
        raise ValueError(f"{len(outputs)} outputs but {len(candidate_lists)} candidate lists")


def _check_candidates(candidates: Sequence[str]) -> None:
    if isinstance(candidates, str):
        raise TypeError(f"candidates must be a sequence of answers, not the string {candidates!r}")
    if len(candidates) == 0:
        raise ValueError("a judge needs at least one candidate")


@functools.cache
def _rouge_l_scorer():
    # Imported lazily: rouge_score pulls in nltk, which is slow to import.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


class RougeJudge:
    """The candidate with the highest ROUGE-L F1 against the output (stemmed, as TOFU's ROUGE metrics).

    Ties go to the first of the tied candidates in the given order, so the caller's candidate order is the
    tie-break; in particular an output sharing no word with any candidate (all F1 = 0) is assigned to candidate 0.
    """

    name = "rouge_l_f1"

    def choose(self, output: str, candidates: Sequence[str]) -> int:
        _check_candidates(candidates)
        scorer = _rouge_l_scorer()
        scores = [
            scorer.score(target=candidate, prediction=output)["rougeL"].fmeasure for candidate in candidates
        ]
        best = max(scores)
        return scores.index(best)  # the first index holding the maximum

    def choose_many(self, outputs: Sequence[str], candidate_lists: Sequence[Sequence[str]]) -> list[int]:
        _check_batch(outputs, candidate_lists)
        return [
            self.choose(output, candidates)
            for output, candidates in zip(outputs, candidate_lists, strict=True)
        ]


JUDGE_SYSTEM_PROMPT = "You compare answers by meaning. You reply with a single number and nothing else."

JUDGE_PROMPT_TEMPLATE = (
    "Which of the numbered candidate answers is most similar in meaning to the model's answer?\n"
    "Judge the facts stated, not the wording.\n\n"
    "Model's answer:\n{output}\n\n"
    "Candidate answers:\n{numbered_candidates}\n\n"
    "Reply with the number of the most similar candidate only."
)


def judge_prompt(output: str, candidates: Sequence[str]) -> str:
    """The user message sent to an LLM judge; candidates are numbered from 1, as people (and LLMs) count."""
    numbered = "\n".join(f"{number}. {candidate}" for number, candidate in enumerate(candidates, start=1))
    return JUDGE_PROMPT_TEMPLATE.format(output=output, numbered_candidates=numbered)


_FIRST_NUMBER = re.compile(r"\d+")


class OpenAICompatibleJudge:
    """An LLM judge behind an OpenAI-compatible `/chat/completions` endpoint, asked for the candidate's number.

    Greedy decoding (temperature 0) keeps the verdicts as repeatable as the server allows. Verdicts are cached per
    (output, candidates), so the metrics that share forget-set judgements (Acc_forget, Acc_recover) ask once.
    `choose_many` sends up to `max_concurrency` requests at a time and stops at the first failure.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        timeout_seconds: float = 30.0,
        max_concurrency: int = 4,
    ):
        if not url:
            raise ValueError("an OpenAI-compatible judge needs a url, e.g. http://localhost:8000/v1")
        if not model:
            raise ValueError("an OpenAI-compatible judge needs a model name")
        if timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.url = url.rstrip("/")
        self.model = model
        self.timeout_seconds = timeout_seconds
        self.max_concurrency = max_concurrency
        self._api_key = api_key
        self._verdicts: dict[tuple[str, tuple[str, ...]], int] = {}
        self.name = f"openai:{model}@{self.url}"

    @property
    def endpoint(self) -> str:
        return f"{self.url}/chat/completions"

    def _fail(self, what: str) -> JudgeError:
        return JudgeError(f"judge model {self.model!r} at {self.endpoint}: {what}")

    def _post(self, body: dict) -> str:
        """The raw reply text of one chat completion request."""
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(
            self.endpoint, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as error:  # before URLError: HTTPError is a subclass
            detail = error.read().decode("utf-8", errors="replace")[:300]
            raise self._fail(f"HTTP {error.code} {error.reason}: {detail}") from error
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                raise self._fail(f"no reply within {self.timeout_seconds} s") from error
            raise self._fail(f"did not answer ({error.reason})") from error
        except TimeoutError as error:  # socket.timeout is TimeoutError since Python 3.10
            raise self._fail(f"no reply within {self.timeout_seconds} s") from error
        except OSError as error:  # e.g. the connection reset mid-reply
            raise self._fail(f"connection failed ({error})") from error

    def _parse_choice(self, reply: str, n_candidates: int) -> int:
        try:
            content = json.loads(reply)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise self._fail(f"unparsable reply (not an OpenAI chat completion): {reply[:300]!r}") from error
        match = _FIRST_NUMBER.search(content or "")
        if match is None:
            raise self._fail(f"the reply names no candidate number: {content!r}")
        number = int(match.group())
        if not 1 <= number <= n_candidates:
            raise self._fail(f"the reply names candidate {number}, but there are {n_candidates}: {content!r}")
        return number - 1

    def choose(self, output: str, candidates: Sequence[str]) -> int:
        _check_candidates(candidates)
        key = (output, tuple(candidates))
        if key in self._verdicts:
            return self._verdicts[key]
        if len(candidates) == 1:
            return 0
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
                {"role": "user", "content": judge_prompt(output, candidates)},
            ],
            "temperature": 0,
            "max_tokens": 8,
        }
        choice = self._parse_choice(self._post(body), len(candidates))
        self._verdicts[key] = choice
        return choice

    def choose_many(self, outputs: Sequence[str], candidate_lists: Sequence[Sequence[str]]) -> list[int]:
        _check_batch(outputs, candidate_lists)
        if self.max_concurrency == 1 or len(outputs) <= 1:
            return [self.choose(o, c) for o, c in zip(outputs, candidate_lists, strict=True)]
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = [pool.submit(self.choose, o, c) for o, c in zip(outputs, candidate_lists, strict=True)]
            # Fail fast: a dead endpoint should not be asked the remaining questions one timeout at a time.
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            for future in futures:
                if future in done and future.exception() is not None:
                    raise future.exception()
            return [future.result() for future in futures]


def make_judge(judge_config) -> Judge:
    """The judge a `JudgeConfig` (metrics.judge) describes; the API key is read from `api_key_env`, if set."""
    kind = judge_config.kind
    if kind == "rouge":
        return RougeJudge()
    if kind == "openai":
        api_key_env = judge_config.api_key_env
        api_key = os.environ.get(api_key_env) if api_key_env else None
        return OpenAICompatibleJudge(
            url=judge_config.url,
            model=judge_config.model,
            api_key=api_key,
            timeout_seconds=judge_config.timeout_seconds,
        )
    raise ValueError(f"unknown judge kind {kind!r}; valid kinds are: {', '.join(JUDGE_KINDS)}")
