"""LLM clients for the data generators: :class:`OpenAIClient` (any OpenAI-compatible
server, over ``httpx2``), :class:`HFClient` (a local transformers model) and
:class:`LLM`, the wrapper the pipelines call, which adds a per-record disk cache
(:class:`DiskCache`) and token/cost accounting (:class:`Usage`). Transient failures
are retried with backoff; the API key goes only into the ``Authorization`` header and
is redacted from every message. :func:`make_client` picks a client from a URL or a
model name. See docs/design.md#data and README "Data: rewriting sequential CoT".
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx2

from .files import atomic_write

log = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
_REDACTED = "[REDACTED]"


class LLMError(RuntimeError):
    """A call failed (after its retries, when retryable). Messages are redacted."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retries = 0  # retries made before giving up


def redact(text: str, secrets: Sequence[str | None]) -> str:
    """``text`` with every occurrence of each (non-trivial) secret replaced."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, _REDACTED)
    # a bearer (or basic) credential echoed back by a server, whatever it is
    return re.sub(r"(?i)((?:bearer|basic)\s+)[^\s\"',}]+", r"\1" + _REDACTED, text)


_SECRET_PARAM_RE = re.compile(r"(?i)^(api[-_]?key|key|token|access[-_]?token|auth|password|secret|sig|signature)$")


def url_secrets(url: str) -> list[str]:
    """Credentials written into a URL, as written and decoded: the password (or a lone
    user name, ``TOKEN@host``) of its user info and the values of key-like query
    parameters (``api-key``, ``token``, ...)."""
    parts = urllib.parse.urlsplit(url)
    found = []
    if parts.password:
        found.append(parts.password)
    elif parts.username:
        found.append(parts.username)
    found += [v for k, v in urllib.parse.parse_qsl(parts.query) if _SECRET_PARAM_RE.match(k)]
    return sorted(
        {f for s in found for f in (s, urllib.parse.unquote(s), urllib.parse.quote(s, safe=""))}, key=len, reverse=True
    )  # longest first: a form that contains another is replaced whole


@dataclass
class Completion:
    """One answer of a model."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    cached: bool = False
    retries: int = 0  # failed attempts before this answer (not cached)


def _messages(prompt: str | list, system: str | None) -> list[dict]:
    if isinstance(prompt, list):
        return list(prompt)
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": prompt}]


def _flat_prompt(prompt: str | list, system: str | None) -> str:
    if isinstance(prompt, list):
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    return f"{system}\n\n{prompt}" if system else prompt


# ---------------------------------------------------------------------------
# OpenAI-compatible HTTP

