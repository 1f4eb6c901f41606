"""The HTTP layer: a FastAPI app with the OpenAI routes over an :class:`Engine`."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..runner.scheduler import RunLimits, prompt_ids
from .engine import Engine, Job, Sampling
from .output import ChoiceOutput, finish_reason_of, usage_of
from .schema import ApiError, ChatRequest, CompletionRequest, parse_body


@dataclass
class ServeConfig:
    """Limits and names of a server."""

    model_name: str = "model"
    max_tokens_limit: int = 4096  # the largest max_tokens a request may ask for
    default_max_tokens: int = 16  # completions without max_tokens (the OpenAI default)
    max_concurrent: int = 256  # requests in flight; more get 429
    max_body_bytes: int = 1 << 20
    max_n: int = 16
    max_prompts: int = 64  # prompts of one completions request
    api_key: str | None = None


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes (declared or streamed). The
    body is read here, before the app runs, and handed on in one message."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = dict(scope.get("headers") or []).get(b"content-length")
        too_big = ApiError(413, f"request body over {self.limit} bytes")
        if size is not None and (not size.isdigit() or int(size) > self.limit):
            return await _send_error(send, too_big)
        body, more = [], True
        seen = 0
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # the client left before sending its body
            body.append(msg.get("body", b""))
            seen += len(body[-1])
            more = msg.get("more_body", False)
            if seen > self.limit:
                return await _send_error(send, too_big)
        first: dict | None = {"type": "http.request", "body": b"".join(body), "more_body": False}

        async def replay():
            nonlocal first
            if first is not None:
                msg, first = first, None
                return msg
            return await receive()

        await self.app(scope, replay, send)


async def _send_error(send, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(engine: Engine, config: ServeConfig | None = None):
    """The app; the engine is started on startup and closed on shutdown."""
    cfg = config or ServeConfig()

    @asynccontextmanager
    async def lifespan(app):
        if not engine._thread.is_alive() and engine.error is None:
            engine.start()
        yield
        engine.close()

    app = FastAPI(title="parallel-reason", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    api = _Api(engine, cfg)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.get("/health")
    async def health():
        if not engine.alive:
            return JSONResponse({"status": "error", "error": str(engine.error or "engine not running")}, 503)
        return {
            "status": "ok",
            "requests_in_flight": engine.jobs,
            "decode_steps": engine.steps,
            "decode_row_steps": engine.row_steps,
            "decode_step_s": round(engine.step_s, 3),
            "decode_busy_s": round(engine.busy_s, 3),
        }

    @app.get("/v1/models")
    async def models(request: Request):
        api.auth(request)
        return {
            "object": "list",
            "data": [
                {
                    "id": cfg.model_name,
                    "object": "model",
                    "created": api.created,
                    "owned_by": "parallel-reason",
                    "max_model_len": api.max_len,
                }
            ],
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await api.handle(request, CompletionRequest)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await api.handle(request, ChatRequest)

    return BodyLimit(app, cfg.max_body_bytes)


class _Api:
    def __init__(self, engine: Engine, cfg: ServeConfig):
        self.engine = engine
        self.cfg = cfg
        self.runner = engine.runner
        self.tok = engine.tokenizer
        self.vocab = len(self.tok)
        self.created = int(time.time())
        text_cfg = getattr(self.runner.model, "config", None)
        self.max_len = getattr(text_cfg, "max_position_embeddings", None)

    def auth(self, request) -> None:
        if self.cfg.api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not secrets.compare_digest(got.encode(), f"Bearer {self.cfg.api_key}".encode()):
            raise ApiError(401, "missing or wrong API key", kind="authentication_error")

    # ------------------------------------------------------------------ requests
    async def handle(self, request, cls):
        self.auth(request)
        req: Any = parse_body(await request.body(), cls)
        chat = cls is ChatRequest
        if req.model is not None and req.model != self.cfg.model_name:
            raise ApiError(
                404,
                f"model {req.model!r} is not served here (serving {self.cfg.model_name!r})",
                "model",
                "not_found_error",
            )
        prompts = self._prompts(req, chat)
        job = self._job(req, prompts, chat)
        if self.engine.jobs >= self.cfg.max_concurrent:
            raise ApiError(
                429,
                f"server is full ({self.cfg.max_concurrent} requests in flight); retry later",
                kind="rate_limit_error",
            )
        try:
            self.engine.submit(job)
        except RuntimeError as e:
            raise ApiError(503, str(e), kind="server_error") from None
        meta = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
            "created": int(time.time()),
            "model": self.cfg.model_name,
        }
        out = ChoiceOutput(self.runner, job, req, chat)
        if req.stream:
            from .stream import sse_response

            return sse_response(self.engine, job, out, meta, req)
        await self._wait(job, request)
        return {
            **meta,
            "object": "chat.completion" if chat else "text_completion",
            "choices": [out.choice(ro) for ro in job.rollouts],
            "usage": usage_of(job, out),
        }

    async def _wait(self, job: Job, request) -> None:
        while True:
            try:
                events = await asyncio.wait_for(job.queue.get(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    self.engine.cancel(job)
                    raise ApiError(499, "client disconnected") from None
                continue
            for ev in events:
                if ev[0] == "error":
                    raise ApiError(500, ev[1], kind="server_error")
                if ev[0] == "done":
                    return

    def _prompts(self, req, chat: bool) -> list[list[int]]:
        if chat:
            if getattr(self.tok, "chat_template", None) is None:
                raise ApiError(400, "this model's tokenizer has no chat template; use /v1/completions", "messages")
            msgs = [{"role": m.role, "content": m.text()} for m in req.messages]
            try:
                text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # noqa: BLE001 - a template that rejects the conversation
                raise ApiError(400, f"the chat template rejected the messages: {e}", "messages") from None
            prompts = [text]
        else:
            if req.echo:
                raise ApiError(400, "echo is not supported", "echo")
            p = req.prompt
            prompts = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
        if not prompts or len(prompts) > self.cfg.max_prompts:
            raise ApiError(400, f"give 1 to {self.cfg.max_prompts} prompts", "messages" if chat else "prompt")
        out = []
        for p in prompts:
            ids = prompt_ids(self.runner.tokenizer, p) if isinstance(p, str) and p else list(p)
            if not ids:
                raise ApiError(400, "empty prompt", "messages" if chat else "prompt")
            if any(t < 0 or t >= self.vocab for t in ids):
                raise ApiError(400, f"prompt token ids must be in [0, {self.vocab})", "prompt")
            out.append(ids)
        return out

    def _job(self, req, prompts, chat: bool) -> Job:
        cfg = self.cfg
        mt = (req.max_completion_tokens or req.max_tokens) if chat else req.max_tokens
        param = "max_tokens" if not chat or req.max_completion_tokens is None else "max_completion_tokens"
        if mt is None:  # chat: as much as the model's positions leave (at most the limit)
            mt = cfg.max_tokens_limit if chat else min(cfg.default_max_tokens, cfg.max_tokens_limit)
            if chat and self.max_len is not None:
                mt = max(1, min(mt, self.max_len - max(len(p) for p in prompts)))
        if mt > cfg.max_tokens_limit:
            raise ApiError(400, f"{param} must be <= {cfg.max_tokens_limit}", param)
        if self.max_len is not None and max(len(p) for p in prompts) + mt > self.max_len:
            raise ApiError(400, f"prompt + {param} exceed the model's {self.max_len} positions", param)
        if req.n > cfg.max_n:
            raise ApiError(400, f"n must be <= {cfg.max_n}", "n")
        if req.n > 1 and req.temperature == 0:
            raise ApiError(400, "n > 1 needs temperature > 0 (greedy samples are identical)", "n")
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        if len(stop) > 16 or any(not s for s in stop):
            raise ApiError(400, "stop: up to 16 non-empty strings", "stop")
        k = (req.top_logprobs or 0) if chat else (req.logprobs or 0)
        sp = Sampling(
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=max(req.top_k, 0),
            top_logprobs=k,
            stop=stop,
            stop_token_ids=frozenset(req.stop_token_ids or ()),
        )
        base = self.runner.limits
        limits = RunLimits(
            max_new_tokens=mt,
            max_thread_tokens=base.max_thread_tokens,
            max_width=base.max_width,
            max_depth=base.max_depth,
        )
        seed = req.seed if req.seed is not None else secrets.randbits(31)
        rows = [self.runner.new_row(p, req.n, req.temperature, seed + i, i, limits) for i, p in enumerate(prompts)]
        return Job(rows, sp, req.stream, asyncio.get_running_loop())


__all__ = ["ServeConfig", "create_app", "finish_reason_of"]
