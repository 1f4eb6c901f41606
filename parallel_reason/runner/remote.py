"""Remote backend of the fork/join runner: the scheduler drives an OpenAI-compatible
completions server (vLLM, SGLang, ``parallel_reason.serve``) over HTTP.

Every active lane (the main sequence or one thread) is one request in flight whose
prompt is the token ids of its whole visible context (``lane.ctx.path()``: the
prompt, the text before a fork, the thread's opener; after a concat join, thread 1
and the re-read of threads 2..n plus the closer). The server decodes up to
``chunk`` tokens and stops at any control tag or EOS (``stop_token_ids``); the
tokens come back with their log-probs and are fed to :meth:`RolloutState.advance`
until the lane stops being active. A fork therefore becomes ``k`` new requests
sharing the parent's prefix (the server's prefix cache reuses it); a join one
request whose prompt ends with the re-read.

Server features needed: token-id prompts, per-token log-probs, token ids in the
answer (``choice.token_ids`` or vLLM's ``return_tokens_as_token_ids``) and
``stop_token_ids``; :meth:`RemoteEngine.check` says which one is missing.
Log-probs are the server's (vLLM: the raw model's by default), so ``logprobs`` and
``sampler_logprobs`` of a rollout are both the server's value; greedy rollouts are
the HF backend's up to ties (numerics differ between engines).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from ..layout import check_join, check_thread_header, encode
from .hf import rollout_seed
from .scheduler import ACTIVE, Context, RolloutState, Row, RunLimits, TagSet, prompt_ids, sample_seeds, to_rollout


class RemoteError(RuntimeError):
    """The server answered with an error, or could not be reached after the retries."""


class RemoteFeatureError(RemoteError):
    """The server lacks a feature the remote backend needs."""


@dataclass
class RemoteStats:
    """Counters of the last ``generate`` call."""

    requests: int = 0
    retries: int = 0
    tokens: int = 0  # tokens received
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class RemoteEngine:
    """HTTP client of one completions server: timeouts, retries with exponential
    backoff (429, 5xx, connection errors, timeouts), errors that name the server's
    message. ``url`` is the API base (``http://host:port/v1``)."""

    RETRY_STATUS = (408, 429, 500, 502, 503, 504)

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_connections: int = 64,
        transport=None,
    ):
        import httpx2 as httpx

        self._httpx = httpx
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )
        self.retries = retries
        self.backoff = backoff
        self.stats = RemoteStats()
        self.model = model or self._model_id()

    def close(self) -> None:
        self.client.close()

    def _model_id(self) -> str:
        data = self.request("GET", "/models").get("data") or []
        if not data or "id" not in data[0]:
            raise RemoteFeatureError(f"{self.url}/models lists no model; pass the model name explicitly")
        return data[0]["id"]

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One call with retries; the decoded JSON answer."""
        httpx = self._httpx
        for attempt in range(self.retries + 1):
            wait_s = self.backoff * 2**attempt * (0.5 + random.random())
            try:
                r = self.client.request(method, path, json=body)
            except (httpx.TransportError, httpx.TimeoutException) as e:
                if attempt == self.retries:
                    raise RemoteError(
                        f"{self.url}{path}: {type(e).__name__}: {e} (after {self.retries} retries)"
                    ) from None
            else:
                if r.status_code < 400:
                    return r.json()
                if r.status_code not in self.RETRY_STATUS or attempt == self.retries:
                    raise RemoteError(f"{self.url}{path}: HTTP {r.status_code}: {_message(r)}")
                after = r.headers.get("retry-after", "")
                if after.replace(".", "", 1).isdigit():
                    wait_s = max(wait_s, min(float(after), 30.0))
            self.stats.retries += 1
            time.sleep(wait_s)
        raise AssertionError("unreachable")  # pragma: no cover

    def complete(
        self,
        prompt: list[int],
        max_tokens: int,
        stop_ids: Sequence[int],
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int | None,
    ) -> tuple[list[int], list[float], str | None]:
        """Decode up to ``max_tokens`` tokens after ``prompt``; (ids, log-probs, finish reason)."""
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "logprobs": 1,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }
        if stop_ids:
            body["stop_token_ids"] = list(stop_ids)
        if top_k > 0:
            body["top_k"] = top_k
        if seed is not None:
            body["seed"] = seed
        self.stats.requests += 1
        ans = self.request("POST", "/completions", body)
        ids, lps, finish = parse_choice(ans)
        self.stats.tokens += len(ids)
        return ids, lps, finish

    def check(self, stop_ids: Sequence[int], prompt: Sequence[int]) -> None:
        """Probe once: :class:`RemoteFeatureError` names what the server lacks."""
        try:
            ids, _, _ = self.complete(list(prompt), 2, stop_ids, 0.0, 1.0, 0, None)
        except RemoteFeatureError:
            raise
        except RemoteError as e:
            raise RemoteFeatureError(
                f"the server rejected a token-id prompt with stop_token_ids and logprobs "
                f"(needed by the remote backend): {e}"
            ) from None
        if not ids:
            raise RemoteFeatureError("the server returned no tokens for a 2-token probe")


def _message(r) -> str:
    try:
        err = r.json()
        err = err.get("error", err) if isinstance(err, dict) else err
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:500]
    except ValueError:
        return r.text[:500]


def parse_choice(ans: dict) -> tuple[list[int], list[float], str | None]:
    """Token ids, log-probs and finish reason of the first choice of a completions answer."""
    try:
        ch = ans["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise RemoteError(f"not a completions answer: {str(ans)[:300]}") from None
    lp = ch.get("logprobs") or {}
    lps = lp.get("token_logprobs")
    ids = ch.get("token_ids")
    if ids is None and lp.get("tokens") is not None:
        toks = lp["tokens"]
        if not all(isinstance(t, str) and t.startswith("token_id:") for t in toks):
            raise RemoteFeatureError(
                "the server returned token strings, not ids: it needs vLLM's "
                "return_tokens_as_token_ids (or choice.token_ids)"
            )
        ids = [int(t.split(":", 1)[1]) for t in toks]
    if ids is None:
        raise RemoteFeatureError(
            "the server returned no token ids (needs choice.token_ids or return_tokens_as_token_ids with logprobs)"
        )
    if lps is None or len(lps) != len(ids):
        raise RemoteFeatureError("the server returned no per-token log-probs (needs logprobs on completions)")
    return [int(t) for t in ids], [float(x) if x is not None else 0.0 for x in lps], ch.get("finish_reason")


def request_seed(seed: int, lane, prompt_len: int) -> int:
    """Seed of one request: fixed by the rollout's seed and where the lane stands (not by timing)."""
    key = f"{seed}:{lane.depth}:{lane.number}:{lane.count}:{prompt_len}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little") & 0x7FFFFFFF