_NO_AUTH = httpx2.Auth()  # an auth flow that adds nothing


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIClient:
    """Client of an OpenAI-compatible endpoint (``endpoint`` = "chat" or "completions")."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        endpoint: str = "chat",
        api_key_env: str = DEFAULT_API_KEY_ENV,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        headers: dict | None = None,
        seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if endpoint not in ("chat", "completions"):
            raise ValueError(f"endpoint must be 'chat' or 'completions', got {endpoint!r}")
        url = base_url.rstrip("/")
        for suffix in ("/chat/completions", "/completions"):
            if url.endswith(suffix):  # a full endpoint URL was given
                url = url[: -len(suffix)]
                endpoint = "chat" if suffix.startswith("/chat") else "completions"
        self.base_url = url
        self._url_secrets = url_secrets(url)
        self.endpoint = endpoint
        self.url = url + ("/chat/completions" if endpoint == "chat" else "/completions")
        self.model = model
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) or None
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._headers = dict(headers or {})
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._lock = threading.Lock()
        self.retries = 0
        # one pool for every thread; follow_redirects: httpx drops the Authorization
        # header when a redirect leaves the host
        self._http = httpx2.Client(follow_redirects=True)

    @property
    def model_name(self) -> str:
        return self.model

    def close(self) -> None:
        """Close the connection pool (the client cannot be used afterwards)."""
        self._http.close()

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:  # never the key
        return self._redact(
            f"OpenAIClient(url={self.url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, key_set={self._api_key is not None})"
        )

    def _redact(self, text: str) -> str:
        return redact(text, [self._api_key, *self._url_secrets])

    def body(
        self,
        prompt: str | list,
        *,
        system: str | None = None,
        max_tokens: int = 1024,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        **extra,
    ) -> dict:
        """The JSON body of a request (also what the cache key is computed from)."""
        b: dict = {"model": self.model, "max_tokens": int(max_tokens), "temperature": float(temperature)}
        if self.endpoint == "chat":
            b["messages"] = _messages(prompt, system)
        else:
            b["prompt"] = _flat_prompt(prompt, system)
        if stop:
            b["stop"] = list(stop)
        b.update(extra)
        return b

    def complete(self, prompt: str | list, **params) -> Completion:
        body = self.body(prompt, **params)
        attempt = 0
        while True:
            try:
                c = self._parse(self._post(body))
                c.retries = attempt
                return c
            except LLMError as e:
                if not e.retryable or attempt >= self.max_retries:
                    if e.retryable:
                        e = LLMError(f"{e} (gave up after {attempt + 1} attempts)", e.status, True)
                    e.retries = attempt
                    raise e from None
                delay = self._delay(attempt, getattr(e, "retry_after", None))
                with self._lock:
                    self.retries += 1
                log.warning("LLM call failed (%s); retry %d/%d in %.2fs", e, attempt + 1, self.max_retries, delay)
                self._sleep(delay)
                attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.backoff_max, self.backoff * (2**attempt))
        with self._lock:
            d = base / 2 + self._rng.uniform(0, base / 2)  # "equal jitter"
        if retry_after is not None:
            d = max(d, min(float(retry_after), self.backoff_max))
        return d

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json", **self._headers}
        kw: dict[str, Any] = {}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
            kw["auth"] = _NO_AUTH  # not the URL's user info as basic auth on top of the key
        try:
            resp = self._http.post(self.url, content=data, headers=headers, timeout=self.timeout, **kw)
        except (httpx2.InvalidURL, httpx2.UnsupportedProtocol, httpx2.TooManyRedirects) as e:
            raise LLMError(self._redact(f"request to {self.url} failed: {type(e).__name__}: {e}")) from None
        except (httpx2.HTTPError, OSError) as e:  # timeouts, connection and protocol errors
            raise LLMError(
                self._redact(f"request to {self.url} failed: {type(e).__name__}: {e}"), retryable=True
            ) from None
        status = resp.status_code
        if status >= 300:
            detail = resp.content[:2000].decode("utf-8", "replace")
            err = LLMError(
                self._redact(f"HTTP {status} from {self.url}: {detail.strip()[:500]}"),
                status,
                retryable=status in RETRYABLE_STATUS or status >= 500,
            )
            ra = _retry_after(resp.headers.get("Retry-After"))
            if ra is not None:
                err.retry_after = ra  # type: ignore[attr-defined]
            raise err from None
        try:
            return json.loads(resp.content.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LLMError(
                self._redact(f"invalid JSON from {self.url}: {resp.content[:200]!r}"), retryable=True
            ) from None

    def _parse(self, data: dict) -> Completion:
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.endpoint == "chat" else choice["text"]
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise TypeError(type(text).__name__)
        except (KeyError, IndexError, TypeError) as e:
            if isinstance(data, dict) and "error" in data:
                raise LLMError(
                    self._redact(f"error from {self.url}: {json.dumps(data['error'])[:500]}"), retryable=True
                ) from None
            raise LLMError(
                self._redact(
                    f"unexpected response from {self.url} ({type(e).__name__}: {e}): {json.dumps(data)[:300]}"
                ),
                retryable=True,
            ) from None
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
        )


# ---------------------------------------------------------------------------
# Local transformers model


class HFClient:
    """A local transformers causal LM. Calls are serialised (one generate at a time)."""

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        model=None,
        tokenizer=None,
    ):
        self.model = model_name_or_path
        self._lock = threading.Lock()
        self.retries = 0
        if model is None or tokenizer is None:
            import torch
            from transformers import AutoModelForCausalLM

            from .tokens import load_tokenizer

            tokenizer = tokenizer or load_tokenizer(model_name_or_path)
            kw = {}
            if dtype:
                kw["dtype"] = getattr(torch, dtype)
            model = model or AutoModelForCausalLM.from_pretrained(model_name_or_path, **kw)
            if device:
                model = model.to(device)
        self.tok = tokenizer
        self.lm = model.eval()

    @property
    def model_name(self) -> str:
        return self.model

    def __repr__(self) -> str:
        return f"HFClient(model={self.model!r})"

    def body(
        self,
        prompt: str | list,
        *,
        system: str | None = None,
        max_tokens: int = 1024,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        **extra,
    ) -> dict:
        return {
            "model": self.model,
            "messages": _messages(prompt, system),
            "max_tokens": int(max_tokens),
            "temperature": float(temperature),
            "stop": list(stop or []),
            **extra,
        }

    def render_prompt(self, prompt: str | list, system: str | None = None) -> str:
        """The text the model is given: the chat template when there is one."""
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(_messages(prompt, system), tokenize=False, add_generation_prompt=True)
        return _flat_prompt(prompt, system)

    def complete(
        self,
        prompt: str | list,
        *,
        system: str | None = None,
        max_tokens: int = 1024,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        **_ignored,
    ) -> Completion:
        import torch

        text = self.render_prompt(prompt, system)
        enc = self.tok(text, return_tensors="pt", add_special_tokens=not getattr(self.tok, "chat_template", None))
        enc = {k: v.to(self.lm.device) for k, v in enc.items()}
        n = enc["input_ids"].shape[1]
        kw: dict[str, Any] = dict(max_new_tokens=int(max_tokens), do_sample=temperature > 0)
        if temperature > 0:
            kw["temperature"] = float(temperature)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        with self._lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.lm.generate(**enc, pad_token_id=pad, **kw)
        new = out[0, n:]
        answer = self.tok.decode(new, skip_special_tokens=True)
        finish = "length" if len(new) >= max_tokens else "stop"
        for s in stop or []:
            at = answer.find(s)
            if at >= 0:
                answer, finish = answer[:at], "stop"
        return Completion(text=answer, prompt_tokens=int(n), completion_tokens=int(len(new)), finish_reason=finish)


def make_client(llm: str, model: str | None = None, **kw):
    """An :class:`OpenAIClient` when ``llm`` is an http(s) URL (``model`` is the model
    name sent to it), else a local :class:`HFClient` loading ``llm`` (a path or hub name)."""
    if re.match(r"https?://", llm):
        http_kw = {
            k: v
            for k, v in kw.items()
            if k in ("endpoint", "api_key_env", "timeout", "max_retries", "backoff", "backoff_max", "headers", "seed")
        }
        return OpenAIClient(llm, model or "default", **http_kw)
    hf_kw = {k: v for k, v in kw.items() if k in ("device", "dtype")}
    return HFClient(llm, **hf_kw)


# ---------------------------------------------------------------------------
# Cache and accounting


def cache_key(model: str, prompt, params: dict) -> str:
    """sha256 of (model, prompt, params), canonical JSON."""
    blob = json.dumps({"model": model, "prompt": prompt, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


_SAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(name: str, limit: int = 80) -> str:
    s = _SAFE_RE.sub("_", str(name)).strip("._") or "_"
    if len(s) > limit or s != str(name):
        s = s[: limit - 17] + "-" + hashlib.sha1(str(name).encode()).hexdigest()[:16]
    return s


class DiskCache:
    """``root/<record>/<step>.<key>.json``, one file per call, written atomically."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, record_id: str, step: str, key: str) -> Path:
        return self.root / _safe(record_id) / f"{_safe(step, 40)}.{key[:32]}.json"

    def get(self, record_id: str, step: str, key: str) -> dict | None:
        p = self.path(record_id, step, key)
        try:
            with open(p, encoding="utf-8") as f:
                entry = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            log.warning("ignoring unreadable cache file %s", p)
            return None
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def put(self, record_id: str, step: str, key: str, entry: dict) -> None:
        atomic_write(self.path(record_id, step, key), json.dumps({**entry, "key": key}, ensure_ascii=False, indent=1))


