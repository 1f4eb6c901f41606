"""LLM rewriting (data_gen.rewrite) and the LLM clients (parallel_reason.llm),
against a real OpenAI-compatible HTTP server started on loopback with scripted
answers: validation and rejections, retries, resumption after a kill, key hygiene,
the local transformers client."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from data_gen import rewrite as rw
from parallel_reason.format import parse
from parallel_reason.llm import (
    LLM,
    DiskCache,
    JSONAnswerError,
    LLMError,
    OpenAIClient,
    cache_key,
    make_client,
    parse_json_answer,
    redact,
)
from parallel_reason.tasks import math as math_task

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-DO-NOT-LEAK-7f3a9c1e55"

# ---------------------------------------------------------------------------
# Scripted records: a squared-distance problem whose two squares are independent


def distance_case(name: str, a: tuple[int, int], b: tuple[int, int], mode: str = "good") -> tuple[dict, dict]:
    """(input row, scripted answers by step) for points ``name[0]``=a, ``name[1]``=b.
    ``mode`` breaks one step: changed | leak_phrase | leak_qty | broken | bad_plan |
    fenced (good, but the JSON comes wrapped in prose and a code fence)."""
    P, Q = name
    dx, dy = b[0] - a[0], b[1] - a[1]
    dx2, dy2 = dx * dx, dy * dy
    s = dx2 + dy2
    question = (
        f"Point {P} is ({a[0]}, {a[1]}) and point {Q} is ({b[0]}, {b[1]}). What is the squared distance {P}{Q}^2?"
    )
    steps = [
        f"We use {P}{Q}^2 = (dx)^2 + (dy)^2 and compute the two squares separately.",
        f"The horizontal difference is dx = {b[0]} - {a[0]} = {dx}, so (dx)^2 = {dx}*{dx} = {dx2}.",
        f"The vertical difference is dy = {b[1]} - {a[1]} = {dy}, so (dy)^2 = {dy}*{dy} = {dy2}.",
        f"Adding the squares, {P}{Q}^2 = {dx2} + {dy2} = {s}. The answer is \\boxed{{{s}}}.",
    ]
    row = {"id": f"dist-{name}-{mode}", "question": question, "reasoning": " ".join(steps), "answer": str(s)}
    split = list(steps)
    threads = [steps[1], steps[2]]
    plan = [1, {"parallel": [[2], [3]]}, 4]
    if mode == "changed":
        split[3] = split[3].replace(str(s), str(s + 1))
    elif mode == "leak_phrase":
        threads[1] = "Using the result of thread 1, " + steps[2][0].lower() + steps[2][1:]
    elif mode == "leak_qty":
        threads[1] = steps[2] + f" This is larger than {dx2}."
    elif mode == "broken":
        threads[0] = steps[1] + "</Thread>"
    elif mode == "bad_plan":
        plan = [1, {"parallel": [[2], [3, 4]]}]
    answers = {
        "steps": {"steps": [{"id": i, "text": t} for i, t in enumerate(split, 1)]},
        "dependencies": {"dependencies": {"1": [], "2": [1], "3": [1], "4": [2, 3]}},
        "plan": {"plan": plan},
        "threads": {"threads": threads},
        "outlines": {"outlines": ["Compute (dx)^2 from the x-coordinates.", "Compute (dy)^2 from the y-coordinates."]},
    }
    if mode == "fenced":
        answers = {
            k: "Sure, here it is:\n```json\n" + json.dumps(v, indent=2) + "\n```\nHope this helps {}."
            for k, v in answers.items()
        }
    return row, answers


STEP_KEYS = ("steps", "dependencies", "plan", "threads", "outlines")


def body_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class ScriptedServer(ThreadingHTTPServer):
    """An OpenAI-compatible server on 127.0.0.1 that answers from a script keyed by
    (question, step). ``fault(n, body)`` may return "500", "429", "400", "timeout" or
    "echo401" for request number ``n`` (1-based); with ``block_after`` set, requests
    beyond that number wait until ``release`` is set (and then fail)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.answered: list[str] = []  # body hashes answered with 200
        self.fault = None
        self.block_after: int | None = None
        self.blocked = threading.Event()
        self.release = threading.Event()
        self.tokens = [0, 0]
        self.delay = 1.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def add(self, row: dict, answers: dict) -> None:
        self.script[row["question"]] = answers

    def prompt_of(self, body: dict) -> str:
        if "messages" in body:
            return "\n".join(m["content"] for m in body["messages"])
        return body["prompt"]

    def answer(self, body: dict) -> str:
        prompt = self.prompt_of(body)
        step = next(k for k in STEP_KEYS if f'JSON of the form {{"{k}"' in prompt)
        q = next(q for q in self.script if q in prompt)
        a = self.script[q][step]
        if "could not be used" in prompt:  # the pipeline re-asks after an unusable answer
            a = self.script[q].get(step + "__retry", a)
        return a if isinstance(a, str) else json.dumps(a)


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            n = len(srv.requests) + 1
            srv.requests.append(
                {
                    "n": n,
                    "path": self.path,
                    "auth": self.headers.get("Authorization"),
                    "hash": body_hash(body),
                    "body": body,
                }
            )
        if srv.block_after is not None and n > srv.block_after:
            srv.blocked.set()
            srv.release.wait(30)
            return self._send(503, {"error": {"message": "shutting down"}})
        action = srv.fault(n, body) if srv.fault else None
        if action == "500":
            return self._send(500, {"error": {"message": "internal error"}})
        if action == "429":
            return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        if action == "400":
            return self._send(400, {"error": {"message": "bad request"}})
        if action == "echo401":  # a misbehaving server that echoes the credentials
            return self._send(401, {"error": {"message": f"invalid key: {self.headers.get('Authorization')}"}})
        if action == "timeout":
            time.sleep(srv.delay)
            return self._send(500, {"error": {"message": "too late"}})
        text = srv.answer(body)
        pt, ct = len(srv.prompt_of(body).split()), len(text.split())
        if self.path.endswith("/chat/completions"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop"}
        with srv.lock:
            srv.answered.append(body_hash(body))
            srv.tokens[0] += pt
            srv.tokens[1] += ct
        self._send(
            200,
            {
                "id": f"cmpl-{n}",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [choice],
                "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
            },
        )


@pytest.fixture
def server():
    srv = ScriptedServer()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def make_llm(srv: ScriptedServer, cache, endpoint: str = "chat", **kw) -> LLM:
    client = OpenAIClient(
        srv.url,
        "scripted-model",
        endpoint=endpoint,
        timeout=kw.pop("timeout", 5.0),
        backoff=0.01,
        backoff_max=0.05,
        seed=0,
        **kw,
    )
    return LLM(client, cache, price_prompt_per_1k=0.5, price_completion_per_1k=1.5)


def read_jsonl(path) -> list[dict]:
    p = Path(path)
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


GOOD = [distance_case("AB", (1, 2), (13, -9)), distance_case("CD", (-3, 4), (8, 20), "fenced")]

# ---------------------------------------------------------------------------
# Pipeline against the scripted server


def test_good_rewrite_passes_validation(server, tmp_path):
    for row, ans in GOOD:
        server.add(row, ans)
    llm = make_llm(server, tmp_path / "cache")
    out = tmp_path / "out.jsonl"
    summary = rw.run([r for r, _ in GOOD], llm, rw.RewriteConfig(), out, concurrency=2, progress=False)
    assert summary["kept"] == 2 and summary["rejected"] == 0, read_jsonl(rw.rejected_path(out))
    recs = read_jsonl(out)
    assert [r["id"] for r in recs] == [r["id"] for r, _ in GOOD]  # input order
    for rec, (row, _) in zip(recs, GOOD):
        assert set(rec) >= {"id", "task", "prompt", "completion", "answer", "stats"}
        assert rec["prompt"] == row["question"] and rec["answer"] == row["answer"] and rec["task"] == "math"
        traj = parse(rec["completion"])  # strict
        assert [(b.width, d) for b, d in traj.blocks()] == [(2, 1)]
        assert math_task.verify(rec["completion"], row["answer"]).ok
        assert rec["stats"]["threads"] == 2 and rec["stats"]["parallel_ratio"] >= 0.3
        assert rec["completion"].endswith(f"\\boxed{{{row['answer']}}}.\n")
        assert "<Outline>1: Compute (dx)^2 from the x-coordinates.</Outline>" in rec["completion"]
    # one call per step (split, dependencies, group, rewrite, outline) per record
    assert len(server.requests) == 10 and all(r["path"] == "/v1/chat/completions" for r in server.requests)
    u = summary["usage"]
    assert (u["calls"], u["cached_calls"], u["retries"]) == (10, 0, 0)
    assert (u["prompt_tokens"], u["completion_tokens"]) == tuple(server.tokens)  # from the API's usage
    assert u["cost"] == pytest.approx(server.tokens[0] / 1000 * 0.5 + server.tokens[1] / 1000 * 1.5)
    assert summary["metrics"]["n"] == 2 and summary["metrics"]["speedup_ratio_of_means"] > 1
    # a rerun is served from the cache: no request at all
    summary2 = rw.run(
        [r for r, _ in GOOD], make_llm(server, tmp_path / "cache"), rw.RewriteConfig(), out, progress=False
    )
    assert len(server.requests) == 10 and summary2["usage"]["cached_calls"] == 10 and summary2["kept"] == 2
    assert read_jsonl(out) == recs


def test_bad_rewrites_are_rejected_with_reason(server, tmp_path):
    cases = {
        "changed": distance_case("EF", (0, 0), (12, 35), "changed"),
        "leak_phrase": distance_case("GH", (2, 3), (14, 19), "leak_phrase"),
        "leak_qty": distance_case("IJ", (1, 1), (21, 12), "leak_qty"),
        "broken": distance_case("KL", (5, 5), (17, 30), "broken"),
        "bad_plan": distance_case("MN", (0, 1), (15, 21), "bad_plan"),
    }
    for row, ans in cases.values():
        server.add(row, ans)
    src_bad = dict(distance_case("OP", (1, 0), (11, 30))[0], answer="999")  # its own reasoning disagrees
    rows = [r for r, _ in cases.values()] + [src_bad, {"id": "empty", "question": "q?"}]
    out = tmp_path / "out.jsonl"
    summary = rw.run(rows, make_llm(server, tmp_path / "cache"), rw.RewriteConfig(), out, concurrency=3, progress=False)
    assert read_jsonl(out) == [] and summary["rejected"] == 7
    rej = {r["id"]: r for r in read_jsonl(rw.rejected_path(out))}
    got = {k: rej[row["id"]] for k, (row, _) in cases.items()}
    assert got["changed"]["reason"] == "answer" and "'1370' differs from '1369'" in got["changed"]["message"]
    assert (
        got["leak_phrase"]["reason"] == "leak"
        and "thread 2 refers to another thread: 'thread 1'" in got["leak_phrase"]["message"]
    )
    assert got["leak_qty"]["reason"] == "leak"
    assert "thread 2 uses '400', first introduced in sibling thread 1" in got["leak_qty"]["message"]
    assert got["broken"]["reason"] == "grammar" and "</Thread>" in got["broken"]["message"]
    assert got["bad_plan"]["reason"] == "plan" and got["bad_plan"]["step"] == "group"
    assert "step 4 (thread 2) depends on step 2, which runs in sibling thread 1" in got["bad_plan"]["message"]
    for k in ("changed", "leak_phrase", "leak_qty"):  # validation failures carry the trajectory
        assert got[k]["step"] == "validate" and "<Parallel>" in got[k]["completion"]
    assert rej[src_bad["id"]]["reason"] == "source_answer" and rej["empty"]["reason"] == "missing_field"
    # the bad plan stops after (c); the source-answer failure never reaches the model
    asked = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert not any(src_bad["question"] in a for a in asked)
    assert sum(cases["bad_plan"][0]["question"] in a for a in asked) == 3
    assert summary["reasons"] == {
        "leak": 2,
        "answer": 1,
        "grammar": 1,
        "plan": 1,
        "source_answer": 1,
        "missing_field": 1,
    }


def test_unusable_json_is_reasked_then_rejected(server, tmp_path):
    fixed, ans = distance_case("YZ", (0, 0), (20, 21))
    ans = {**ans, "steps__retry": ans["steps"], "steps": "Sorry, I can only answer in prose."}
    server.add(fixed, ans)
    hopeless, ans2 = distance_case("AC", (0, 0), (9, 40))
    ans2 = {
        **ans2,
        "dependencies": "{'1': []}",
        "plan": {"plan": [1, {"parallel": [[2], [3]]}, 4, 7]},
        "plan__retry": {"plan": [1, {"parallel": [[2], ["three"]]}, 4]},
    }
    server.add(hopeless, ans2)
    out = tmp_path / "out.jsonl"
    rows = [fixed, dict(hopeless, id="h1"), 42]
    summary = rw.run(rows, make_llm(server, tmp_path / "cache"), rw.RewriteConfig(), out, progress=False)
    assert [r["id"] for r in read_jsonl(out)] == [fixed["id"]]  # kept after one re-ask
    rej = read_jsonl(rw.rejected_path(out))
    assert rej[0]["id"] == "h1" and rej[0]["reason"] == "llm_json" and rej[0]["step"] == "dependencies"
    assert "no JSON object in the answer" in rej[0]["message"]
    assert rej[1]["reason"] == "missing_field" and rej[1]["index"] == 2
    # with valid dependencies the plan is re-asked once, then rejected for its content
    ans2["dependencies"] = {"dependencies": {"1": [], "2": [1], "3": [1], "4": [2, 3]}}
    summary = rw.run(
        [dict(hopeless, id="h2")], make_llm(server, tmp_path / "cache"), rw.RewriteConfig(), out, progress=False
    )
    rej = read_jsonl(rw.rejected_path(out))
    assert rej[0]["reason"] == "llm_schema" and "'three' is not a step number" in rej[0]["message"]
    assert summary["usage"]["calls"] == 4  # split, dependencies, plan, plan re-asked


def test_completions_endpoint(server, tmp_path):
    row, ans = GOOD[0]
    server.add(row, ans)
    out = tmp_path / "out.jsonl"
    summary = rw.run([row], make_llm(server, None, endpoint="completions"), rw.RewriteConfig(), out, progress=False)
    assert summary["kept"] == 1
    assert {r["path"] for r in server.requests} == {"/v1/completions"}
    assert all("prompt" in r["body"] and "messages" not in r["body"] for r in server.requests)


def test_server_errors_and_timeouts_are_retried(server, tmp_path):
    row, ans = GOOD[0]
    server.add(row, ans)
    faults = {1: "500", 2: "timeout", 3: "429", 6: "500"}
    server.fault = lambda n, body: faults.get(n)
    server.delay = 1.5
    llm = make_llm(server, tmp_path / "cache", timeout=0.75)
    out = tmp_path / "out.jsonl"
    summary = rw.run([row], llm, rw.RewriteConfig(), out, progress=False)
    assert summary["kept"] == 1, read_jsonl(rw.rejected_path(out))
    assert len(server.requests) == 9 and summary["usage"]["retries"] == 4 and summary["usage"]["calls"] == 5
    # the same request body was resent after each failure
    assert (
        server.requests[0]["hash"]
        == server.requests[1]["hash"]
        == server.requests[2]["hash"]
        == server.requests[3]["hash"]
    )


def test_client_retry_policy(server):
    row, ans = GOOD[0]
    server.add(row, ans)
    prompt = rw.fill(rw.PROMPT_SPLIT, question=row["question"], reasoning=row["reasoning"])
    sleeps = []
    client = OpenAIClient(server.url, "m", backoff=0.01, backoff_max=0.04, timeout=5, seed=1, sleep=sleeps.append)
    server.fault = lambda n, body: {1: "500", 2: "500", 3: "500"}.get(n)
    c = client.complete(prompt)
    assert json.loads(c.text)["steps"] and client.retries == 3 and c.prompt_tokens > 0
    # exponential backoff with jitter, capped: each delay within [base/2, base]
    for k, d in enumerate(sleeps):
        base = min(0.04, 0.01 * 2**k)
        assert base / 2 <= d <= base
    n0 = len(server.requests)
    server.fault = lambda n, body: "400"
    with pytest.raises(LLMError, match="HTTP 400") as ei:
        client.complete(prompt)
    assert not ei.value.retryable and len(server.requests) == n0 + 1  # not retried
    server.fault = lambda n, body: "500"
    client.max_retries = 2
    with pytest.raises(LLMError, match="gave up after 3 attempts"):
        client.complete(prompt)
    assert len(server.requests) == n0 + 4


def _cli(srv: ScriptedServer, inp: Path, out: Path, cache: Path, *extra: str, env: dict | None = None):
    cmd = [
        sys.executable,
        "-m",
        "data_gen.rewrite",
        "--input",
        str(inp),
        "--out",
        str(out),
        "--llm",
        srv.url,
        "--model",
        "scripted-model",
        "--cache",
        str(cache),
        "--backoff",
        "0.01",
        "--backoff-max",
        "0.05",
        "--timeout",
        "5",
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def test_killed_run_resumes_without_repeating_completed_calls(server, tmp_path):
    cases = [
        distance_case(n, a, b)
        for n, a, b in (("QR", (0, 0), (10, 24)), ("ST", (1, 2), (13, 18)), ("UV", (3, 3), (23, 24)))
    ]
    for row, ans in cases:
        server.add(row, ans)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r, _ in cases))
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache"
    server.block_after = 7  # record 1 done (5 calls), record 2 half done (2 calls); the 8th call hangs
    proc = _cli(server, inp, out, cache, "--concurrency", "1", "--no-progress")
    try:
        assert server.blocked.wait(60), proc.communicate()
        proc.kill()  # killed in the middle of a call
        proc.wait(30)
    finally:
        server.release.set()
    first_answered = set(server.answered)
    assert len(first_answered) == 7 and not out.exists()
    n_first = len(server.requests)
    server.block_after = None
    proc = _cli(server, inp, out, cache, "--concurrency", "1", "--no-progress")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    second = server.requests[n_first:]
    assert len(second) == 15 - 7  # only what was not completed, including the interrupted call
    assert not first_answered & {r["hash"] for r in second}  # no completed call repeated
    assert [r["id"] for r in read_jsonl(out)] == [r["id"] for r, _ in cases]
    summary = json.loads(err[err.index("{") :])
    assert summary["usage"]["cached_calls"] == 7 and summary["usage"]["calls"] == 8


