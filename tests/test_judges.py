"""Judges (ROUGE and an OpenAI-compatible endpoint on a local stub server) and the judged accuracies."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from msa_bench.config.schema import JudgeConfig, MetricsConfig
from msa_bench.metrics import judged
from msa_bench.metrics.judged import candidate_set, judged_accuracies
from msa_bench.metrics.judges import (
    Judge,
    JudgeError,
    OpenAICompatibleJudge,
    RougeJudge,
    make_judge,
)
from msa_bench.metrics.registry import CROSS_MODEL_METRICS

# --- the ROUGE judge -------------------------------------------------------------------------------------------------


def test_rouge_judge_picks_the_most_similar_candidate():
    judge = RougeJudge()
    assert isinstance(judge, Judge)
    candidates = ["She was born in Lisbon, Portugal.", "He was born in Paris, France.", "It is a novel."]
    assert judge.choose("The author was born in Paris.", candidates) == 1
    assert judge.choose("born in Lisbon Portugal", candidates) == 0
    # Stemming: "novels" matches "novel".
    assert judge.choose("novels", candidates) == 2
    assert judge.choose_many(["born in Lisbon", "a novel"], [candidates, candidates]) == [0, 2]


def test_rouge_judge_breaks_ties_by_candidate_order():
    judge = RougeJudge()
    assert judge.choose("Paris", ["Paris", "Paris"]) == 0
    # No overlap with any candidate: the first one.
    assert judge.choose("Rome", ["London", "Paris", "Berlin"]) == 0
    assert judge.choose("", ["London", "Paris"]) == 0


def test_rouge_judge_rejects_bad_input():
    judge = RougeJudge()
    with pytest.raises(ValueError, match="at least one candidate"):
        judge.choose("x", [])
    with pytest.raises(TypeError, match="not the string"):
        judge.choose("x", "Paris")
    with pytest.raises(ValueError, match="2 outputs but 1 candidate lists"):
        judge.choose_many(["a", "b"], [["a"]])


# --- the OpenAI-compatible judge against a stub server -------------------------------------------------------------


class QuietServer(ThreadingHTTPServer):
    """A server whose handler threads do not print a client's hang-up: a timeout test leaves a delayed reply
    writing to a closed socket after the test ends, and socketserver's traceback would land on the stderr of
    whichever test the worker runs next."""

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class StubServer:
    """An OpenAI-shaped /chat/completions endpoint on 127.0.0.1 whose reply `respond(request_body)` decides:
    a str becomes the message content, bytes are sent as the raw body, an int is an HTTP error status."""

    def __init__(self, respond: Callable[[dict], str | bytes | int], delay_seconds: float = 0.0):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                stub.headers.append(dict(self.headers))
                if delay_seconds:
                    time.sleep(delay_seconds)
                reply = respond(body) if self.path == "/v1/chat/completions" else 404
                if isinstance(reply, int):
                    self.send_response(reply)
                    self.end_headers()
                    self.wfile.write(b'{"error": "stub says no"}')
                    return
                if isinstance(reply, str):
                    reply = json.dumps(
                        {
                            "object": "chat.completion",
                            "choices": [{"index": 0, "message": {"content": reply}}],
                        }
                    ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def pick_candidate_containing(word: str) -> Callable[[dict], str]:
    """A stub 'LLM' that answers with the number of the first candidate line containing `word`."""

    def respond(body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        lines = prompt.split("Candidate answers:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        for line in lines:
            number, text = line.split(". ", 1)
            if word in text:
                return f"{number}"
        return "1"

    return respond


def test_openai_judge_sends_a_chat_request_and_parses_the_number():
    with StubServer(pick_candidate_containing("Paris")) as stub:
        judge = OpenAICompatibleJudge(stub.url + "/", "stub-model", api_key="secret", timeout_seconds=5)
        assert judge.choose("whatever", ["London", "Paris", "Rome"]) == 1
        request = stub.requests[0]
        assert request["model"] == "stub-model"
        assert request["temperature"] == 0
        assert "1. London\n2. Paris\n3. Rome" in request["messages"][-1]["content"]
        assert "whatever" in request["messages"][-1]["content"]
        assert stub.headers[0]["Authorization"] == "Bearer secret"
        # Cached: asking again sends nothing.
        assert judge.choose("whatever", ["London", "Paris", "Rome"]) == 1
        assert len(stub.requests) == 1
        many = judge.choose_many(["a", "b", "c"], [["Paris", "x"], ["x", "y", "Paris"], ["x", "Paris"]])
        assert many == [0, 2, 1]
        assert judge.name == f"openai:stub-model@{stub.url}"


def test_openai_judge_accepts_a_number_with_words_around_it():
    with StubServer(lambda body: "Candidate 3.") as stub:
        assert OpenAICompatibleJudge(stub.url, "m", timeout_seconds=5).choose("x", ["a", "b", "c"]) == 2


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there once the socket is closed


def test_openai_judge_on_a_closed_port_raises_quickly():
    judge = OpenAICompatibleJudge(closed_port_url(), "m", timeout_seconds=5)
    start = time.perf_counter()
    with pytest.raises(JudgeError) as error:
        judge.choose("x", ["a", "b"])
    assert time.perf_counter() - start < 2
    message = str(error.value)
    assert judge.url in message and "'m'" in message and "did not answer" in message


@pytest.mark.parametrize(
    ("respond", "expected"),
    [
        (lambda body: b"this is not json", "unparsable reply"),
        (lambda body: b'{"choices": []}', "unparsable reply"),
        (lambda body: "I cannot decide.", "names no candidate number"),
        (lambda body: "7", "names candidate 7, but there are 2"),
        (lambda body: 503, "HTTP 503"),
    ],
)
def test_openai_judge_unusable_replies_raise(respond, expected):
    with StubServer(respond) as stub:
        judge = OpenAICompatibleJudge(stub.url, "stub-model", timeout_seconds=5)
        with pytest.raises(JudgeError, match=expected) as error:
            judge.choose("x", ["a", "b"])
        assert stub.url in str(error.value) and "stub-model" in str(error.value)


def test_openai_judge_too_slow_raises():
    with StubServer(lambda body: "1", delay_seconds=1.0) as stub:
        judge = OpenAICompatibleJudge(stub.url, "slow-model", timeout_seconds=0.2)
        with pytest.raises(JudgeError, match="no reply within 0.2 s"):
            judge.choose("x", ["a", "b"])
        with pytest.raises(JudgeError, match="no reply within"):
            judge.choose_many(["x", "y", "z"], [["a", "b"]] * 3)


def test_make_judge():
    assert isinstance(make_judge(JudgeConfig()), RougeJudge)
    judge = make_judge(JudgeConfig(kind="openai", url="http://localhost:1/v1", model="m", api_key_env=""))
    assert isinstance(judge, OpenAICompatibleJudge) and judge.timeout_seconds == 30.0
    with pytest.raises(ValueError, match="rouge, openai"):
        make_judge(JudgeConfig(kind="gpt"))
    with pytest.raises(ValueError, match="needs a url"):
        make_judge(JudgeConfig(kind="openai", model="m"))


# --- the judged accuracies -------------------------------------------------------------------------------------------


def test_candidate_set_orders_and_merges_duplicates():
    candidates = candidate_set("Paris", " paris ", ["Rome", "Paris", "Berlin"])
    assert candidates.texts == ["Rome", "Paris", "Berlin"]
    assert candidates.roles == [
        frozenset({"perturbed"}),
        frozenset({"perturbed", "ground_truth", "oracle"}),
        frozenset({"perturbed"}),
    ]
    candidates = candidate_set("Lisbon", "Madrid", ["Rome"])
    assert candidates.texts == ["Rome", "Lisbon", "Madrid"]


def item(answer: str, perturbed: list[str]) -> dict:
    return {"question": "Where?", "answer": answer, "perturbed_answer": perturbed}


EVAL_SETS = {
    "forget": [
        item("She was born in Lisbon.", ["She was born in Rome.", "She was born in Oslo."]),
        item("He writes poetry.", ["He writes thrillers.", "He writes plays."]),
        item("The book is called Tides.", ["The book is called Sand.", "The book is called Ash."]),
        item("Her father was a baker.", ["Her father was a pilot.", "Her father was a judge."]),
    ],
    "retain": [
        item("He was born in Cairo.", ["He was born in Quito.", "He was born in Lima."]),
        item("She won the Hugo award.", ["She won the Nebula award.", "She won the Booker prize."]),
        item("His mother was a nurse.", ["His mother was a chef.", "His mother was a vet."]),
    ],
}
ORACLE_GENERATIONS = {
    "forget": ["She was born in Madrid.", "He writes plays.", "The book is called Stone.", "zzz"],
    "retain": ["He was born in Cairo.", "She won the Nebula award.", "His mother was a doctor."],
}
MODEL_GENERATIONS = {
    # remembers; matches the oracle; a perturbed answer; empty (no overlap with anything)
    "forget": ["She was born in Lisbon.", "He writes plays, mostly.", "The book is called Sand.", ""],
    # ground truth; the oracle's (wrong) answer; a perturbed answer
    "retain": ["He was born in Cairo.", "She won the Nebula award.", "His mother was a vet."],
}


def test_judged_accuracies_on_known_answers():
    result = judged_accuracies(MODEL_GENERATIONS, ORACLE_GENERATIONS, EVAL_SETS, RougeJudge())
    assert result["judge"] == "rouge_l_f1"
    assert result["choices"] == {
        "forget": ["ground_truth", "oracle+perturbed", "perturbed", "perturbed"],
        "retain": ["ground_truth+oracle", "oracle+perturbed", "perturbed"],
    }
    assert result["per_item"] == {
        "acc_forget": [0.0, 1.0, 1.0, 1.0],
        "acc_recover": [0.0, 1.0, 0.0, 0.0],
        "acc_retain": [1.0, 1.0, 0.0],
    }
    assert result["metrics"] == pytest.approx({"acc_forget": 0.75, "acc_recover": 0.25, "acc_retain": 2 / 3})


def test_judged_accuracies_with_the_http_judge_match_its_verdicts():
    def respond(body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        lines = prompt.split("Candidate answers:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        return str(len(lines))  # always the last candidate: the oracle's answer (or what it merged into)

    with StubServer(respond) as stub:
        judge = OpenAICompatibleJudge(stub.url, "stub-model", timeout_seconds=5)
        result = judged_accuracies(MODEL_GENERATIONS, ORACLE_GENERATIONS, EVAL_SETS, judge)
    # Forget item 1 and retain item 1 end with the ground truth (the oracle's answer merged into a perturbed one).
    assert result["choices"]["forget"] == ["oracle", "ground_truth", "oracle", "oracle"]
    assert result["metrics"] == {"acc_forget": 0.75, "acc_recover": 0.75, "acc_retain": 1.0}
    assert result["judge"] == f"openai:stub-model@{stub.url}"
    assert len(stub.requests) == 4 + 3  # each question judged once, though two metrics read the forget set


def test_judged_accuracies_are_registered_cross_model_metrics():
    settings = MetricsConfig(name="judged", names=["acc_forget", "acc_recover", "acc_retain"])
    model_eval = {"metrics": {}, "generations": MODEL_GENERATIONS}
    oracle_eval = {"metrics": {}, "generations": ORACLE_GENERATIONS}
    expected = {"acc_forget": 0.75, "acc_recover": 0.25, "acc_retain": 2 / 3}
    for name, value in expected.items():
        metric = CROSS_MODEL_METRICS[name]
        assert metric.needs_eval_sets
        assert metric.needs == (("retain" if name == "acc_retain" else "forget") + "_Q_A_ROUGE",)
        assert metric.compute(model_eval, oracle_eval, settings, eval_sets=EVAL_SETS) == pytest.approx(value)
        assert metric.provenance(settings) == "rouge_l_f1"


def test_judged_accuracies_name_what_is_missing():
    with pytest.raises(ValueError, match="forget_Q_A_ROUGE"):
        judged.compute_judged_accuracy(
            "acc_forget",
            {"generations": {}},
            {"generations": ORACLE_GENERATIONS},
            MetricsConfig(name="x", names=[]),
            eval_sets=EVAL_SETS,
        )
    short = {"forget": MODEL_GENERATIONS["forget"][:2], "retain": MODEL_GENERATIONS["retain"]}
    with pytest.raises(ValueError, match="4 items but the model has 2 answers"):
        judged_accuracies(short, ORACLE_GENERATIONS, EVAL_SETS, RougeJudge(), metric_names=["acc_forget"])
    with pytest.raises(ValueError, match="valid names are"):
        judged_accuracies(
            MODEL_GENERATIONS, ORACLE_GENERATIONS, EVAL_SETS, RougeJudge(), metric_names=["acc"]
        )


@pytest.fixture(autouse=True)
def no_cached_judges() -> Iterator[None]:
    yield
    judged._JUDGES.clear()
