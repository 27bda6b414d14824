"""LLM-as-judge against a real local HTTP server that answers like an OpenAI chat-completions endpoint.

The fake judge is deterministic: an answer containing "good" (or "好") scores 9, any other 4, and the answer
shown first gets +1 (a position bias that judging both orders must cancel).
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from xllama.errors import XllamaError
from xllama.eval import judge as J


class FakeJudge:
    def __init__(self):
        self.requests: list[dict] = []
        self.fail_first = 0  # answer the first N requests with HTTP 503
        self.status = None  # answer every request with this HTTP status
        self.style = "json"  # json | prose | garbage
        self.lock = threading.Lock()

    def reply(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.requests.append(body)
            count = len(self.requests)
        if self.status:
            return self.status, {"error": {"message": "denied"}}
        if count <= self.fail_first:
            return 503, {"error": {"message": "overloaded"}}
        prompt = body["messages"][-1]["content"]
        answers = re.findall(r"Answer\]\n(.*?)\n\[The End", prompt, flags=re.S)
        quality = [9 if ("good" in a or "好" in a) else 4 for a in answers]
        first, second = min(10, quality[0] + 1), quality[1]
        if self.style == "json":
            scores = {f"assistant_{i}": dict.fromkeys(J.ASPECTS, s) for i, s in ((1, first), (2, second))}
            text = "```json\n" + json.dumps(scores) + "\n```\nAssistant 1 is {better}."
        elif self.style == "prose":
            text = "\n".join(f"Assistant {i}: Helpfulness: {s}, Relevance: {s}, Accuracy: {s}, Level of detail: {s}"
                             for i, s in ((1, first), (2, second)))
        else:
            text = "I cannot decide."
        return 200, {"id": "x", "object": "chat.completion",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


@pytest.fixture
def server():
    fake = FakeJudge()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            assert self.path == "/v1/chat/completions"
            assert self.headers["Authorization"] == "Bearer test-key"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, payload = fake.reply(body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield fake
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


QUESTIONS = [
    "Explain why the sky is blue.",
    "Give three tips for staying healthy.",
    "Describe the water cycle in a few sentences.",
    "What is the capital of France and why is it famous?",
    "请解释为什么天空是蓝色的。",
]
ANSWERS_A = ["A good answer about light scattering in the atmosphere.", "A good list of healthy habits for you.",
             "Water evaporates and then it rains again.", "Paris is the capital of France.",
             "The sky is blue because of Rayleigh scattering."]  # the last: English answer to a Chinese question
ANSWERS_B = ["The sky reflects the sea, which is blue.", "Eat food and sleep at night time.",
             "A good explanation of evaporation, condensation and rain.", "Paris is the capital of France.",
             "天空是蓝色的，因为大气散射阳光中的蓝光。"]


def write_jsonl(path, answers, ids=True):
    with open(path, "w", encoding="utf-8") as f:
        for i, (q, a) in enumerate(zip(QUESTIONS, answers)):
            record = {"instruction": q, "answer": a}
            if ids:
                record["id"] = f"q{i}"
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return str(path)


def client(fake, **kw):
    return J.JudgeClient(fake.base_url, "judge-model", "test-key", timeout=10, backoff=0.01, **kw)


def test_pairwise_judging_both_orders(server, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ANSWERS_A)
    b = write_jsonl(tmp_path / "b.jsonl", ANSWERS_B, ids=True)
    result = J.judge_files(a, b, client(server), concurrency=2)
    items = {item["id"]: item for item in result["items"]}
    assert [items[f"q{i}"]["winner"] for i in range(5)] == ["a", "a", "b", "tie", "b"]
    assert items["q3"]["scores"]["a"] == items["q3"]["scores"]["b"]  # position bias cancelled: (5+4)/2 each
    assert items["q0"]["total"] == {"a": pytest.approx(9.5), "b": pytest.approx(4.5)}
    assert items["q4"]["reason"] == "language" and items["q4"]["in_language"] == {"a": False, "b": True}
    assert len(server.requests) == 8  # 4 judged pairs x 2 orders; the language rule needs no request
    shown_first = {}
    for request in server.requests:
        prompt = request["messages"][-1]["content"]
        question = prompt.split("[Question]\n")[1].split("\n")[0]
        shown_first.setdefault(question, set()).add(re.findall(r"Answer\]\n(.*?)\n\[The End", prompt, re.S)[0])
    for i in range(4):  # each pair was shown once in each order
        assert shown_first[QUESTIONS[i]] == {ANSWERS_A[i], ANSWERS_B[i]}
    s = result["summary"]
    assert (s["wins_a"], s["wins_b"], s["ties"], s["n"]) == (2, 2, 1, 5)
    assert s["win_rate_a"] == pytest.approx(40.0) and s["off_language_a"] == 1
    assert server.requests[0]["model"] == "judge-model" and server.requests[0]["temperature"] == 0.0


def test_prose_replies_are_parsed(server, tmp_path):
    server.style = "prose"
    a = write_jsonl(tmp_path / "a.jsonl", ANSWERS_A, ids=False)
    b = write_jsonl(tmp_path / "b.jsonl", ANSWERS_B, ids=False)
    result = J.judge_files(a, b, client(server), concurrency=1, limit=3)
    assert [item["winner"] for item in result["items"]] == ["a", "a", "b"]
    assert len(server.requests) == 6


def test_unparseable_replies_are_bounded(server, tmp_path):
    server.style = "garbage"
    j = J.Judge(client(server), parse_retries=1)
    item = j.judge_item(QUESTIONS[0], ANSWERS_A[0], ANSWERS_B[0])
    assert item["winner"] is None and item["reason"] == "unparsed"
    assert len(server.requests) == 4  # 2 orders x (1 + 1 re-ask)


def test_retries_with_backoff_then_success(server):
    server.fail_first = 2
    assert "assistant_1" in client(server, max_retries=3).chat([{"role": "user", "content": (
        "[The Start of Assistant 1's Answer]\ngood\n[The End of Assistant 1's Answer]\n"
        "[The Start of Assistant 2's Answer]\nbad\n[The End of Assistant 2's Answer]")}])
    assert len(server.requests) == 3


def test_retries_are_bounded(server):
    server.status = 503
    with pytest.raises(XllamaError, match="failed after 3 attempts: HTTP 503"):
        client(server, max_retries=2).chat([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 3


def test_auth_error_is_not_retried(server):
    server.status = 401
    with pytest.raises(XllamaError, match="HTTP 401 .*XLLAMA_JUDGE_API_KEY"):
        client(server).chat([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1


def test_parse_judgement_formats():
    full = lambda s: dict.fromkeys(J.ASPECTS, float(s))  # noqa: E731
    assert J.parse_judgement('{"assistant_1": {"helpfulness": 8, "relevance": 7, "accuracy": 6, "detail": 5}, '
                             '"assistant_2": {"Helpfulness": "3", "Relevance": 3, "Accuracy": 3, '
                             '"Level of detail": 3}} because {reasons}') == (
        {"helpfulness": 8.0, "relevance": 7.0, "accuracy": 6.0, "detail": 5.0}, full(3))
    assert J.parse_judgement("8 6\nAssistant 1 was more helpful.") == (full(8), full(6))
    prose = ("Assistant 1 - helpfulness: 7, relevance: 7, accuracy: 7, detail: 7.\n"
             "Assistant 2 - helpfulness: 2, relevance: 2, accuracy: 2, detail: 2.")
    assert J.parse_judgement(prose) == (full(7), full(2))
    assert J.parse_judgement("no scores here") is None
    assert J.parse_judgement('{"assistant_1": {"helpfulness": 80, "relevance": 7, "accuracy": 6, "detail": 5}, '
                             '"assistant_2": {"helpfulness": 3, "relevance": 3, "accuracy": 3, "detail": 3}}') is None
    assert J.parse_judgement("") is None


def test_cli_reads_endpoint_from_environment(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XLLAMA_JUDGE_BASE_URL", server.base_url)
    monkeypatch.setenv("XLLAMA_JUDGE_MODEL", "judge-model")
    monkeypatch.setenv("XLLAMA_JUDGE_API_KEY", "test-key")
    parser = argparse.ArgumentParser()
    J.add_arguments(parser)
    out = tmp_path / "j.json"
    args = parser.parse_args(["--a", write_jsonl(tmp_path / "a.jsonl", ANSWERS_A), "--b",
                              write_jsonl(tmp_path / "b.jsonl", ANSWERS_B), "--out", str(out), "--limit", "2"])
    assert J.run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["wins_a"] == 2 and summary["judge"]["model"] == "judge-model"
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert len(saved["items"]) == 2 and "test-key" not in out.read_text(encoding="utf-8")

    monkeypatch.delenv("XLLAMA_JUDGE_BASE_URL")
    with pytest.raises(XllamaError, match="XLLAMA_JUDGE_BASE_URL"):
        J.run(args)


def test_mismatched_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ANSWERS_A, ids=False)
    (tmp_path / "b.jsonl").write_text(json.dumps({"instruction": "Something else", "answer": "x"}) + "\n")
    with pytest.raises(XllamaError, match="has 5 records but .* has 1"):
        J.pair_answers(J.read_answers(a), J.read_answers(tmp_path / "b.jsonl"), a, "b.jsonl")
    (tmp_path / "c.jsonl").write_text(json.dumps({"instruction": "q"}) + "\n")
    with pytest.raises(XllamaError, match="c.jsonl: line 1: missing 'answer'"):
        J.read_answers(tmp_path / "c.jsonl")


def test_a_rerun_costs_nothing_thanks_to_the_cache(server, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ANSWERS_A)
    b = write_jsonl(tmp_path / "b.jsonl", ANSWERS_B)
    cache = tmp_path / "judge.cache.jsonl"
    first = J.judge_files(a, b, client(server), concurrency=2, cache=cache)
    # q3's two answers are the same text, so its second order is the first's request: asked once
    assert len(server.requests) == 7 and first["judge"]["cached_replies"] == 1
    again = J.judge_files(a, b, client(server), concurrency=2, cache=cache)
    assert len(server.requests) == 7 and again["judge"]["cached_replies"] == 8  # no new request
    assert again["items"] == first["items"]
    # the key holds the judge model and both answers: another model, or a changed answer, is asked again
    J.judge_files(a, b, client(server), cache=cache, limit=1)
    assert len(server.requests) == 7
    other = J.JudgeClient(server.base_url, "other-judge", "test-key", timeout=10, backoff=0.01)
    J.judge_files(a, b, other, cache=cache, limit=1)
    assert len(server.requests) == 9
    changed = write_jsonl(tmp_path / "b2.jsonl", ["A good but different answer."] + ANSWERS_B[1:])
    J.judge_files(a, changed, client(server), cache=cache, limit=2)
    assert len(server.requests) == 11  # q0 in both orders; q1 from the cache
    with open(cache, "a", encoding="utf-8") as f:
        f.write('{"key": "cut short')  # an interrupted write is skipped
    assert J.judge_files(a, b, client(server), cache=cache)["judge"]["cached_replies"] == 8