def test_api_key_never_written_or_logged(server, tmp_path):
    good, ans = GOOD[0]
    server.add(good, ans)
    leaky, ans2 = distance_case("WX", (2, 2), (14, 7))
    server.add(leaky, ans2)
    # the first call fails (logged retry); every call about `leaky` gets a 401 that echoes the credentials
    server.fault = lambda n, body: "500" if n == 1 else ("echo401" if leaky["question"] in json.dumps(body) else None)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(good) + "\n" + json.dumps(leaky) + "\n")
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache"
    proc = _cli(
        server,
        inp,
        out,
        cache,
        "--api-key-env",
        "PR_TEST_KEY",
        "--log-level",
        "INFO",
        "--concurrency",
        "1",
        env={"PR_TEST_KEY": SECRET},
    )
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert all(r["auth"] == f"Bearer {SECRET}" for r in server.requests)  # the key is used...
    assert "retry 1/6" in stderr and "HTTP 500" in stderr  # (something was logged)
    rej = read_jsonl(rw.rejected_path(out))
    assert rej[0]["reason"] == "llm_error" and "HTTP 401" in rej[0]["message"] and "[REDACTED]" in rej[0]["message"]
    assert len(read_jsonl(out)) == 1
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".json" for p in files)  # the cache was written
    for text in [stdout, stderr] + [p.read_text(errors="replace") for p in files]:
        assert SECRET not in text  # ...but never logged nor written anywhere
    assert SECRET not in repr(OpenAIClient(server.url, "m", api_key_env="PR_TEST_KEY"))