@dataclass
class Usage:
    """Token and cost accounting over the calls of a run."""

    calls: int = 0
    cached_calls: int = 0
    failed_calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    price_prompt_per_1k: float | None = None
    price_completion_per_1k: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, c: Completion) -> None:
        with self._lock:
            if c.cached:
                self.cached_calls += 1
                self.cached_prompt_tokens += c.prompt_tokens
                self.cached_completion_tokens += c.completion_tokens
            else:
                self.calls += 1
                self.retries += c.retries
                self.prompt_tokens += c.prompt_tokens
                self.completion_tokens += c.completion_tokens

    def fail(self, retries: int = 0) -> None:
        with self._lock:
            self.failed_calls += 1
            self.retries += retries

    def _cost(self, p: int, c: int) -> float | None:
        if self.price_prompt_per_1k is None and self.price_completion_per_1k is None:
            return None
        return p / 1000 * (self.price_prompt_per_1k or 0.0) + c / 1000 * (self.price_completion_per_1k or 0.0)

    @property
    def cost(self) -> float | None:
        """Cost of the calls made by this run (cache hits cost nothing now)."""
        return self._cost(self.prompt_tokens, self.completion_tokens)

    @property
    def cached_cost(self) -> float | None:
        """What the cache hits cost when they were made."""
        return self._cost(self.cached_prompt_tokens, self.cached_completion_tokens)

    def as_dict(self) -> dict:
        with self._lock:
            d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        d["total_tokens"] = self.prompt_tokens + self.completion_tokens
        d["cost"] = self.cost
        d["cached_cost"] = self.cached_cost
        return d


