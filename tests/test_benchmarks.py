"""The runner benchmarks run end to end on tiny models, and the invariants they report
hold: no prefix token recomputed at forks, nothing re-read by the tree and summary
joins, the runner's greedy tokens equal ``model.generate``'s, and one forward per
critical-path token (so a batch-1 wall-clock gain is the forward gain over the
step-cost ratio)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest
import torch
from conftest import saved_countdown_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_bench_runner_invariants(one_thread, capsys):
    bench = load_bench("bench_runner")
    argv = "--hidden 32 --layers 1 --repeats 1 --blocks 1 --thread-words 6 --seq-words 3 --batches 1,2"
    argv += " --gen-batches 1,2 --gen-tokens 4 --step-tokens 1,2 --json"
    res = bench.main(argv.split())
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(res))
    joins = {r["join"] for r in res["replay"]}
    assert joins == {"concat", "tree", "summary"}
    for r in res["replay"]:
        assert r["recomputed"] == 0, r
        assert r["tokens_fed"] == r["nodes_to_feed"]
        assert r["ideal_speedup"] == pytest.approx(r["total_tokens"] / r["critical_path"])
        if r["join"] == "concat":
            assert r["reread_at_joins"] > 0
        else:
            assert r["reread_at_joins"] == 0
    by = {(r["batch"], r["join"]): r for r in res["replay"]}
    # tree and summary feed the same nodes once; concat also feeds its re-read copies of
    # threads 2..n, but not those threads' own `</Thread>`, which nothing attends to
    # (the continuation reads the copies): width - 1 = 3 per block of 4 threads, per row
    for b in (1, 2):
        assert by[(b, "tree")]["tokens_fed"] == by[(b, "summary")]["tokens_fed"]
        concat = by[(b, "concat")]
        assert concat["tokens_fed"] == by[(b, "tree")]["tokens_fed"] + concat["reread_at_joins"] - 3 * b
    assert all(g["identical_tokens"] for g in res["generate"])
    assert [(s["tokens"], s["mask"]) for s in res["step_cost"]] == [(1, False), (1, True), (2, True)]
    assert all(s["ms"] > 0 for s in res["step_cost"])


def test_bench_latency_one_forward_per_critical_token(one_thread, tmp_path, capsys):
    data, model = saved_countdown_model(tmp_path, 5)
    bench = load_bench("bench_latency")
    m = str(model)
    argv = ["--parallel", m, "--sequential", m, "--data", str(data), "--n", "5", "--repeats", "1"]
    res = bench.main(argv + ["--batch-size", "2", "--max-new-tokens", "24"])
    out = capsys.readouterr().out
    assert "token-latency gain" in out and "batch 2: sampled tokens/s" in out
    seq, par = res["batch1"]["sequential"], res["batch1"]["parallel"]
    assert seq["forwards"] == seq["tokens"] == seq["critical_path"]  # one forward per sampled token
    assert par["forwards"] == par["critical_path"]  # one forward per critical-path token
    assert res["forward_gain"] == pytest.approx(res["token_latency_gain"])
    assert res["wall_clock_gain"] == pytest.approx(res["forward_gain"] / res["step_cost_ratio"])
    assert res["batch"]["tokens_per_s"]["parallel"] > 0 and res["batch"]["tokens_per_s"]["sequential"] > 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
