"""Benchmark of the OpenAI-compatible server against the in-process runner (CPU, tiny model).

The same prompts (``--per-client`` per client, at least ``--min-requests``) are
decoded greedily (so both sides decode exactly the same tokens) by

- the in-process runner: ``Runner.generate(prompts, batch_size=C)`` (continuous
  batching of C prompts, every prompt queued up front), and
- the server (``python -m parallel_reason.serve`` in a subprocess, loopback HTTP):
  C client threads, each sending one request at a time until the prompts run out,

for C in ``--clients`` (default 1, 4, 16). Reported: requests/s and sampled tokens/s
of both, and server / in-process as ratios. Timings are medians of ``--repeats``
interleaved runs. Both sides use ``--threads`` torch threads.

    python benchmarks/bench_serve.py [--clients 1 4 16] [--per-client 16] [--max-tokens 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from parallel_reason.runner import Runner  # noqa: E402
from parallel_reason.tiny import build_tiny  # noqa: E402

WORDS = ("alpha beta gamma delta check try plan found none left right sum take Numbers Target Answer Search").split()


def text(rng: random.Random, n: int) -> str:
    return " " + " ".join(rng.choice(WORDS + [str(rng.randint(0, 99))]) for _ in range(n))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, port: int, threads: int, max_tokens: int, extra: tuple = ()):
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    cmd = [
        sys.executable,
        "-m",
        "parallel_reason.serve",
        "--model",
        model_dir,
        "--port",
        str(port),
        "--served-model-name",
        "bench",
        "--batch-size",
        "32",
        "--max-tokens-limit",
        str(max_tokens),
        "--device",
        "cpu",
        *extra,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx2 as httpx

    t0 = time.time()
    while time.time() - t0 < 120:
        if proc.poll() is not None:
            raise RuntimeError("server exited: " + (proc.stderr.read() if proc.stderr else "")[-2000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def run_server(url: str, prompts: list[str], clients: int, max_tokens: int) -> tuple[float, int, list, float]:
    """C concurrent clients (asyncio tasks in one thread, one request at a time each);
    (wall-clock, sampled tokens, completion ids per prompt, server seconds in decode steps)."""
    import asyncio

    import httpx2 as httpx

    out: list = [None] * len(prompts)
    health = url.rsplit("/v1", 1)[0] + "/health"

    async def client(c, todo: list, tokens: list) -> None:
        while todo:
            i = todo.pop()
            r = await c.post(
                "/completions",
                json={"prompt": prompts[i], "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True},
            )
            if r.status_code != 200:
                raise RuntimeError(f"request failed: {r.text[:300]}")
            body = r.json()
            out[i] = body["choices"][0]["token_ids"]
            tokens.append(body["usage"]["sampled_tokens"])

    async def go() -> tuple[float, int, float]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:
            s0 = (await c.get(health)).json()["decode_step_s"]
            todo = list(reversed(range(len(prompts))))
            tokens: list[int] = []
            t0 = time.perf_counter()
            await asyncio.gather(*(client(c, todo, tokens) for _ in range(clients)))
            wall = time.perf_counter() - t0
            s1 = (await c.get(health)).json()["decode_step_s"]
        return wall, sum(tokens), s1 - s0

    wall, toks, step_s = asyncio.run(go())
    return wall, toks, out, step_s


def run_local(runner: Runner, prompts: list[str]) -> tuple[float, int, list]:
    t0 = time.perf_counter()
    ros = runner.generate(prompts, temperature=0)
    wall = time.perf_counter() - t0
    return wall, sum(r.total_tokens for r in ros), [r.completion_ids for r in ros]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--per-client", type=int, default=16, help="requests per client (at least --min-requests)")
    ap.add_argument("--min-requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    corpus = [text(rng, 12) for _ in range(300)]
    n_max = max(args.min_requests, args.per_client * max(args.clients))
    all_prompts = [f"Numbers:{text(rng, rng.randint(2, 12))}\n" for _ in range(n_max)]
    with tempfile.TemporaryDirectory() as d:
        tok, model = build_tiny(
            corpus,
            d,
            vocab_size=512,
            hidden_size=args.hidden,
            layers=args.layers,
            heads=4,
            kv_heads=2,
            intermediate_size=4 * args.hidden,
        )
        model.eval()
        port = free_port()
        proc = start_server(d, port, args.threads, args.max_tokens)
        url = f"http://127.0.0.1:{port}/v1"
        rows = []
        try:
            run_server(url, all_prompts[:4], 4, 4)  # warm-up
            for c in args.clients:
                prompts = all_prompts[: max(args.min_requests, args.per_client * c)]
                runner = Runner(model, tok, max_new_tokens=args.max_tokens, batch_size=c)
                loc, srv = [], []
                for _ in range(args.repeats):
                    loc.append(run_local(runner, prompts))
                    srv.append(run_server(url, prompts, c, args.max_tokens))
                same = all(a == b for a, b in zip(loc[0][2], srv[0][2]))
                tl, ts = statistics.median(x[0] for x in loc), statistics.median(x[0] for x in srv)
                toks = loc[0][1]
                step_share = statistics.median(x[3] / x[0] for x in srv)
                rows.append(
                    {
                        "clients": c,
                        "requests": len(prompts),
                        "tokens": toks,
                        "same_tokens": same,
                        "server_step_share": step_share,
                        "local_req_s": len(prompts) / tl,
                        "server_req_s": len(prompts) / ts,
                        "local_tok_s": toks / tl,
                        "server_tok_s": srv[0][1] / ts,
                        "ratio_req_s": tl / ts,
                        "ratio_tok_s": (srv[0][1] / ts) / (toks / tl),
                    }
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"model: hidden {args.hidden}, {args.layers} layers; {args.per_client} greedy requests per client "
        f"(at least {args.min_requests}), "
        f"max_tokens {args.max_tokens}; torch threads {args.threads}; medians of {args.repeats}\n"
    )
    print(
        "| clients | requests | in-process req/s | server req/s | in-process tok/s | server tok/s | ratio req/s "
        "| ratio tok/s | same tokens | server time in decode steps |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['requests']} | {r['local_req_s']:.1f} | {r['server_req_s']:.1f} "
            f"| {r['local_tok_s']:.0f} "
            f"| {r['server_tok_s']:.0f} | {r['ratio_req_s']:.2f} | {r['ratio_tok_s']:.2f} | {r['same_tokens']} "
            f"| {r['server_step_share']:.0%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
