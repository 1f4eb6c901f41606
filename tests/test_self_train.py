"""data_gen.self_train end to end with real components.

A tiny Qwen2 is overfitted (plain torch, packed-graph loss: exactly what the SFT
trainer optimises) on 3-number Countdown fork/join traces until it puts almost all
its mass on every trained token; the runner then decodes them back (it writes the
thread openers and the join itself), so greedy and low-temperature samples are
correct, well-formed, parallel trajectories. Problem A is trained with two traces
(2 and 3 threads: the model is 50/50 at the fourth outline, so samples are two
distinct correct trajectories with different speedups), problem B with one. A
third problem keeps A's prompt but changes its target: the memorized answer is
wrong there. The untrained model (same tokenizer) gives the noise case.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from data_gen import self_train as st

TINY = dict(vocab_size=300, hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core box
    yield
    torch.set_num_threads(n)


def overfit(model, tok, records, max_steps: int = 400, lr: float = 3e-3, ambiguous: int = 0) -> int:
    """Train on the packed graphs of ``records`` until every trained token has
    probability >= 0.9, except ``ambiguous`` tokens (where two traces of one prompt
    part ways) that need >= 0.3; returns the steps."""
    from parallel_reason.attention import attention_mask, collate
    from parallel_reason.layout import graph_from_text

    graphs = [graph_from_text(r["prompt"], r["completion"], tok) for r in records]
    b = collate(graphs, tok.pad_token_id)
    mask = attention_mask(b, "sdpa")
    sel = b["loss_mask"].bool()
    pred = b["pred"].clamp(min=0)
    tgt = b["input_ids"][sel]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(1, max_steps + 1):  # noqa: B007 (returned after the loop)
        logits = model(
            input_ids=b["input_ids"], attention_mask=mask, position_ids=b["position_ids"], use_cache=False
        ).logits
        lg = logits.gather(1, pred[:, :, None].expand(-1, -1, logits.shape[-1]))[sel]
        loss = F.cross_entropy(lg, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        p = torch.softmax(lg.detach(), -1).gather(1, tgt[:, None])[:, 0]
        if float(p.min()) >= 0.3 and int((p < 0.9).sum()) <= ambiguous:
            break
    model.eval()
    return step


def _write(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from data_gen import countdown as dg
    from parallel_reason.tiny import build_tiny

    d = tmp_path_factory.mktemp("self_train")
    recs = dg.generate(dg.GenConfig(n_numbers=3, split="train", seed=0, widths=(2,)), 2, progress=False)
    alt = dg.generate(dg.GenConfig(n_numbers=3, split="train", seed=0, widths=(3,)), 1, progress=False)[0]
    assert alt["prompt"] == recs[0]["prompt"] and alt["completion"] != recs[0]["completion"]
    assert all("<Parallel>" in r["completion"] for r in recs)
    corpus = [r["prompt"] + r["completion"] for r in recs + [alt]] * 3
    tok, model = build_tiny(corpus, d / "random", seed=0, **TINY)
    steps = overfit(model, tok, recs + [alt], ambiguous=2)
    assert steps < 400, "the tiny model did not memorize the traces"
    model.save_pretrained(d / "trained")
    tok.save_pretrained(d / "trained")
    wrong = dict(recs[0], id="wrong-target", target=recs[0]["target"] + 1)  # same prompt, other target
    problems = [{k: r[k] for k in dg.PUBLIC_KEYS} for r in recs] + [{k: wrong[k] for k in dg.PUBLIC_KEYS}]
    _write(d / "problems.jsonl", problems)
    return {"dir": d, "records": recs, "alt": alt, "tok": tok, "problems": problems}


def _run(setup, out: str, *extra: str, model: str = "trained") -> dict:
    d = setup["dir"]
    argv = [
        "--model",
        str(d / model),
        "--input",
        str(d / "problems.jsonl"),
        "--out",
        str(d / out),
        "--max-new-tokens",
        "300",
        "--batch-size",
        "3",
        "--no-progress",
        *extra,
    ]
    assert st.main(argv) == 0
    return json.loads(st.side_paths(d / out)[1].read_text())


def _greedy(setup, out: str, *extra: str) -> dict:
    return _run(setup, out, "--k", "1", "--temperature", "0", *extra)


def test_greedy_keeps_memorized_traces_with_their_speedup(setup, capsys):
    from parallel_reason.data import build_graphs, load_examples
    from parallel_reason.layout import critical_path_count, graph_from_text, sampled_count, tokenize_trajectory

    stats = _greedy(setup, "greedy.jsonl")
    table = capsys.readouterr().out
    assert "kept / samples" in table and "speedup of kept, mean" in table
    d, tok, recs = setup["dir"], setup["tok"], setup["records"]
    kept = _lines(d / "greedy.jsonl")
    assert [r["id"] for r in kept] == [f"{r['id']}/0" for r in recs]
    if kept[0]["completion"] == setup["alt"]["completion"]:  # greedy took A's other trace
        recs = [setup["alt"], recs[1]]
    for k, r in zip(kept, recs):
        assert k["completion"] == r["completion"]  # runner-written openers and join included, EOS removed
        assert k["prompt"] == r["prompt"] and k["nums"] == r["nums"] and k["target"] == r["target"]
        assert k["answer"] == k["model_answer"] == r["answer"]
        assert (k["problem_id"], k["task"], k["mode"], k["source"]) == (r["id"], "countdown", "parallel", "self_train")
        assert k["seed"] is None and k["sample_index"] == 0 and k["retokenize_match"] is True
        items = tokenize_trajectory(r["completion"], tok, eos=True)
        assert k["total_tokens"] == sampled_count(items) and k["critical_path"] == critical_path_count(items)
        assert k["critical_path"] < k["total_tokens"]
        assert k["speedup"] == pytest.approx(k["total_tokens"] / k["critical_path"]) and k["speedup"] >= 1.2
        assert k["blocks"] == 1 and k["threads"] == r["completion"].count("<Thread>")
    assert stats["problems"] == 3 and stats["samples"] == 3 and stats["kept"] == 2
    assert stats["kept_rate"] == pytest.approx(2 / 3) and stats["problems_with_kept"] == 2
    assert stats["accuracy"] == pytest.approx(2 / 3) and stats["well_formed_rate"] == 1.0
    assert stats["reasons"] == {"kept": 2, "incorrect": 1}
    assert stats["finish_reasons"] == {"eos": 3}
    assert stats["speedup_kept_mean"] == pytest.approx(sum(k["speedup"] for k in kept) / 2)
    assert stats["total_tokens_kept_mean"] == pytest.approx(sum(k["total_tokens"] for k in kept) / 2)
    assert stats["retokenize"] == {
        "checked": 3,
        "mismatches": 0,
        "mismatches_kept": 0,
        "mismatches_replacement_char": 0,
    }
    assert stats["decoded_this_run"] == 3 and stats["settings"]["min_speedup"] == 1.2
    progress, _ = st.side_paths(d / "greedy.jsonl")
    _, marks = st.read_progress(progress)
    assert marks["wrong-target"]["samples"][0]["verdict"] == "incorrect"
    assert "evaluates to" in marks["wrong-target"]["samples"][0]["reason"]
    # the output trains as it is: SFT's loader and packed graphs
    examples = load_examples(str(d / "greedy.jsonl"))
    graphs, gst = build_graphs(examples, tok)
    assert gst.kept == 2
    for g, r in zip(graphs, recs):  # the trained traces
        ref = graph_from_text(r["prompt"], r["completion"], tok)
        assert torch.equal(g.input_ids, ref.input_ids) and torch.equal(g.loss_mask, ref.loss_mask)


def test_huge_min_speedup_rejects_everything(setup):
    stats = _greedy(setup, "strict.jsonl", "--min-speedup", "100")
    assert stats["kept"] == 0 and (setup["dir"] / "strict.jsonl").read_text() == ""
    assert stats["reasons"] == {"below_speedup": 2, "incorrect": 1}
    assert "speedup_kept_mean" not in stats


def test_sampling_dedupe_keep_policies_and_chunking(setup):
    d = setup["dir"]
    a, b = setup["records"][0]["id"], setup["records"][1]["id"]
    common = ("--k", "6", "--temperature", "0.5", "--seed", "3")
    all_ = _run(setup, "all.jsonl", *common, "--keep", "all")
    best = _run(setup, "best.jsonl", *common, "--keep", "best")
    # one problem per runner call, one prompt per batch: the same samples
    again = _run(setup, "all_chunk1.jsonl", *common, "--keep", "all", "--chunk-size", "1", "--batch-size", "1")
    assert (d / "all.jsonl").read_text() == (d / "all_chunk1.jsonl").read_text()
    assert again["reasons"] == all_["reasons"]
    for stats in (all_, best):
        assert stats["samples"] == 18 and sum(stats["reasons"].values()) == 18
        assert stats["reasons"]["incorrect"] >= 6 - stats["reasons"].get("finish:malformed", 0)  # wrong-target
    assert all_["reasons"]["duplicate"] >= 1  # low temperature: the memorized traces again
    kept_all, kept_best = _lines(d / "all.jsonl"), _lines(d / "best.jsonl")
    # problem A: both memorized traces (2 and 3 threads) are distinct kept samples; keep=best takes
    # the one with the higher speedup (3 threads), the other is counted as not_best
    a_all = [r for r in kept_all if r["problem_id"] == a]
    assert sorted(r["threads"] for r in a_all) == [2, 3]
    assert {r["completion"] for r in a_all} == {setup["records"][0]["completion"], setup["alt"]["completion"]}
    assert [r["problem_id"] for r in kept_best] == [a, b] and kept_best[0]["threads"] == 3
    assert kept_best[0]["speedup"] == max(r["speedup"] for r in a_all) > min(r["speedup"] for r in a_all)
    assert best["reasons"]["not_best"] == 1 and all_["eligible"] == best["eligible"] == all_["kept"] == 3
    assert best["kept"] == best["problems_with_kept"] == 2
    for r in kept_all:
        assert r["seed"] is not None and r["speedup"] >= 1.2 and r["retokenize_match"] is True
    # every verdict agrees with the per-sample filter
    _, marks = st.read_progress(st.side_paths(d / "all.jsonl")[0])
    for m in marks.values():
        for s in m["samples"]:
            if s["verdict"] in ("kept", "duplicate"):
                assert s["correct"] and s["finish_reason"] == "eos" and s["speedup"] >= 1.2
            else:
                assert s["verdict"] in ("incorrect", "no_answer", "malformed", "below_speedup", "no_block") or s[
                    "verdict"
                ].startswith("finish:")


def test_untrained_model_rejects_without_crashing(setup):
    stats = _run(
        setup,
        "random.jsonl",
        "--k",
        "3",
        "--temperature",
        "1.0",
        "--max-new-tokens",
        "40",
        "--min-speedup",
        "1.0",
        model="random",
    )
    assert stats["samples"] == 9 and stats["kept"] == 0 and stats["accuracy"] == 0.0
    assert sum(stats["reasons"].values()) == 9
    assert set(stats["reasons"]) <= {"malformed", "no_answer", "incorrect"} | {
        f"finish:{r}"
        for r in (
            "max_new_tokens",
            "malformed",
            "eos_in_thread",
            "max_threads",
            "max_depth",
            "no_outlines",
            "unclosed_thread",
        )
    }
    # random token strings are not what the tokenizer makes of their text
    assert stats["retokenize"]["mismatches"] >= 1


def test_same_tokens_detects_a_non_canonical_split(setup):
    from transformers import AutoModelForCausalLM

    from parallel_reason.layout import encode
    from parallel_reason.runner import Runner

    tok, rec = setup["tok"], setup["records"][0]
    model = AutoModelForCausalLM.from_pretrained(setup["dir"] / "random").eval()
    text = "=> none\nAnswer: 99/(29-26)"
    canonical = encode(tok, text)
    split = [i for ch in text for i in encode(tok, ch)]  # one piece per character
    assert split != canonical and tok.decode(split) == text
    eos = [tok.eos_token_id]
    runner = Runner(model, tok, max_new_tokens=300)
    ros = runner.replay([rec["prompt"]] * 3, [canonical + eos, split + eos, rec["completion"]])
    assert [r.finish_reason for r in ros] == ["eos"] * 3
    assert st.same_tokens(ros[0], rec["prompt"], text, tok)
    assert not st.same_tokens(ros[1], rec["prompt"], text, tok)
    assert st.same_tokens(ros[2], rec["prompt"], rec["completion"], tok)  # forks: openers/join untrained in both
    assert not st.same_tokens(ros[0], rec["prompt"], text + " 1", tok)


def test_resume_skips_done_problems_and_repairs(setup, caplog):
    d = setup["dir"]
    common = ("--k", "2", "--temperature", "0.7", "--keep", "all", "--chunk-size", "1")
    ref = _run(setup, "ref.jsonl", *common)
    first = _run(setup, "res.jsonl", *common, "--n", "1")
    assert first["problems"] == 1 and first["decoded_this_run"] == 1
    second = _run(setup, "res.jsonl", *common)
    assert second["decoded_this_run"] == 2 and second["problems"] == 3
    assert (d / "res.jsonl").read_text() == (d / "ref.jsonl").read_text()
    third = _run(setup, "res.jsonl", *common)
    assert third["decoded_this_run"] == 0 and third["reasons"] == ref["reasons"] == second["reasons"]
    assert (d / "res.jsonl").read_text() == (d / "ref.jsonl").read_text()
    # a run killed after writing a chunk's records but before its markers, mid-line
    progress, _ = st.side_paths(d / "res.jsonl")
    lines = progress.read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])["id"]
    progress.write_text("".join(lines[:-1]) + lines[-1][:25])  # its marker cut mid-line
    with open(d / "res.jsonl", "a") as f:
        f.write('{"id": "trunc')
    fourth = _run(setup, "res.jsonl", *common)
    assert fourth["decoded_this_run"] == 1 and fourth["problems"] == 3
    assert (d / "res.jsonl").read_text() == (d / "ref.jsonl").read_text()
    assert last in st.read_progress(progress)[1]
    # another configuration is refused; --overwrite starts afresh
    with pytest.raises(SystemExit, match="different configuration"):
        _run(setup, "res.jsonl", "--k", "2", "--temperature", "0.9", "--keep", "all")
    fresh = _run(setup, "res.jsonl", "--k", "1", "--temperature", "0", "--overwrite")
    assert fresh["decoded_this_run"] == 3 and fresh["kept"] == 2


def test_bad_input_names_the_record(setup, tmp_path, capsys):
    d = setup["dir"]
    rows = [dict(p) for p in setup["problems"]]
    del rows[1]["target"]
    _write(tmp_path / "missing.jsonl", rows)
    argv = [
        "--model",
        str(d / "trained"),
        "--out",
        str(tmp_path / "o.jsonl"),
        "--no-progress",
        "--k",
        "1",
        "--temperature",
        "0",
    ]
    assert st.main(argv + ["--input", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "missing.jsonl:2" in err and "'target'" in err
    rows = [dict(p) for p in setup["problems"]]
    rows[2]["nums"] = [1, "x", 3]
    _write(tmp_path / "typed.jsonl", rows)
    assert st.main(argv + ["--input", str(tmp_path / "typed.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "typed.jsonl:3" in err and "'nums'" in err
    with pytest.raises(SystemExit):
        st.main(argv + ["--input", str(tmp_path / "typed.jsonl"), "--k", "2"])  # k > 1 needs sampling
    # an output file that no progress file describes is not appended to
    (tmp_path / "foreign.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(SystemExit, match="does not describe it"):
        st.main(argv[:2] + ["--out", str(tmp_path / "foreign.jsonl"), "--input", str(d / "problems.jsonl")])


def test_failed_start_does_not_block_the_corrected_rerun(setup, tmp_path, capsys):
    """The first start writes its settings, then cannot load its model; the rerun with
    the right model must not be refused as "a different configuration"."""
    d = setup["dir"]
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    out = tmp_path / "kept.jsonl"
    argv = [
        "--input",
        str(d / "problems.jsonl"),
        "--out",
        str(out),
        "--k",
        "1",
        "--temperature",
        "0",
        "--max-new-tokens",
        "300",
        "--batch-size",
        "3",
        "--no-progress",
    ]
    assert st.main(["--model", str(empty)] + argv) == 2
    assert f"--model {empty}: cannot be loaded" in capsys.readouterr().err
    assert st.main(["--model", str(tmp_path / "typo")] + argv) == 2  # refused before any file is touched
    assert "no such folder" in capsys.readouterr().err
    assert st.main(["--model", str(d / "trained")] + argv) == 0
    assert json.loads(st.side_paths(out)[1].read_text())["problems"] == len(setup["problems"])


def _score(i, **kw):
    s = {
        "sample_index": i,
        "finish_reason": "eos",
        "format_valid": True,
        "answer": "1+2",
        "correct": True,
        "blocks": 1,
        "speedup": 1.5,
        "total_tokens": 30,
        "completion": f"c{i}",
        "retokenize_match": True,
    }
    s.update(kw)
    return s


def test_select_order_and_policies():
    scores = [
        _score(0, finish_reason="max_new_tokens", correct=False, answer=None),
        _score(1, format_valid=False),
        _score(2, answer=None, correct=False),
        _score(3, correct=False),
        _score(4, blocks=0, speedup=1.0),
        _score(5, speedup=1.1),
        _score(6, speedup=1.5, total_tokens=40),
        _score(7, speedup=1.5, total_tokens=30),
        _score(8, speedup=1.5, total_tokens=30, completion="c7"),
        _score(9, speedup=1.5, total_tokens=30),
        _score(10, speedup=2.0, retokenize_match=False),
    ]
    v = st.select(scores, 1.2, keep="all")
    assert v == [
        "finish:max_new_tokens",
        "malformed",
        "no_answer",
        "incorrect",
        "no_block",
        "below_speedup",
        "kept",
        "kept",
        "duplicate",
        "kept",
        "kept",
    ]
    v = st.select(scores, 1.2, keep="best", require_same_tokens=True)
    assert v[6:] == ["not_best", "kept", "duplicate", "not_best", "retokenize_mismatch"]
    v = st.select(scores, 1.2, keep="best")
    assert v[10] == "kept" and v[7] == "not_best"
    # min_speedup <= 1: trajectories without a block are kept
    assert st.select([_score(0, blocks=0, speedup=1.0)], 1.0) == ["kept"]


def test_math_record_and_chat_prompt(tmp_path):
    """A kept math sample stores the reference answer (the output is again valid input)
    and the model's; with --chat-template a string prompt is stored as a user message."""
    from parallel_reason.data import load_examples
    from parallel_reason.evaluate import load_problems

    src = tmp_path / "math.jsonl"
    _write(src, [{"id": "m1", "question": "What is 6*7?", "answer": "#### 42"}])
    (p,) = load_problems(str(src), "math")
    completion = (
        "Two parts.<Parallel>\n<Outlines><Outline>1: a</Outline><Outline>2: b</Outline></Outlines>\n"
        "<Thread>1: 6*7</Thread>\n<Thread>2: 42</Thread>\n</Parallel>\nSo \\boxed{42}"
    )
    score = _score(0, answer="42", completion=completion, threads=2, critical_path=20, total_tokens=30)
    rec = st.make_record("math", p, score, 7, "m", chat_template=True)
    assert rec["answer"] == "42" and rec["model_answer"] == "42" and rec["id"] == "m1/0"
    assert rec["prompt"] == [{"role": "user", "content": p["prompt"]}]
    out = tmp_path / "kept.jsonl"
    _write(out, [rec])
    (ex,) = load_examples(str(out))
    assert ex.completion == completion and ex.meta["answer"] == "42"
    (again,) = load_problems(str(out), "math")
    assert again["args"] == {"answer": "42"}


def test_same_tokens_uses_the_models_thread_header(setup):
    """A model trained with thread_header=outline is re-tokenized with it: its rollouts
    match the text's graph (with the default header they would not)."""
    from transformers import AutoModelForCausalLM

    from data_gen import countdown as gen
    from parallel_reason.runner import Runner

    tok = setup["tok"]
    model = AutoModelForCausalLM.from_pretrained(setup["dir"] / "random").eval()
    model.config.thread_header = "outline"
    rec = gen.generate(gen.GenConfig(seed=9, n_numbers=3, max_depth=1, restate=True), 1, progress=False)[0]
    runner = Runner(model, tok, max_new_tokens=400)
    assert runner.thread_header == "outline"
    ro = runner.replay([rec["prompt"]], [rec["completion"]])[0]
    assert ro.finish_reason == "eos" and ro.forks == 1
    assert st.same_tokens(ro, rec["prompt"], rec["completion"], tok, thread_header=runner.thread_header)
    assert not st.same_tokens(ro, rec["prompt"], rec["completion"], tok)  # "i:" openers: another graph
