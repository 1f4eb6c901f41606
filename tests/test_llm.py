"""OpenAIClient over httpx2 against a local server: Retry-After, timeouts, connection
errors, credentials, concurrency. (The pipeline-level checks are in test_rewrite.py.)"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from parallel_reason.llm import LLM, LLMError, OpenAIClient, _retry_after

KEY = "sk-test-llm-0123456789abcdef"


class Server(ThreadingHTTPServer):
    """Answers each POST with the next scripted ``(status, headers, delay)`` (200 with
    an echo of the last user message once the script is used up)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: list[tuple[int, dict, float]] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args):
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append(
                {"t": time.monotonic(), "auth": self.headers.get("Authorization"), "body": body, "path": self.path}
            )
            status, headers, delay = srv.script.pop(0) if srv.script else (200, {}, 0.0)
        if delay:
            time.sleep(delay)
        if status == 200:
            text = body["messages"][-1]["content"]
            payload = {
                "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            }
        else:
            payload = {"error": {"message": f"status {status}, auth {self.headers.get('Authorization')}"}}
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def server():
    srv = Server()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_503_with_retry_after_is_retried_after_the_wait(server):
    server.script = [(503, {"Retry-After": "0.3"}, 0.0), (429, {"Retry-After": "0"}, 0.0)]
    with OpenAIClient(server.url, "m", backoff=0.01, backoff_max=5, seed=0) as client:
        c = client.complete("hello")
    assert c.text == "hello" and c.retries == 2 and client.retries == 2 and c.prompt_tokens == 3
    t = [r["t"] for r in server.requests]
    assert len(t) == 3 and t[1] - t[0] >= 0.29  # Retry-After honoured (real sleep)
    assert t[2] - t[1] < 0.25  # "0": only the (small) backoff
    # Retry-After is capped at backoff_max; an HTTP date is read too
    sleeps = []
    server.script = [
        (503, {"Retry-After": "120"}, 0.0),
        (503, {"Retry-After": formatdate(time.time() + 30, usegmt=True)}, 0.0),
    ]
    client = OpenAIClient(server.url, "m", backoff=0.01, backoff_max=0.5, seed=0, sleep=sleeps.append)
    assert client.complete("again").text == "again" and sleeps == [0.5, 0.5]
    assert 28 <= _retry_after(formatdate(time.time() + 30, usegmt=True)) <= 31
    assert _retry_after("soon") is None and _retry_after(None) is None and _retry_after("-3") == 0.0


def test_timeout_is_retried_then_reported(server):
    server.script = [(200, {}, 1.0), (200, {}, 1.0)]
    client = OpenAIClient(server.url, "m", timeout=0.2, max_retries=1, sleep=lambda s: None)
    t0 = time.monotonic()
    with pytest.raises(
        LLMError,
        match=r"request to http://127.0.0.1:\d+/v1/chat/completions failed: "
        r"ReadTimeout.*gave up after 2 attempts",
    ) as ei:
        client.complete("slow")
    assert time.monotonic() - t0 < 0.9 and ei.value.retryable and ei.value.retries == 1
    assert len(server.requests) == 2
    # the next call (slow server gone) succeeds on the same client
    assert client.complete("fast").text == "fast"


def test_connection_refused_is_retryable():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = OpenAIClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, sleep=lambda s: None)
    with pytest.raises(LLMError, match="ConnectError.*gave up after 3 attempts") as ei:
        client.complete("x")
    assert ei.value.retryable and client.retries == 2


def test_credentials_key_as_bearer_url_user_info_as_basic(server, monkeypatch):
    monkeypatch.setenv("PR_LLM_KEY", KEY)
    server.script = [(401, {}, 0.0)]
    client = OpenAIClient(server.url.replace("127.0.0.1", "u:urlpass@127.0.0.1"), "m", api_key_env="PR_LLM_KEY")
    with pytest.raises(LLMError, match="HTTP 401") as ei:
        client.complete("x")
    assert server.requests[-1]["auth"] == f"Bearer {KEY}"  # the key only, not the URL's user info on top
    assert KEY not in str(ei.value) and "[REDACTED]" in str(ei.value) and not ei.value.retryable
    monkeypatch.delenv("PR_LLM_KEY")
    server.script = [(401, {}, 0.0)]
    client = OpenAIClient(server.url.replace("127.0.0.1", "u:urlpass@127.0.0.1"), "m", api_key_env="PR_LLM_KEY")
    with pytest.raises(LLMError) as ei:
        client.complete("x")
    assert server.requests[-1]["auth"] == "Basic " + base64.b64encode(b"u:urlpass").decode()
    basic = base64.b64encode(b"u:urlpass").decode()
    assert "urlpass" not in str(ei.value) and basic not in str(ei.value) and "urlpass" not in repr(client)


def test_threads_share_one_client_and_usage_adds_up(server, tmp_path):
    client = OpenAIClient(server.url, "m")
    llm = LLM(client, tmp_path / "cache")
    with ThreadPoolExecutor(8) as ex:
        out = list(ex.map(lambda k: llm(f"q{k}", record_id=f"r{k}", step="s").text, range(32)))
    assert out == [f"q{k}" for k in range(32)]
    u = llm.usage.as_dict()
    assert u["calls"] == 32 and u["prompt_tokens"] == 96 and u["completion_tokens"] == 64 and u["failed_calls"] == 0
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    client.close()