class RemoteRunner:
    """The fork/join runner over a remote engine; same ``generate`` and :class:`Rollout`
    as :class:`~.hf.Runner` (no ``replay``: that needs the model's log-probs of forced
    tokens). ``batch_size`` prompts are decoded at once, every live lane of each one a
    request in flight; ``chunk`` is the ``max_tokens`` of one request."""

    def __init__(
        self,
        tokenizer,
        engine: str,
        model: str | None = None,
        max_new_tokens: int = 512,
        max_thread_tokens: int | None = None,
        max_width: int | None = 8,
        max_depth: int | None = 2,
        join: str | None = None,
        batch_size: int = 8,
        parallel: bool = True,
        thread_header: str = "index",
        chunk: int = 16,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 5,
        max_inflight: int = 64,
        check: bool = True,
    ):
        join = check_join(join or "concat")
        if join != "concat":  # a completions server reads one linear prompt per request
            raise ValueError(
                f"join mode {join!r} needs an engine that attends to several threads at once; a remote "
                "completions server reads one linear prompt per request: use join concat there, or "
                "the HF runner"
            )
        if batch_size < 1 or max_new_tokens < 1 or chunk < 1:
            raise ValueError("batch_size, max_new_tokens and chunk must be >= 1")
        self.tokenizer = tokenizer
        self.join = join
        self.batch_size = batch_size
        self.parallel = parallel
        self.chunk = chunk
        self.limits = RunLimits(
            max_new_tokens=max_new_tokens, max_thread_tokens=max_thread_tokens, max_width=max_width, max_depth=max_depth
        )
        self.thread_header = thread_header
        self.tags = TagSet(tokenizer, thread_header)
        self.max_inflight = max_inflight
        self.engine = RemoteEngine(engine, model, api_key, timeout, retries, max_connections=max_inflight)
        self.stop_ids = (
            self.tags.stop_ids
            if parallel
            else ((tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ())
        )
        if check:
            self.engine.check(self.stop_ids, encode(tokenizer, "Hello") or [0])
        self.stats = RemoteStats()

    def generate(
        self,
        prompts,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | Sequence[int] = 0,
    ) -> list:
        """Like :meth:`Runner.generate`."""
        seeds = sample_seeds(prompts, n, temperature, top_p, top_k, seed)
        rows = []
        for i, p in enumerate(prompts):
            ctx = Context(None, prompt_ids(self.tokenizer, p))
            rs = [RolloutState(ctx, self.tags, self.limits, self.parallel, None, i, j) for j in range(n)]
            for j, ro in enumerate(rs):
                ro.seed = rollout_seed(seeds[i], j)
            rows.append(Row(ctx, rs))
        self.engine.stats = RemoteStats()
        t0 = time.perf_counter()
        try:
            self._loop(rows, (temperature, top_p, top_k))
        finally:
            self.stats = self.engine.stats
            self.stats.wall_s = time.perf_counter() - t0
        return [to_rollout(ro, self.tokenizer, self.join) for row in rows for ro in row.rollouts]

    def _loop(self, rows: list[Row], sampling) -> None:
        queue = list(reversed(rows))
        live: list[Row] = []
        inflight: dict = {}  # future -> lane
        busy: set = set()
        single: set = set()  # lanes whose next request asks one token without stop ids
        with ThreadPoolExecutor(self.max_inflight, thread_name_prefix="remote-runner") as pool:
            try:
                while queue or live:
                    while queue and len(live) < self.batch_size:
                        row = queue.pop()
                        for ro in row.rollouts:
                            ro.start()
                        live.append(row)
                    for row in live:
                        for ro in row.rollouts:
                            for lane in [] if ro.finished else ro.active_lanes():
                                if lane not in busy and len(inflight) < self.max_inflight:
                                    busy.add(lane)
                                    inflight[self._submit(pool, lane, sampling, lane in single)] = lane
                    if not inflight:
                        raise RuntimeError("remote runner: live rollouts but no request in flight")
                    done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                    for f in done:
                        lane = inflight.pop(f)
                        busy.discard(lane)
                        ids, lps, finish = f.result()
                        self._feed(lane, ids, lps, finish, sampling[0], single)
                    live = [r for r in live if not r.finished]
            finally:
                for f in inflight:
                    f.cancel()

    def _submit(self, pool, lane, sampling, one: bool):
        ro = lane.rollout
        prompt = lane.ctx.path()
        temperature, top_p, top_k = sampling
        budget = ro.lane_budget(lane)
        seed = request_seed(ro.seed, lane, len(prompt)) if temperature > 0 else None
        n = 1 if one else max(1, min(self.chunk, budget))
        return pool.submit(
            self.engine.complete, prompt, n, () if one else self.stop_ids, temperature, top_p, top_k, seed
        )

    @staticmethod
    def _feed(lane, ids, lps, finish, temperature: float, single: set) -> None:
        ro = lane.rollout
        if not ids:
            if lane in single:
                raise RemoteError("the server returned no token for a one-token request")
            single.add(lane)  # a server that drops stop tokens: ask the next token alone
            return
        single.discard(lane)
        for t, lp in zip(ids, lps):
            if ro.finished or lane.state != ACTIVE:
                break
            ro.advance(lane, t, lp, lp if temperature > 0 else 0.0)


def _config_value(path: str, key: str):
    """``key`` of a model's ``config.json``: a local folder, or a hub id's cached copy
    (None when absent or unreadable)."""
    local = Path(str(path)) / "config.json"
    try:
        if local.is_file():
            return json.loads(local.read_text(encoding="utf-8")).get(key)
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(path), "config.json")
        return json.loads(Path(cached).read_text(encoding="utf-8")).get(key) if isinstance(cached, str) else None
    except (OSError, ValueError, AttributeError):
        return None


def thread_header_of(path: str) -> str:
    """The thread header mode in a model's ``config.json`` (``index`` when absent or unreadable)."""
    mode = _config_value(path, "thread_header")
    return check_thread_header(mode) if mode is not None else "index"


def join_of(path: str) -> str:
    """The join mode in a model's ``config.json`` (``concat`` when absent or unreadable)."""
    mode = _config_value(path, "parallel_join")
    return check_join(mode) if mode is not None else "concat"


__all__ = [
    "RemoteEngine",
    "RemoteError",
    "RemoteFeatureError",
    "RemoteRunner",
    "RemoteStats",
    "parse_choice",
    "join_of",
    "thread_header_of",
]
