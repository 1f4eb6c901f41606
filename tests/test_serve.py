"""The OpenAI-compatible server (parallel_reason.serve) and the remote runner backend,
on real HTTP over loopback: the openai client, greedy and seeded equality with the
in-process runner, the remote backend against our server, bad requests, limits,
disconnects, and a load test (slow)."""

from __future__ import annotations

import copy
import json
import random
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx2")

from conftest import make_model, random_text, saved_countdown_model  # noqa: E402
from test_runner import MarkovLM, markov_table  # noqa: E402

from parallel_reason.runner import Runner  # noqa: E402
from parallel_reason.runner.remote import RemoteFeatureError, RemoteRunner, parse_choice  # noqa: E402
from parallel_reason.serve import ServeConfig, ServerThread, build_server  # noqa: E402

CHAT = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
NAME = "tiny-markov"
MAX = 48  # runner budget of the served model (max_tokens may not exceed it)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    t = copy.deepcopy(tiny_tokenizer)
    t.chat_template = CHAT
    return t


@pytest.fixture(scope="module")
def model(tok):
    """Forks often (a Markov chain over the grammar on top of a tiny model)."""
    base = make_model(tok, seed=3)
    return MarkovLM(base, markov_table(tok, base.lm_head.out_features)).eval()


@pytest.fixture(scope="module")
def server(tok, model):
    cfg = ServeConfig(model_name=NAME, max_tokens_limit=MAX, max_body_bytes=64 * 1024, max_concurrent=128)
    app, engine = build_server(model, tok, cfg, max_rows=16, max_new_tokens=MAX)
    with ServerThread(app) as s:
        s.engine = engine
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def prompts(k: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"Numbers:{random_text(rng, 1, 4)}\n" for _ in range(k)]


def reference(model, tok, ps, max_tokens: int, **kw):
    return Runner(model, tok, max_new_tokens=max_tokens, batch_size=8).generate(ps, **kw)


def wait_idle(engine, timeout: float = 20.0) -> None:
    t0 = time.time()
    while engine.jobs and time.time() - t0 < timeout:
        time.sleep(0.02)
    assert engine.jobs == 0, f"{engine.jobs} jobs still in flight"


# ---------------------------------------------------------------------- openai client


def test_openai_client_completions_chat_and_streaming(server, tok, model):
    openai = pytest.importorskip("openai")
    oc = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    assert [m.id for m in oc.models.list().data] == [NAME]
    p = prompts(1)[0]
    ref = reference(model, tok, [p], 24, temperature=0)[0]
    r = oc.completions.create(
        model=NAME, prompt=p, max_tokens=24, temperature=0, logprobs=2, extra_body={"return_token_ids": True}
    )
    c = r.choices[0]
    assert c.model_extra["token_ids"] == ref.completion_ids
    assert c.text == tok.decode([t for t in ref.completion_ids if t != tok.eos_token_id], skip_special_tokens=False)
    assert len(c.logprobs.token_logprobs) == len(ref.completion_ids)
    assert r.usage.completion_tokens == len(ref.completion_ids)
    assert r.usage.model_extra["sampled_tokens"] == ref.total_tokens
    assert r.usage.model_extra["critical_path"] == ref.critical_path
    assert c.finish_reason == ("length" if ref.finish_reason in ("max_new_tokens", "unclosed_thread") else "stop")
    streamed = "".join(
        ch.choices[0].text
        for ch in oc.completions.create(model=NAME, prompt=p, max_tokens=24, temperature=0, stream=True)
    )
    assert streamed == c.text

    msgs = [{"role": "user", "content": "Numbers: 3 4"}]
    chat_prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    cref = reference(model, tok, [chat_prompt], MAX, temperature=0)[0]
    cr = oc.chat.completions.create(model=NAME, messages=msgs, temperature=0)
    want = tok.decode([t for t in cref.completion_ids if t != tok.eos_token_id], skip_special_tokens=False)
    assert cr.choices[0].message.content == want
    parts = []
    for ch in oc.chat.completions.create(
        model=NAME, messages=msgs, temperature=0, stream=True, stream_options={"include_usage": True}
    ):
        if ch.choices and ch.choices[0].delta.content:
            parts.append(ch.choices[0].delta.content)
        if ch.usage is not None:
            assert ch.usage.completion_tokens == len(cref.completion_ids)
    assert "".join(parts) == want


