"""``python -m parallel_reason.serve``: load a model and serve it."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from ..evaluate import load_model, opt_int
from ..inputs import check_device, check_model_path, reports_input_errors
from ..layout import JOIN_MODES

log = logging.getLogger("parallel_reason.serve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m parallel_reason.serve", description="OpenAI-compatible server with fork/join decoding."
    )
    p.add_argument("--model", required=True, help="model directory (or hub id already in the local cache)")
    p.add_argument("--served-model-name", default=None, help="model id clients use (default: --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=32, help="prompts decoded at once (running batch)")
    p.add_argument(
        "--admit-wait",
        type=int,
        default=8,
        help="steps a request may wait so that queued prompts are prefilled together (0 = join at once)",
    )
    p.add_argument("--max-concurrent", type=int, default=256, help="requests in flight; more get 429")
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens a request may ask")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--max-thread-tokens", type=opt_int, default=None)
    p.add_argument("--max-width", type=opt_int, default=8)
    p.add_argument("--max-depth", type=opt_int, default=2)
    p.add_argument(
        "--join",
        default=None,
        choices=JOIN_MODES,
        help="join mode (default: the one the model was trained with, from its config)",
    )
    p.add_argument("--sequential", action="store_true", help="control tags are ordinary tokens (no forks)")
    p.add_argument(
        "--constrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="grammar-constrained decoding: never sample a tag that makes the text malformed (default on)",
    )
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code (off)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or env PR_SERVE_API_KEY)")
    return p


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from . import ServeConfig, build_server

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    check_model_path(args.model)  # before anything is loaded: one error line, exit status 2
    check_device(args.device)
    tok, model = load_model(args.model, args.dtype, args.device, args.attn, args.trust_remote_code)
    cfg = ServeConfig(
        model_name=args.served_model_name or args.model,
        max_tokens_limit=args.max_tokens_limit,
        max_concurrent=args.max_concurrent,
        max_body_bytes=args.max_body_bytes,
        api_key=args.api_key or os.environ.get("PR_SERVE_API_KEY") or None,
    )
    app, _ = build_server(
        model,
        tok,
        cfg,
        max_rows=args.batch_size,
        admit_wait=args.admit_wait,
        max_new_tokens=args.max_tokens_limit,
        max_thread_tokens=args.max_thread_tokens,
        max_width=args.max_width,
        max_depth=args.max_depth,
        join=args.join,
        batch_size=args.batch_size,
        parallel=not args.sequential,
        constrained=args.constrained,
    )
    log.info(
        "serving %s on http://%s:%d/v1 (api key %s)",
        cfg.model_name,
        args.host,
        args.port,
        "required" if cfg.api_key else "off",
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