class LLM:
    """What a pipeline calls: ``llm(prompt, record_id=..., step=..., **params)``.
    Looks the call up in the cache first, calls the client otherwise, stores the
    answer atomically and counts tokens. Thread-safe."""

    def __init__(
        self,
        client,
        cache: DiskCache | str | None = None,
        *,
        price_prompt_per_1k: float | None = None,
        price_completion_per_1k: float | None = None,
        defaults: dict | None = None,
    ):
        self.client = client
        self.cache = DiskCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
        self.usage = Usage(price_prompt_per_1k=price_prompt_per_1k, price_completion_per_1k=price_completion_per_1k)
        self.defaults = dict(defaults or {})

    def __call__(
        self, prompt: str | list, *, record_id: str, step: str, system: str | None = None, **params
    ) -> Completion:
        params = {**self.defaults, **params}
        key = cache_key(
            self.client.model_name,
            {"system": system, "prompt": prompt},
            {**params, "endpoint": getattr(self.client, "endpoint", "local")},
        )
        if self.cache is not None:
            hit = self.cache.get(record_id, step, key)
            if hit is not None:
                c = Completion(
                    text=hit["text"],
                    prompt_tokens=int(hit.get("prompt_tokens", 0)),
                    completion_tokens=int(hit.get("completion_tokens", 0)),
                    finish_reason=hit.get("finish_reason"),
                    cached=True,
                )
                self.usage.add(c)
                return c
        try:
            c = self.client.complete(prompt, system=system, **params)
        except Exception as e:
            self.usage.fail(getattr(e, "retries", 0))
            raise
        self.usage.add(c)
        if self.cache is not None:
            self.cache.put(
                record_id,
                step,
                key,
                {
                    "model": self.client.model_name,
                    "record": record_id,
                    "step": step,
                    "system": system,
                    "prompt": prompt,
                    "params": params,
                    "text": c.text,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                    "finish_reason": c.finish_reason,
                    "created": time.time(),
                },
            )
        return c


# ---------------------------------------------------------------------------
# JSON answers


class JSONAnswerError(ValueError):
    """The model's answer holds no usable JSON value."""


_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


def parse_json_answer(text: str, expect: type = dict):
    """The first JSON value of type ``expect`` in a model's answer: the whole answer,
    else the contents of a ```json fence, else the first decodable ``{...}`` (or
    ``[...]``) in the text. Parsed with ``json`` only (never ``eval``). Raises
    :class:`JSONAnswerError` with a short excerpt when there is none."""
    if not isinstance(text, str):
        raise JSONAnswerError(f"answer is a {type(text).__name__}, not text")
    s = text.strip()
    candidates = [s] + [m.group(1).strip() for m in _FENCE_RE.finditer(s)]
    for c in candidates:
        try:
            v = json.loads(c)
        except json.JSONDecodeError:
            continue
        if isinstance(v, expect):
            return v
    dec = json.JSONDecoder()
    opener = "{" if expect is dict else "["
    i = s.find(opener)
    tries = 0
    while i >= 0 and tries < 200:
        try:
            v, _ = dec.raw_decode(s, i)
            if isinstance(v, expect):
                return v
        except json.JSONDecodeError:
            pass
        i = s.find(opener, i + 1)
        tries += 1
    excerpt = s[:120].replace("\n", " ")
    raise JSONAnswerError(
        f"no JSON {'object' if expect is dict else 'array'} in the answer "
        f"({len(s)} chars): {excerpt!r}{'...' if len(s) > 120 else ''}"
    )


__all__ = [
    "Completion",
    "DEFAULT_API_KEY_ENV",
    "DiskCache",
    "HFClient",
    "JSONAnswerError",
    "LLM",
    "LLMError",
    "OpenAIClient",
    "Usage",
    "cache_key",
    "make_client",
    "parse_json_answer",
    "redact",
    "url_secrets",
]