# ---------------------------------------------------------------------- equality


def test_concurrent_greedy_equals_in_process_runner(server, client, tok, model):
    ps = prompts(12, seed=1)
    lens = [8 + 5 * (i % 8) for i in range(len(ps))]
    out: dict = {}

    def ask(i):
        body = {
            "model": NAME,
            "prompt": ps[i],
            "max_tokens": lens[i],
            "temperature": 0,
            "return_token_ids": True,
            "stream": i % 3 == 0,
        }
        if body["stream"]:
            with client.stream("POST", "/completions", json=body) as r:
                text = ""
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        ch = json.loads(line[6:])["choices"][0]
                        text += ch["text"]
                        if ch["finish_reason"]:
                            out[i] = (text, ch["token_ids"])
        else:
            ch = client.post("/completions", json=body).json()["choices"][0]
            out[i] = (ch["text"], ch["token_ids"])

    ts = [threading.Thread(target=ask, args=(i,)) for i in range(len(ps))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    forks = 0
    for i, p in enumerate(ps):
        ref = reference(model, tok, [p], lens[i], temperature=0)[0]
        forks += ref.forks
        text, ids = out[i]
        assert ids == ref.completion_ids, i
        assert text == tok.decode([t for t in ids if t != tok.eos_token_id], skip_special_tokens=False)
    assert forks > 0  # the comparison covers forks and joins


def test_seeded_sampling_equals_runner_and_repeats(client, tok, model):
    ps = prompts(2, seed=2)
    body = {
        "prompt": ps,
        "max_tokens": 32,
        "temperature": 1.0,
        "top_p": 0.9,
        "n": 3,
        "seed": 11,
        "return_token_ids": True,
    }
    a = client.post("/completions", json=body).json()
    b = client.post("/completions", json=body).json()
    ref = Runner(model, tok, max_new_tokens=32).generate(ps, n=3, temperature=1.0, top_p=0.9, seed=11)
    assert [c["index"] for c in a["choices"]] == list(range(6))
    assert [c["token_ids"] for c in a["choices"]] == [c["token_ids"] for c in b["choices"]]
    assert [c["token_ids"] for c in a["choices"]] == [r.completion_ids for r in ref]


def _streamed(client, body) -> dict:
    texts: dict = {}
    with client.stream("POST", "/completions", json=body | {"stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                ch = json.loads(line[6:])["choices"][0]
                texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
    return texts


def test_streamed_text_equals_the_completion_with_forks(client):
    """Sampled rollouts that fork and nest: the streamed deltas add up to the text."""
    body = {"prompt": prompts(4, seed=8), "max_tokens": MAX, "temperature": 1.0, "n": 3, "seed": 5}
    full = client.post("/completions", json=body).json()
    assert sum(c["parallel"]["forks"] for c in full["choices"]) >= 3
    texts = _streamed(client, body)
    assert texts == {c["index"]: c["text"] for c in full["choices"]}
    stop = {"stop": ["</Outline>", "9"]}  # stop strings inside block heads and threads
    full = client.post("/completions", json=body | stop).json()
    assert _streamed(client, body | stop) == {c["index"]: c["text"] for c in full["choices"]}
    for c in full["choices"]:
        assert "</Outline>" not in c["text"] and "9" not in c["text"]
    assert sum(c["stop_reason"] in ("</Outline>", "9") for c in full["choices"]) >= 3


def test_stop_strings_cut_the_text(client, tok, model):
    p = prompts(1, seed=3)[0]
    full = client.post("/completions", json={"prompt": p, "max_tokens": 32, "temperature": 0}).json()
    text = full["choices"][0]["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = text[: text.find(stop)]
    r = client.post("/completions", json={"prompt": p, "max_tokens": 32, "temperature": 0, "stop": stop}).json()
    assert r["choices"][0]["text"] == cut and r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["stop_reason"] == stop
    body = {"prompt": p, "max_tokens": 32, "temperature": 0, "stop": [stop], "stream": True}
    with client.stream("POST", "/completions", json=body) as s:
        got = "".join(
            json.loads(line[6:])["choices"][0]["text"] for line in s.iter_lines() if line.startswith("data: {")
        )
    assert got == cut


def test_remote_backend_on_our_server_equals_hf_backend(server, tok, model):
    ps = prompts(6, seed=4)
    ref = reference(model, tok, ps, 40, temperature=0)
    rr = RemoteRunner(tok, engine=server.url, max_new_tokens=40, batch_size=4, chunk=8)
    got = rr.generate(ps, temperature=0)
    assert sum(r.forks for r in ref) > 0
    for a, b in zip(got, ref):
        assert a.completion_ids == b.completion_ids
        assert a.finish_reason == b.finish_reason
        assert a.critical_path == b.critical_path and a.total_tokens == b.total_tokens
        assert max((abs(x - y) for x, y in zip(a.logprobs, b.logprobs)), default=0) < 1e-3
    assert rr.stats.requests > len(ps)  # forks and joins became requests of their own


def test_remote_backend_errors(server, tok):
    with pytest.raises(RemoteFeatureError, match="return_tokens_as_token_ids"):
        parse_choice({"choices": [{"text": "a", "logprobs": {"tokens": ["a"], "token_logprobs": [-1.0]}}]})
    with pytest.raises(RemoteFeatureError, match="log-probs"):
        parse_choice({"choices": [{"text": "a", "token_ids": [3]}]})
    from parallel_reason.runner.remote import RemoteError

    with pytest.raises(RemoteError, match="ConnectError|after 1 retries"):
        RemoteRunner(tok, engine="http://127.0.0.1:9/v1", model="m", retries=1, timeout=2)
    with pytest.raises(RemoteError, match="HTTP 404"):
        RemoteRunner(tok, engine=server.url, model="not-served", retries=0)


def test_remote_engine_retries_with_backoff_then_fails_clearly():
    from parallel_reason.runner.remote import RemoteEngine, RemoteError

    calls = []
    answer = {
        "choices": [{"token_ids": [7, 8], "logprobs": {"token_logprobs": [-0.5, -0.25]}, "finish_reason": "length"}]
    }

    def handler(request):
        calls.append(json.loads(request.content))
        if len(calls) == 1:
            return httpx.Response(503, json={"error": {"message": "warming up"}})
        if len(calls) == 2:
            return httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"message": "full"}})
        if calls[-1]["max_tokens"] == 99:
            return httpx.Response(400, json={"error": {"message": "max_tokens too large", "param": "max_tokens"}})
        return httpx.Response(200, json=answer)

    eng = RemoteEngine("http://engine.test/v1", model="m", backoff=0.001, transport=httpx.MockTransport(handler))
    assert eng.complete([1, 2], 2, (5, 6), 0.0, 1.0, 0, None) == ([7, 8], [-0.5, -0.25], "length")
    assert eng.stats.retries == 2 and len(calls) == 3
    assert calls[0]["prompt"] == [1, 2] and calls[0]["stop_token_ids"] == [5, 6] and calls[0]["logprobs"] == 1
    with pytest.raises(RemoteError, match="HTTP 400: max_tokens too large"):
        eng.complete([1], 99, (), 0.0, 1.0, 0, None)
    assert len(calls) == 4  # a 400 is not retried


# ---------------------------------------------------------------------- bad requests and limits


@pytest.mark.parametrize(
    "body,param",
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"prompt": "x", "max_tokens": "a"}).encode(), "max_tokens"),
        (json.dumps({"prompt": "x", "temperature": "hot"}).encode(), "temperature"),
        (json.dumps({"prompt": "x", "n": 1.5}).encode(), "n"),
        (json.dumps({"prompt": 5}).encode(), "prompt"),
        (json.dumps({"max_tokens": 4}).encode(), "prompt"),
        (json.dumps({"prompt": "x", "stream": "yes"}).encode(), "stream"),
        (json.dumps({"prompt": "x", "max_tokens": MAX + 1}).encode(), "max_tokens"),
        (json.dumps({"prompt": "x", "max_tokens": 0}).encode(), "max_tokens"),
        (json.dumps({"prompt": [1, 10**6]}).encode(), "prompt"),
        (json.dumps({"prompt": "x", "n": 2, "temperature": 0}).encode(), "n"),
        (json.dumps({"prompt": "x", "top_p": 0}).encode(), "top_p"),
        (json.dumps({"prompt": "x", "echo": True}).encode(), "echo"),
    ],
)
def test_bad_completion_requests_get_400_naming_the_field(client, body, param):
    r = client.post("/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]


def test_bad_chat_requests_and_unknown_model(client):
    r = client.post("/chat/completions", json={"messages": [{"role": "user", "content": 3}]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")
    r = client.post("/chat/completions", json={"messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = client.post("/completions", json={"model": "other", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_oversized_body_gets_413(client):
    big = json.dumps({"prompt": "x" * (70 * 1024)}).encode()
    r = client.post("/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "error" in r.json()

    def chunks():  # no content-length: the limit counts the streamed body
        for _ in range(80):
            yield b" " * 1024

    r = client.post("/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_health_and_models(server, client):
    assert httpx.get(f"http://{server.host}:{server.port}/health").json()["status"] == "ok"
    assert client.get("/models").json()["data"][0]["id"] == NAME


def test_full_server_answers_429_and_disconnect_frees_rows(tok):
    model = make_model(tok, seed=5)  # EOS suppressed, no forks: the first request runs to max_tokens
    bias = torch.zeros(model.lm_head.out_features)
    bias[tok.eos_token_id] = -1e4
    model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    cfg = ServeConfig(model_name=NAME, max_tokens_limit=4000, max_concurrent=1)
    app, engine = build_server(model, tok, cfg, max_rows=4, max_new_tokens=4000, parallel=False)
    p = prompts(1, seed=5)[0]
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        body = {"prompt": p, "max_tokens": 4000, "temperature": 1.0, "seed": 1, "stream": True}
        with c.stream("POST", "/completions", json=body) as r:
            lines = r.iter_lines()  # kept open: a dropped iterator may close the response
            for line in lines:
                if line.startswith("data:"):
                    break
            busy = c.post("/completions", json={"prompt": p, "max_tokens": 4})
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1", (engine.jobs, busy.text[:300])
        # the stream was closed mid-way: its rows leave the batch, the next request runs
        wait_idle(engine)
        with pytest.raises(httpx.ReadTimeout):  # a non-streamed client that gives up is noticed too
            c.post("/completions", json={"prompt": p, "max_tokens": 4000}, timeout=0.5)
        wait_idle(engine)
        ok = c.post("/completions", json={"prompt": p, "max_tokens": 8, "temperature": 0}).json()
        ref = Runner(model, tok, max_new_tokens=8, parallel=False).generate([p], temperature=0)[0]
        assert ok["choices"][0]["text"] == tok.decode(
            [t for t in ref.completion_ids if t != tok.eos_token_id], skip_special_tokens=False
        )


class _Boom(torch.nn.Module):
    """A model whose forward fails when token ``bad`` is fed."""

    def __init__(self, base, bad: int):
        super().__init__()
        self.module = base
        self.config = base.config
        self.bad = bad

    def forward(self, input_ids, **kw):
        if bool((input_ids == self.bad).any()):
            raise RuntimeError("boom")
        return self.module(input_ids=input_ids, **kw)


def test_a_failing_step_fails_its_batch_and_the_server_goes_on(tok, model):
    bad = tok.convert_tokens_to_ids("<Thread>")
    app, engine = build_server(_Boom(model.module, bad), tok, ServeConfig(model_name=NAME), max_new_tokens=8)
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        r = c.post("/completions", json={"prompt": [5, bad, 6], "max_tokens": 4})
        assert r.status_code == 500 and "boom" in r.json()["error"]["message"]
        ok = c.post("/completions", json={"prompt": "Numbers: 1\n", "max_tokens": 4, "temperature": 0})
        assert ok.status_code == 200 and engine.alive
        wait_idle(engine)


def test_a_failing_admission_fails_its_request_and_the_server_goes_on(tok, model):
    """The backend cannot take a request's rows (say, out of memory while the cache
    grows): that request gets a 500, the engine stays alive and serves the next one."""
    app, engine = build_server(model, tok, ServeConfig(model_name=NAME), max_new_tokens=8)
    be = engine.runner.backend
    real, calls = be.add, []

    def add(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(rows)

    be.add = add
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        r = c.post("/completions", json={"prompt": "Numbers: 2\n", "max_tokens": 4})
        assert r.status_code == 500 and "out of memory" in r.json()["error"]["message"]
        ok = c.post("/completions", json={"prompt": "Numbers: 1\n", "max_tokens": 4, "temperature": 0})
        assert ok.status_code == 200 and engine.alive
        wait_idle(engine)


def test_api_key_is_required_and_never_logged(tok, model, caplog):
    key = "sk-test-0123456789"
    app, _ = build_server(model, tok, ServeConfig(model_name=NAME, api_key=key), max_new_tokens=8)
    with caplog.at_level("DEBUG"), ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        assert c.get("/models").status_code == 401
        r = c.post("/completions", json={"prompt": "x", "max_tokens": 2}, headers={"Authorization": "Bearer no"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        ok = c.post("/completions", json={"prompt": "x", "max_tokens": 2}, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        rr = RemoteRunner(tok, engine=s.url, api_key=key, max_new_tokens=4)
        assert len(rr.generate(["Numbers: 1\n"])) == 1
    assert key not in caplog.text


# ---------------------------------------------------------------------- load


def _load(server, tok, model, clients: int, seed: int) -> None:
    """``clients`` concurrent requests (mixed lengths, a third streamed, some
    disconnecting): every finished one is its prompt's own greedy rollout."""
    rng = random.Random(seed)
    ps = prompts(clients, seed=seed)
    lens = [rng.randint(4, MAX) for _ in ps]
    kinds = [rng.choice(["plain", "plain", "stream", "drop"]) for _ in ps]
    out: dict = {}
    errors: list = []
    start = threading.Barrier(clients)

    def ask(i):
        try:
            with httpx.Client(base_url=server.url, timeout=120) as c:
                body = {
                    "prompt": ps[i],
                    "max_tokens": lens[i],
                    "temperature": 0,
                    "return_token_ids": True,
                    "stream": kinds[i] != "plain",
                }
                start.wait()
                if kinds[i] == "plain":
                    ch = c.post("/completions", json=body).json()["choices"][0]
                    out[i] = ch["token_ids"]
                    return
                with c.stream("POST", "/completions", json=body) as r:
                    for line in r.iter_lines():
                        if kinds[i] == "drop" and line.startswith("data:"):
                            return  # disconnect after the first chunk
                        if line.startswith("data: {"):
                            ch = json.loads(line[6:])["choices"][0]
                            if ch["finish_reason"]:
                                out[i] = ch["token_ids"]
        except Exception as e:  # noqa: BLE001
            errors.append((i, repr(e)))

    eng = server.engine
    steps0, rows0 = eng.steps, eng.row_steps
    ts = [threading.Thread(target=ask, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:3]
    # requests shared decode steps: many rows per step on average
    assert (eng.row_steps - rows0) / max(eng.steps - steps0, 1) > 4
    for i in range(clients):
        if kinds[i] == "drop":
            continue
        assert i in out, f"request {i} lost"
        ref = reference(model, tok, [ps[i]], lens[i], temperature=0)[0]
        assert out[i] == ref.completion_ids, i
    wait_idle(server.engine)


def test_load_64_concurrent(server, tok, model):
    _load(server, tok, model, 64, seed=7)


@pytest.mark.slow
def test_load_128_concurrent_three_rounds(server, tok, model):
    for seed in (8, 9, 10):
        _load(server, tok, model, 128, seed=seed)


# ---------------------------------------------------------------------- --engine URL


def test_benchmark_and_self_train_with_engine_url(tmp_path, capsys):
    """``eval.benchmark`` and ``data_gen.self_train`` with ``--engine URL`` (our server
    on a saved tiny model) write the same rollouts as with the in-process runner."""
    from data_gen import self_train as st
    from eval import benchmark as bm
    from parallel_reason.evaluate import load_model

    data, _ = saved_countdown_model(tmp_path, 4)
    tok, model = load_model(str(tmp_path / "model"), "auto", "cpu", "sdpa")
    app, _ = build_server(model, tok, ServeConfig(model_name="m"), max_new_tokens=64)
    # a remote server cannot mask tags per step: both sides decode unconstrained
    common = [
        "--model",
        str(tmp_path / "model"),
        "--max-new-tokens",
        "16",
        "--batch-size",
        "2",
        "--no-progress",
        "--no-constrained",
    ]
    with ServerThread(app) as s:
        bad = ["--model", str(tmp_path / "model"), "--task", "countdown", "--data", str(data), "--engine", s.url]
        # the default (constrained) and a tree join are refused before any work, in one line
        assert bm.main(bad + ["--out", str(tmp_path / "bad")]) == 2
        assert "--no-constrained" in capsys.readouterr().err
        assert bm.main(bad + ["--out", str(tmp_path / "bad"), "--no-constrained", "--join", "tree"]) == 2
        assert "linear prompt" in capsys.readouterr().err
        for engine in ([], ["--engine", s.url]):
            tag = "remote" if engine else "hf"
            assert (
                bm.main(common + ["--task", "countdown", "--data", str(data), "--out", str(tmp_path / tag), *engine])
                == 0
            )
            assert (
                st.main(
                    common
                    + [
                        "--input",
                        str(data),
                        "--out",
                        str(tmp_path / f"st-{tag}.jsonl"),
                        "--k",
                        "2",
                        "--temperature",
                        "0.8",
                        *engine,
                    ]
                )
                == 0
            )
    keys = ("id", "completion", "finish_reason", "total_tokens", "critical_path")
    rows = {
        t: [json.loads(x) for x in (tmp_path / t / "results.jsonl").read_text().splitlines()] for t in ("hf", "remote")
    }
    assert [{k: r[k] for k in keys} for r in rows["hf"]] == [{k: r[k] for k in keys} for r in rows["remote"]]
    summary = json.loads((tmp_path / "remote" / "summary.json").read_text())
    assert summary["engine"] == s.url
    # self-train samples on the server (its own sampler: not the HF runner's draws); every problem is done
    done = {
        t: [json.loads(x) for x in st.side_paths(tmp_path / f"st-{t}.jsonl")[0].read_text().splitlines()]
        for t in ("hf", "remote")
    }
    assert sorted(m.get("id", "") for m in done["hf"]) == sorted(m.get("id", "") for m in done["remote"])


def test_cli_bad_model_or_device_is_one_line(tmp_path, capsys):
    """``python -m parallel_reason.serve`` checks --model and --device before loading
    anything: one ``error:`` line, exit status 2, no traceback."""
    from parallel_reason.serve.cli import main

    assert main(["--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model") and "Traceback" not in err
    assert main(["--model", str(tmp_path), "--device", "cuda:7"]) == 2
    assert "--device" in capsys.readouterr().err


def test_streamed_logprobs_equal_the_completion(client):
    """Streamed chunks carry a log-prob entry for every token, including tokens whose
    text was held back (a partial character, EOS): the same entries as the completion."""
    body = {"prompt": prompts(3, seed=2), "max_tokens": MAX, "temperature": 1.0, "n": 2, "seed": 3, "logprobs": 1}
    full = client.post("/completions", json=body).json()
    got: dict[int, list] = {}
    with client.stream("POST", "/completions", json=body | {"stream": True}) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                ch = json.loads(line[6:])["choices"][0]
                if ch["logprobs"]:
                    got.setdefault(ch["index"], []).extend(ch["logprobs"]["token_logprobs"])
    for c in full["choices"]:
        assert got[c["index"]] == pytest.approx(c["logprobs"]["token_logprobs"], abs=1e-6)


def test_chat_without_max_tokens_fits_the_model(tok, model):
    """A chat request without max_tokens gets what the model's positions leave (not a 400)."""
    from fastapi.testclient import TestClient

    app, _ = build_server(model, tok, ServeConfig(model_name=NAME, max_tokens_limit=10**6), max_new_tokens=8)
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "temperature": 0})
    assert r.status_code == 200, r.text


def test_remote_backend_on_a_constrained_server_equals_hf_backend(tok, model):
    """Engine requests (stop token ids) are decoded unconstrained by a constrained server:
    the remote runner still gets the HF backend's greedy rollouts."""
    cfg = ServeConfig(model_name=NAME, max_tokens_limit=MAX)
    app, _ = build_server(model, tok, cfg, max_rows=8, max_new_tokens=MAX, constrained=True)
    ps = prompts(6, seed=4)
    ref = reference(model, tok, ps, 40, temperature=0)
    with ServerThread(app) as s:
        outs = RemoteRunner(tok, engine=s.url, max_new_tokens=40, batch_size=3).generate(ps, temperature=0)
    assert [o.completion_ids for o in outs] == [r.completion_ids for r in ref]
    assert sum(o.forks for o in outs) >= 1