def test_every_call_failing_exits_non_zero_and_keys_in_the_url_stay_out(tmp_path, monkeypatch, capsys):
    """An unreachable server given with the key inside --llm (user:KEY@host, ?api-key=):
    every record fails, the exit status says so, and neither key reaches a file or stderr."""
    import httpx2

    user_key, query_key = "sk-USERINFO-secret-91b2", "sk-QUERY-secret-77aa"
    seen = []

    def unreachable(self, request):
        seen.append(str(request.url))
        raise httpx2.ConnectError(f"cannot reach {request.url}", request=request)  # as an echoing proxy would say

    monkeypatch.setattr(httpx2.HTTPTransport, "handle_request", unreachable)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r, _ in GOOD))
    out = tmp_path / "out.jsonl"
    llm = f"http://user:{user_key}@127.0.0.1:9/v1?api-key={query_key}"
    rc = rw.main(
        [
            "--input",
            str(inp),
            "--out",
            str(out),
            "--llm",
            llm,
            "--model",
            "m",
            "--max-retries",
            "0",
            "--concurrency",
            "1",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "error: every record failed on the LLM (2 records" in err
    assert seen and all(user_key in u for u in seen)  # the URL was used as given...
    rej = read_jsonl(rw.rejected_path(out))
    assert [r["reason"] for r in rej] == ["llm_error"] * 2 and "[REDACTED]" in rej[0]["message"]
    for text in [err] + [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]:
        assert user_key not in text and query_key not in text  # ...but never written
    assert user_key not in repr(OpenAIClient(llm, "m"))
    # no record at all is an error too, not an empty success
    (tmp_path / "empty.jsonl").write_text("\n")
    assert rw.main(["--input", str(tmp_path / "empty.jsonl"), "--out", str(out), "--llm", llm]) == 2
    assert "error: --input" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Units: JSON answers, cache, redaction, plan/leak checks, verifier, local model


def test_parse_json_answer():
    assert parse_json_answer('{"a": 1}') == {"a": 1}
    assert parse_json_answer('Here:\n```json\n{"a": {"b": "}"}}\n```') == {"a": {"b": "}"}}
    assert parse_json_answer('prefix {not json} then {"plan": [1, {"parallel": [[2], [3]]}]} tail') == {
        "plan": [1, {"parallel": [[2], [3]]}]
    }
    assert parse_json_answer("[1, 2]", expect=list) == [1, 2]
    for bad in ("", "no json here", "__import__('os').system('true')", "{'a': 1}", "[1, 2]"):
        with pytest.raises(JSONAnswerError, match="no JSON object"):
            parse_json_answer(bad)


def test_disk_cache(tmp_path):
    cache = DiskCache(tmp_path)
    k1 = cache_key("m", "p", {"temperature": 0})
    assert k1 != cache_key("m", "p", {"temperature": 1}) != cache_key("m2", "p", {"temperature": 0})
    assert cache.get("rec/1", "split", k1) is None
    cache.put("rec/1", "split", k1, {"text": "hello"})
    assert cache.get("rec/1", "split", k1)["text"] == "hello"
    files = list(tmp_path.rglob("*"))
    assert [p.name for p in files if p.is_file()] == [f"split.{k1[:32]}.json"]  # no temp file left
    cache.path("rec/1", "split", k1).write_text("{truncated")
    assert cache.get("rec/1", "split", k1) is None  # unreadable entries are ignored


def test_redact():
    assert SECRET not in redact(f"bad key {SECRET}!", [SECRET])
    assert redact('{"auth": "Bearer abc.def"}', []) == '{"auth": "Bearer [REDACTED]"}'


def test_plan_checks():
    deps = rw.parse_deps({"dependencies": {"1": [], "2": [1], "3": ["1"], "4": [2, 3]}}, 4)
    assert deps == {1: set(), 2: {1}, 3: {1}, 4: {2, 3}}
    with pytest.raises(ValueError, match="not an earlier step"):
        rw.parse_deps({"dependencies": {"2": [3]}}, 4)
    plan = rw.parse_plan({"plan": [1, {"parallel": [[2], [3, {"parallel": [[4], [5]]}]]}, 6]}, 6)
    assert plan[1].threads == [[2], [3, 4, 5]]  # nested blocks run sequentially in their thread
    ok = rw.parse_plan({"plan": [1, {"parallel": [[2], [3]]}, 4]}, 4)
    rw.check_plan(ok, deps, 4)
    for plan, msg in [
        ([1, {"parallel": [[2], [3]]}], "leaves out step(s) 4"),
        ([1, 2, 3, 4], "no parallel block"),
        ([1, {"parallel": [[2], [3]]}, 4, 4], "appears 2 times"),
        ([{"parallel": [[2], [3]]}, 1, 4], "depends on step 1, which comes later"),
    ]:
        with pytest.raises(rw.Reject, match=re.escape(msg)):
            rw.check_plan(rw.parse_plan({"plan": plan}, 4), deps, 4)


def test_leak_heuristic_and_balance():
    from parallel_reason.format import Trajectory, make_block, render

    def traj(t1: str, t2: str) -> str:
        return render(
            Trajectory(
                [
                    "Let a = 12 and b = 15.\n",
                    make_block([("first", " " + t1), ("second", " " + t2)]),
                    "\nDone: \\boxed{3}.",
                ]
            )
        )

    q = "Given 12 and 15."
    ok = parse(traj("a squared is 144.", "b squared is 225, and 12 is given."))
    assert rw.find_leaks(ok, q) == []
    both = parse(traj("Then 144 - 100 = 44.", "Also 200 - 156 = 44."))  # derived independently in both
    assert rw.find_leaks(both, q) == []
    leak = parse(traj("Let x_1 = 7.", "Then x_1 + 5 is 12, as computed above."))
    assert any("uses 'x_1', first introduced in sibling thread 1" in p for p in rw.find_leaks(leak, q))
    assert any("as computed above" not in p for p in rw.find_leaks(leak, q))
    rec = rw.Record("r", q, "x", "3")
    cfg = rw.RewriteConfig(min_parallel_ratio=0.0, max_imbalance=2.0)
    reasons = rw.validate_trajectory(traj("short.", "a much longer thread " * 5), rec, cfg, rw.TaskChecker("math"))
    assert [c for c, _ in reasons] == ["imbalance"]
    cfg = rw.RewriteConfig(min_parallel_ratio=0.9)
    reasons = rw.validate_trajectory(traj("one.", "two."), rec, cfg, rw.TaskChecker("math"))
    assert [c for c, _ in reasons] == ["parallel_ratio"]


def test_hf_client_local_model(tmp_path):
    from parallel_reason.tiny import build_tiny

    corpus = ['alpha beta gamma delta 0 1 2 3 4 5 6 7 8 9 { } " :'] * 20
    build_tiny(corpus, tmp_path / "tiny", vocab_size=300)
    client = make_client(str(tmp_path / "tiny"))
    assert type(client).__name__ == "HFClient"
    llm = LLM(client, tmp_path / "cache")
    c = llm("alpha beta", record_id="r1", step="s", max_tokens=4)
    assert isinstance(c.text, str) and 1 <= c.completion_tokens <= 4 and c.prompt_tokens > 0 and not c.cached
    c2 = llm("alpha beta", record_id="r1", step="s", max_tokens=4)
    assert c2.cached and c2.text == c.text and llm.usage.calls == 1 and llm.usage.cached_calls == 1
    assert client.render_prompt("hi", "sys") == "sys\n\nhi"  # no chat template: plain prompt
    client.tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    assert client.render_prompt("hi", "sys") == "<system>sys<user>hi<assistant>"
    c3 = client.complete("hi", system="sys", max_tokens=3)
    assert c3.completion_tokens <= 3


def test_task_checker_reads_answers():
    gsm = rw.Record("g", "How many?", "48/2 = 24 clips in May.\n48+24 = 72.\n#### 72", "48+24 = 72.\n#### 72")
    chk = rw.TaskChecker("math", "gsm8k")
    assert chk.reference(gsm) == "72" and chk.check(gsm.reasoning, gsm)[0]
    assert not chk.check("so 48+24 = 73\n#### 73", gsm)[0]
    assert not rw.TaskChecker("math").check(gsm.reasoning, gsm)[0]  # no \boxed{} without the pattern
    boxed = rw.Record("b", "q", "so \\boxed{\\frac{1}{2}}", None)  # no answer field: read from the reasoning
    assert rw.TaskChecker("math").reference(boxed) == "\\frac{1}{2}"
    assert rw.TaskChecker("math").check("x\n\\boxed{0.5}", boxed)[0]
    cd = rw.Record(
        "c",
        "Numbers: 3 5 2\nTarget: 16\n",
        "3+5=8 8*2=16\nAnswer: (3+5)*2",
        "(3+5)*2",
        {"nums": [3, 5, 2], "target": 16},
    )
    assert rw.TaskChecker("countdown").check(cd.reasoning, cd) == (True, "correct")
    assert not rw.TaskChecker("countdown").check("Answer: 3*5+2", cd)[0]
