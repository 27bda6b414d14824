"""LLM-as-judge, MI-Eval style: which of two models answers multilingual instructions better?

``xllama eval judge --a base.jsonl --b x-llama.jsonl --out judge.json`` sends each instruction with both
answers to a judge model behind an OpenAI-compatible ``/chat/completions`` endpoint, which scores
helpfulness, relevance, accuracy and level of detail from 1 to 10 for each answer. Every pair is judged in
both orders (A first, then B first) and the scores averaged, which cancels the judge's position bias. An
answer not in the question's language loses without being judged (lingua detects the languages), since
answering a Chinese question in English is the failure the paper is about.

The endpoint comes from options or the environment, never from files: ``--base-url`` /
``XLLAMA_JUDGE_BASE_URL`` (e.g. https://api.openai.com/v1), ``--judge-model`` / ``XLLAMA_JUDGE_MODEL``,
and the key from ``XLLAMA_JUDGE_API_KEY`` (or ``--api-key``). Input files are JSONL with ``instruction``
(or ``question``/``prompt``; an ``input`` field is appended) and ``answer`` (or ``output``/``response``);
records are paired by ``id`` when both files have ids, else line by line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from xllama.errors import XllamaError
from xllama.io import atomic_write_json, content_hash, iter_jsonl

log = logging.getLogger(__name__)

ASPECTS = ("helpfulness", "relevance", "accuracy", "detail")
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}

SYSTEM_PROMPT = "You are a fair, strict and precise judge of the quality of AI assistants' answers."
JUDGE_PROMPT = """[Question]
{question}

[The Start of Assistant 1's Answer]
{answer_1}
[The End of Assistant 1's Answer]

[The Start of Assistant 2's Answer]
{answer_2}
[The End of Assistant 2's Answer]

[System]
We would like your feedback on the two AI assistants' answers to the question above. Rate the helpfulness, \
relevance, accuracy and level of detail of each answer, each on a scale of 1 to 10 (higher is better). An \
answer that is not written in the language of the question is not helpful. Judge the content, not the order \
in which the answers are shown, nor their length alone.
Reply with one JSON object and nothing before it, exactly in this form:
{{"assistant_1": {{"helpfulness": 1-10, "relevance": 1-10, "accuracy": 1-10, "detail": 1-10}}, \
"assistant_2": {{"helpfulness": 1-10, "relevance": 1-10, "accuracy": 1-10, "detail": 1-10}}}}
Then, on the next lines, explain your judgement briefly."""


# ---------------------------------------------------------------------------------------------- the endpoint


@dataclass
class JudgeClient:
    """A minimal OpenAI-compatible chat-completions client (urllib) with bounded retries and backoff."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    max_retries: int = 4
    backoff: float = 2.0  # seconds before the first retry; doubled each time (capped at 60)
    temperature: float = 0.0
    max_tokens: int = 512

    def chat(self, messages: list[dict]) -> str:
        url = self.base_url.rstrip("/") + "/chat/completions"
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(60.0, self.backoff * 2 ** (attempt - 1))
                log.info("judge request failed (%s); retry %d/%d in %.1fs", last_error, attempt,
                         self.max_retries, delay)
                time.sleep(delay)
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read().decode("utf-8")
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:300]
                if e.code not in RETRY_STATUS:
                    hint = " (check XLLAMA_JUDGE_API_KEY)" if e.code in (401, 403) else ""
                    raise XllamaError(f"judge endpoint {url} answered HTTP {e.code}{hint}: {detail}") from None
                last_error = f"HTTP {e.code}"
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last_error = str(getattr(e, "reason", e))
                continue
            try:
                return json.loads(payload)["choices"][0]["message"]["content"] or ""
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                last_error = f"not a chat-completions reply: {payload[:200]!r}"
                continue
        raise XllamaError(f"judge endpoint {url} failed after {self.max_retries + 1} attempts: {last_error}")


# ------------------------------------------------------------------------------------- reading the judgement

_ASPECT_ALIASES = {
    "helpfulness": "helpfulness", "helpful": "helpfulness",
    "relevance": "relevance", "relevant": "relevance",
    "accuracy": "accuracy", "accurate": "accuracy",
    "detail": "detail", "details": "detail", "level of detail": "detail", "level of details": "detail",
    "level_of_detail": "detail", "detailedness": "detail",
}
_NUMBER = r"(\d+(?:\.\d+)?)"


def _valid(scores: dict) -> dict[str, float] | None:
    try:
        out = {aspect: float(scores[aspect]) for aspect in ASPECTS}
    except (KeyError, TypeError, ValueError):
        return None
    return out if all(1.0 <= v <= 10.0 for v in out.values()) else None


def _from_json(text: str) -> tuple[dict, dict] | None:
    start, end = text.find("{"), text.rfind("}")
    while start != -1 and end > start:
        try:
            obj = json.loads(text[start:end + 1])
        except json.JSONDecodeError:
            end = text.rfind("}", start, end)  # trailing prose with braces: try a shorter span
            continue
        if not isinstance(obj, dict):
            return None
        found: dict[str, dict] = {}
        for key, value in obj.items():
            digits = re.findall(r"[12]", str(key))
            if digits and isinstance(value, dict):
                found[digits[0]] = {_ASPECT_ALIASES.get(str(k).strip().lower(), str(k)): v for k, v in value.items()}
        first, second = _valid(found.get("1", {})), _valid(found.get("2", {}))
        return (first, second) if first and second else None
    return None


def _from_prose(text: str) -> tuple[dict, dict] | None:
    """'Assistant 1: helpfulness 8, relevance 9 ...  Assistant 2: ...' or Vicuna's '8 6' first line."""
    parts = re.split(r"assistant\s*2|answer\s*2", text, maxsplit=1, flags=re.IGNORECASE)
    if len(parts) == 2:
        sides = []
        for part in parts:
            scores = {}
            for alias, aspect in _ASPECT_ALIASES.items():
                match = re.search(re.escape(alias).replace("_", "[ _]") + r"\W{0,5}?\s*[:=\-]?\s*" + _NUMBER,
                                  part, flags=re.IGNORECASE)
                if match and aspect not in scores:
                    scores[aspect] = match.group(1)
            sides.append(_valid(scores))
        if sides[0] and sides[1]:
            return sides[0], sides[1]
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    match = re.fullmatch(r"\s*" + _NUMBER + r"\s*[,\s]\s*" + _NUMBER + r"\s*", first_line)
    if match:
        a, b = (_valid(dict.fromkeys(ASPECTS, v)) for v in match.groups())
        if a and b:
            return a, b
    return None


def parse_judgement(text: str) -> tuple[dict[str, float], dict[str, float]] | None:
    """The judge's scores for (assistant 1, assistant 2), or None when the reply holds no usable scores."""
    text = re.sub(r"```(?:json)?", "", text or "")
    return _from_json(text) or _from_prose(text)


# ------------------------------------------------------------------------------------------------ the judging


def read_answers(path: str | Path) -> list[dict]:
    """JSONL records normalised to {id, question, answer, lang, line}."""
    records = []
    for lineno, record in iter_jsonl(path):
        question = next((record[k] for k in ("instruction", "question", "prompt") if k in record), None)
        answer = next((record[k] for k in ("answer", "output", "response") if k in record), None)
        if not isinstance(question, str) or not question.strip():
            raise XllamaError(f"{path}: line {lineno}: missing 'instruction' (or 'question'/'prompt')")
        if not isinstance(answer, str):
            raise XllamaError(f"{path}: line {lineno}: missing 'answer' (or 'output'/'response') string")
        if record.get("input"):
            question = f"{question}\n\n{record['input']}"
        records.append({"id": record.get("id"), "question": question, "answer": answer,
                        "lang": record.get("lang"), "line": lineno})
    if not records:
        raise XllamaError(f"{path}: no records")
    return records


def pair_answers(a: list[dict], b: list[dict], path_a: str, path_b: str) -> list[tuple[dict, dict]]:
    if all(r["id"] is not None for r in a + b):
        by_id = {r["id"]: r for r in b}
        missing = [r["id"] for r in a if r["id"] not in by_id]
        if missing:
            raise XllamaError(f"{path_b} has no record with id {missing[0]!r} (from {path_a})")
        pairs = [(r, by_id[r["id"]]) for r in a]
    else:
        if len(a) != len(b):
            raise XllamaError(f"{path_a} has {len(a)} records but {path_b} has {len(b)} (and no ids to pair by)")
        pairs = list(zip(a, b))
    for ra, rb in pairs:
        if ra["question"].strip() != rb["question"].strip():
            raise XllamaError(f"{path_a}: line {ra['line']} and {path_b}: line {rb['line']} answer different "
                              "instructions")
    return pairs


class JudgeCache:
    """The judge's usable replies, one JSONL line each, keyed by a hash of the judge model, its sampling
    settings and the whole request (prompt, question, both answers in their order): a rerun, or a run
    interrupted half-way, asks the endpoint only what it has not answered yet. A line cut short is ignored."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.replies: dict[str, str] = {}
        self.lock = threading.Lock()
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self.replies[record["key"]] = record["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        self.hits = 0

    @staticmethod
    def key(client: "JudgeClient", messages: list[dict]) -> str:
        return content_hash([client.model, client.temperature, client.max_tokens, messages])

    def get(self, key: str) -> str | None:
        with self.lock:
            reply = self.replies.get(key)
            self.hits += reply is not None
            return reply

    def put(self, key: str, reply: str) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")
            self.replies[key] = reply


class Judge:
    def __init__(self, client: JudgeClient, parse_retries: int = 1, cache: JudgeCache | None = None):
        self.client = client
        self.parse_retries = parse_retries
        self.cache = cache

    def scores(self, question: str, answer_1: str, answer_2: str) -> tuple[dict, dict] | None:
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": JUDGE_PROMPT.format(question=question, answer_1=answer_1,
                                                                    answer_2=answer_2)}]
        key = JudgeCache.key(self.client, messages) if self.cache else None
        cached = self.cache.get(key) if self.cache else None
        if cached is not None and parse_judgement(cached):
            return parse_judgement(cached)
        for _ in range(self.parse_retries + 1):
            reply = self.client.chat(messages)
            parsed = parse_judgement(reply)
            if parsed:
                if self.cache:
                    self.cache.put(key, reply)
                return parsed
        return None

    def judge_item(self, question: str, answer_a: str, answer_b: str, lang: str | None = None) -> dict:
        """Judge one pair in both orders; the language rule first (an off-language answer loses unjudged)."""
        from xllama.eval.metrics import detect_language

        lang = lang or detect_language(question)
        in_language = {}
        for side, answer in (("a", answer_a), ("b", answer_b)):
            detected = detect_language(answer)
            # An empty answer is never in the language; an undecidable one (numbers, code) is not penalised.
            in_language[side] = bool(answer.strip()) and (lang is None or detected is None or detected == lang)
        item: dict = {"lang": lang, "in_language": in_language}
        if not (in_language["a"] and in_language["b"]):
            item["winner"] = "a" if in_language["a"] else "b" if in_language["b"] else "tie"
            item["reason"] = "language"
            return item
        ab = self.scores(question, answer_a, answer_b)  # A shown first
        ba = self.scores(question, answer_b, answer_a)  # B shown first
        orders = [(a, b) for a, b in ([ab] if ab else []) + ([(ba[1], ba[0])] if ba else [])]
        if not orders:
            item["winner"], item["reason"] = None, "unparsed"
            return item
        mean = {side: {aspect: sum(o[i][aspect] for o in orders) / len(orders) for aspect in ASPECTS}
                for i, side in enumerate(("a", "b"))}
        total = {side: sum(mean[side].values()) / len(ASPECTS) for side in ("a", "b")}
        item.update(scores=mean, total=total, orders=len(orders), reason="judge")
        item["winner"] = "a" if total["a"] > total["b"] + 1e-9 else "b" if total["b"] > total["a"] + 1e-9 else "tie"
        return item


def summarise(items: list[dict]) -> dict:
    decided = [it for it in items if it["winner"] is not None]
    n = len(decided)
    judged = [it for it in decided if it["reason"] == "judge"]
    count = {w: sum(it["winner"] == w for it in decided) for w in ("a", "b", "tie")}
    summary = {
        "n": len(items), "decided": n, "unparsed": len(items) - n,
        "wins_a": count["a"], "wins_b": count["b"], "ties": count["tie"],
        "win_rate_a": 100.0 * count["a"] / n if n else 0.0,
        "win_rate_b": 100.0 * count["b"] / n if n else 0.0,
        "tie_rate": 100.0 * count["tie"] / n if n else 0.0,
        "off_language_a": sum(not it["in_language"]["a"] for it in items),
        "off_language_b": sum(not it["in_language"]["b"] for it in items),
    }
    if judged:
        summary["mean_scores"] = {side: {aspect: sum(it["scores"][side][aspect] for it in judged) / len(judged)
                                         for aspect in ASPECTS} for side in ("a", "b")}
    return summary


def judge_files(path_a: str, path_b: str, client: JudgeClient, concurrency: int = 4, limit: int | None = None,
                parse_retries: int = 1, cache: str | os.PathLike | None = None) -> dict:
    """Judge every pair; ``cache``: a JSONL file of the judge's replies (see JudgeCache), reused by reruns."""
    from tqdm.auto import tqdm

    pairs = pair_answers(read_answers(path_a), read_answers(path_b), path_a, path_b)[:limit]
    judge = Judge(client, parse_retries, JudgeCache(cache) if cache else None)

    def one(pair):
        ra, rb = pair
        item = judge.judge_item(ra["question"], ra["answer"], rb["answer"], ra["lang"] or rb["lang"])
        return {"id": ra["id"] if ra["id"] is not None else ra["line"], **item}

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        items = list(tqdm(pool.map(one, pairs), total=len(pairs), desc="judging", unit="pair"))
    return {
        "a": str(path_a), "b": str(path_b),
        "judge": {"model": client.model, "base_url": client.base_url,
                  "cached_replies": judge.cache.hits if judge.cache else 0},
        "aspects": list(ASPECTS),
        "summary": summarise(items),
        "items": items,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }


# ---------------------------------------------------------------------------------------------------- the CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--a", required=True, help="model A's answers (JSONL: instruction, answer)")
    parser.add_argument("--b", required=True, help="model B's answers (JSONL: instruction, answer)")
    parser.add_argument("--out", required=True, help="where to write the judgement JSON")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible API base, e.g. http://host:8000/v1 "
                        "(default: $XLLAMA_JUDGE_BASE_URL)")
    parser.add_argument("--judge-model", default=None, help="judge model name (default: $XLLAMA_JUDGE_MODEL)")
    parser.add_argument("--api-key", default=None, help="API key (default: $XLLAMA_JUDGE_API_KEY; prefer the "
                        "environment, options show up in the process list)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: %(default)s)")
    parser.add_argument("--max-retries", type=int, default=4, help="retries per request on HTTP/network errors")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--limit", type=int, help="judge only the first N pairs")
    parser.add_argument("--cache", metavar="FILE", help="the judge's replies, reused by reruns (default: OUT with "
                        "the suffix .cache.jsonl)")
    parser.add_argument("--no-cache", action="store_true", help="ask the endpoint again for every pair")


def client_from_args(args: argparse.Namespace) -> JudgeClient:
    base_url = args.base_url or os.environ.get("XLLAMA_JUDGE_BASE_URL")
    model = args.judge_model or os.environ.get("XLLAMA_JUDGE_MODEL")
    if not base_url:
        raise XllamaError("no judge endpoint: pass --base-url or set XLLAMA_JUDGE_BASE_URL")
    if not model:
        raise XllamaError("no judge model: pass --judge-model or set XLLAMA_JUDGE_MODEL")
    if not base_url.startswith(("http://", "https://")):
        raise XllamaError(f"judge base URL {base_url!r} must start with http:// or https://")
    return JudgeClient(base_url, model, args.api_key or os.environ.get("XLLAMA_JUDGE_API_KEY"),
                       timeout=args.timeout, max_retries=args.max_retries)


def run(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    cache = None if getattr(args, "no_cache", False) else (
        getattr(args, "cache", None) or Path(args.out).with_suffix(".cache.jsonl"))
    result = judge_files(args.a, args.b, client, concurrency=args.concurrency, limit=args.limit, cache=cache)
    atomic_write_json(args.out, result)
    print(json.dumps({"judge": result["judge"], **result["summary"]}, ensure_ascii=False, indent=2))
    return 0
