"""Fork/join runner (parallel_reason.runner): greedy equivalence with
``model.generate``, train/inference consistency (an invariant of
docs/design.md#packed-graph), fuzzing, guards, seeds, KV sharing and memory reclaim."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_model, random_text, random_trajectory

from parallel_reason.attention import collate
from parallel_reason.format import (
    OUTLINE_CLOSE,
    OUTLINE_OPEN,
    OUTLINES_CLOSE,
    OUTLINES_OPEN,
    PARALLEL_CLOSE,
    PARALLEL_OPEN,
    RESULT,
    THREAD_CLOSE,
    THREAD_OPEN,
)
from parallel_reason.layout import (
    JOIN_MODES,
    Run,
    TBlock,
    TThread,
    encode,
    graph_from_text,
    linear_graph,
    linear_ids,
    opener_ids,
    sampled_count,
    tokenize_trajectory,
)
from parallel_reason.logprobs import packed_logprobs
from parallel_reason.metrics import stats_from_ids
from parallel_reason.runner import FINISH_REASONS, Runner
from parallel_reason.tokens import tag_token_ids

TOL = 1e-4  # float32, max abs difference of log-probs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models on a shared 2-core box: one intra-op thread is several times faster
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(scope="module")
def model(tok):
    return make_model(tok, seed=1)


# ---------------------------------------------------------------------- helpers


def tag_bias_hook(model, tok, value: float):
    """Add ``value`` to the logits of every control tag (forward hook on lm_head)."""
    bias = torch.zeros(model.lm_head.out_features)
    bias[list(tag_token_ids(tok).values())] = value
    return model.lm_head.register_forward_hook(lambda m, i, o: o + bias)


class MarkovLM(torch.nn.Module):
    """A causal LM: ``scale * base(context) + table[previous token]``. The table is a
    hand-written Markov chain over the grammar (see :func:`markov_table`), so a random
    model samples forks, nested blocks, joins and every kind of mistake; the base
    model keeps every log-prob context dependent (a visibility bug shows)."""

    def __init__(self, base, table: torch.Tensor, scale: float = 4.0):
        super().__init__()
        self.module = base  # packed_logprobs / the runner unwrap .module for config and dtype
        self.register_buffer("table", table)
        self.scale = scale
        self.config = base.config

    def forward(self, input_ids, logits_to_keep=0, **kw):
        out = self.module(input_ids=input_ids, logits_to_keep=logits_to_keep, **kw)
        if isinstance(logits_to_keep, int):
            prev = input_ids[:, -logits_to_keep:] if logits_to_keep else input_ids
        else:
            prev = input_ids.gather(1, logits_to_keep)
        out.logits = self.scale * out.logits + self.table[prev]
        return out


def markov_table(tok, V: int, p_par_main: float = 0.12, p_par_thread: float = 0.06, noise: float = 0.005):
    T = tag_token_ids(tok)
    eos, colon = tok.eos_token_id, encode(tok, ":")[-1]
    special = set(T.values()) | {eos, tok.pad_token_id, colon}
    newline = set(encode(tok, "\n"))  # prompts end with a newline: it must lead to main text
    ordinary = [i for i in range(min(V, len(tok))) if i not in special]
    A = [i for i in ordinary if i % 3 == 0 and i not in newline]  # thread text
    B = [i for i in ordinary if i % 3 == 1 or i in newline]  # main text
    C = [i for i in ordinary if i % 3 == 2 and i not in newline]  # outline text
    P = torch.full((V, V), 0.0)

    def put(prev, dist):
        for p in prev:
            row = torch.full((V,), noise / V)
            for ids, mass in dist:
                row[ids] += (1 - noise) * mass / len(ids)
            P[p] = row

    main = [(B, 1 - p_par_main - 0.03), ([T[PARALLEL_OPEN]], p_par_main), ([eos], 0.03)]
    put(range(V), main)
    put(B, main)
    put([T[PARALLEL_OPEN]], [([T[OUTLINES_OPEN]], 1.0)])
    put([T[OUTLINES_OPEN]], [([T[OUTLINE_OPEN]], 1.0)])
    put([T[OUTLINE_OPEN]], [(C, 1.0)])
    put(C, [(C, 0.55), ([T[OUTLINE_CLOSE]], 0.45)])
    put([T[OUTLINE_CLOSE]], [([T[OUTLINE_OPEN]], 0.45), ([T[OUTLINES_CLOSE]], 0.55)])
    put([colon], [(A, 1.0)])
    put(
        A,
        [
            (A, 0.78 - p_par_thread),
            ([T[THREAD_CLOSE]], 0.17),
            ([T[PARALLEL_OPEN]], p_par_thread),
            ([T[RESULT]], 0.04),
            ([eos], 0.01),
        ],
    )
    put([T[RESULT]], [(A, 1.0)])
    put([T[PARALLEL_CLOSE]], [(A, 0.3), (B, 0.7)])  # after a join: main text, or a thread's continuation
    return P.log()


@pytest.fixture(scope="module")
def markov(tok):
    base = make_model(tok, seed=3)
    return MarkovLM(base, markov_table(tok, base.lm_head.out_features)).eval()


@pytest.fixture(scope="module")
def markov_fuzz(tok):
    """Forks often, with more noise (stray tags, wrong text classes)."""
    base = make_model(tok, seed=4)
    return MarkovLM(base, markov_table(tok, base.lm_head.out_features, p_par_main=0.3, noise=0.002)).eval()


def worst_logprob_diff(model, rollouts, pad_id: int, chunk: int = 32) -> float:
    """Max |runner log-prob - packed_logprobs| over every sampled token."""
    worst = 0.0
    for k in range(0, len(rollouts), chunk):
        graphs = [r.graph for r in rollouts[k : k + chunk]]
        batch = collate(graphs, pad_id)
        with torch.no_grad():
            lp = packed_logprobs(model, batch)
        for b, g in enumerate(graphs):
            n = len(g)
            if not bool(g.loss_mask.any()):
                continue
            d = (lp[b, :n] - g.sample_logprobs)[g.loss_mask].abs().max().item()
            worst = max(worst, d)
    return worst


def check_rollout(r, tok, max_new_tokens=None) -> None:
    """Invariants every rollout satisfies, however it ended."""
    assert r.finish_reason in FINISH_REASONS
    g = r.graph
    assert int(g.loss_mask.sum()) == r.total_tokens == sampled_count(r.items) == sum(r.loss_mask)
    assert len(r.completion_ids) == len(r.logprobs) == len(r.sampler_logprobs) == len(r.loss_mask)
    assert g.sample_logprobs is not None and g.sample_logprobs.shape == g.input_ids.shape
    assert g.input_ids[: g.prompt_len].tolist() == r.prompt_ids
    assert r.completion == tok.decode(r.completion_ids, skip_special_tokens=False)
    assert 0 < r.critical_path <= r.total_tokens or r.total_tokens == 0
    assert r.wall_s >= 0
    assert all(lp <= 1e-6 for lp in r.logprobs)
    if max_new_tokens is not None:
        assert r.total_tokens <= max_new_tokens


def wide_trajectory(rng: random.Random, blocks: int, width: int, words: int = 8) -> str:
    """Sequential text and ``blocks`` blocks of ``width`` threads of about ``words`` words
    each; every thread but the last ends with a short result."""
    from parallel_reason.format import Trajectory, make_block, render

    parts = [random_text(rng, words, words)]
    for _ in range(blocks):
        bodies = [
            random_text(rng, words, words) + (RESULT + random_text(rng, 1, 2) if i < width - 1 else "")
            for i in range(width)
        ]
        parts.append(make_block([(random_text(rng, 1, 2).strip(), body) for body in bodies]))
        parts.append("\n" + random_text(rng, words, words).lstrip())
    return render(Trajectory(parts))


def non_leaf_nodes(g) -> int:
    """Graph nodes whose keys/values some later token needs: the tokens a decoder must feed."""
    m = g.dense_mask()
    m.fill_diagonal_(False)
    return int(m.any(0).sum())


# ---------------------------------------------------------------------- greedy == generate


@pytest.mark.parametrize("arch,attn", [("qwen2", "sdpa"), ("llama", "eager")])
def test_greedy_equals_model_generate(tok, arch, attn):
    model = make_model(tok, arch=arch, attn=attn, seed=2)
    hook = tag_bias_hook(model, tok, -1e4)  # the model never emits a tag
    try:
        prompts = [
            "Numbers: 3 1 2\nTarget: 5\n",
            "alpha beta",
            "Search left right sum take 7 8 9 plan found none",
            "gamma",
            "check try 4 5 6",
        ]
        runner = Runner(model, tok, max_new_tokens=24, batch_size=2)  # 5 prompts through 2 rows: admission mid-run
        outs = runner.generate(prompts)
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=24, do_sample=False)
    finally:
        hook.remove()
    assert len({len(r.prompt_ids) for r in outs}) > 1
    compared = 0
    for k, r in enumerate(outs):
        ref = gen[k, enc["input_ids"].shape[1] :].tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id) + 1]
        assert r.completion_ids == ref, f"prompt {k}"
        assert r.finish_reason == ("eos" if ref[-1] == tok.eos_token_id else "max_new_tokens")
        assert r.total_tokens == r.critical_path == len(ref)
        compared += len(ref)
    assert compared >= 60


# ---------------------------------------------------------------------- consistency


@pytest.mark.parametrize("join", JOIN_MODES)
def test_replay_nested_matches_trainer_graph(tok, model, join):
    rng = random.Random(7)
    texts = [random_trajectory(rng, depth=2, max_width=4, p_block=0.9, p_result=0.6) for _ in range(6)]
    prompts = [f"Numbers: {k} 1 2\nTarget: {k + 3}\n" + "pad " * k for k in range(6)]
    runner = Runner(model, tok, max_new_tokens=4096, max_width=4, max_depth=3, batch_size=3, join=join)
    outs = runner.replay(prompts, texts)
    assert sum(r.forks for r in outs) >= 10
    if join == "concat":  # re-reads at joins and admissions ran apart from decoding rows
        assert runner.stats.split_steps > 0
    for r, p, text in zip(outs, prompts, texts):
        check_rollout(r, tok)
        assert r.finish_reason == "eos"
        assert r.completion == text + tok.eos_token
        ref = graph_from_text(p, text, tok, join=join)
        for name in ("input_ids", "pred", "position_ids", "loss_mask", "seg_id", "seg_vis"):
            assert torch.equal(getattr(ref, name), getattr(r.graph, name)), name
        st = stats_from_ids(r.completion_ids, tok)
        assert (st.total_tokens, st.critical_path) == (r.total_tokens, r.critical_path)
    assert worst_logprob_diff(model, outs, tok.pad_token_id) <= TOL


def test_eager_attention_with_forks(tok):
    """The additive float mask path (eager), llama architecture, nested replay, batch 2."""
    model = make_model(tok, arch="llama", attn="eager", seed=5)
    rng = random.Random(11)
    texts = [random_trajectory(rng, depth=2, max_width=3, p_block=0.9) for _ in range(3)]
    runner = Runner(model, tok, max_new_tokens=4096, max_width=4, max_depth=3, batch_size=2)
    outs = runner.replay(["Numbers: 1 2\n", "Target: 7\n", "x y"], texts)
    assert sum(r.forks for r in outs) >= 2
    assert all(r.finish_reason == "eos" for r in outs)
    assert worst_logprob_diff(model, outs, tok.pad_token_id) <= TOL


@pytest.mark.parametrize("join", JOIN_MODES)
def test_sampling_with_forks_is_consistent(tok, markov, join):
    runner = Runner(markov, tok, max_new_tokens=160, max_width=4, max_depth=2, batch_size=8, join=join)
    prompts = [f"Numbers: {k} {k + 1}\nTarget: {2 * k}\n" for k in range(12)]
    outs = runner.generate(prompts, n=2, temperature=1.0, seed=11)
    assert len(outs) == 24 and [(r.prompt_index, r.sample_index) for r in outs][:3] == [(0, 0), (0, 1), (1, 0)]
    joined = [r for r in outs if any(isinstance(it, TBlock) and it.joined for it in r.items)]
    nested = [
        r
        for r in outs
        for it in r.items
        if isinstance(it, TBlock)
        for t in it.threads
        for x in t.body
        if isinstance(x, TBlock) and x.joined
    ]
    assert len(joined) >= 6, [r.finish_reason for r in outs]
    assert nested, "no nested joined block was sampled"
    assert any(r.speedup > 1.2 for r in outs)
    for r in outs:
        check_rollout(r, tok, 160)
        assert r.sampler_logprobs == pytest.approx(r.logprobs, abs=1e-5)  # T=1, no filter: same distribution
    assert worst_logprob_diff(markov, outs, tok.pad_token_id) <= TOL


def test_filtered_sampling_records_both_logprobs(tok, markov):
    runner = Runner(markov, tok, max_new_tokens=60, max_width=4, batch_size=4)
    outs = runner.generate(["Numbers: 1 2\n", "Target: 3\n"], n=2, temperature=0.7, top_k=20, top_p=0.9, seed=1)
    for r in outs:
        check_rollout(r, tok, 60)
        m = [k for k, x in enumerate(r.loss_mask) if x]
        # the sampled token is always inside the filtered support, whose distribution differs from the model's
        assert all(-1e4 < r.sampler_logprobs[k] <= 1e-6 for k in m)
        assert any(r.sampler_logprobs[k] > r.logprobs[k] + 1e-3 for k in m)
    assert worst_logprob_diff(markov, outs, tok.pad_token_id) <= TOL
    # top_k=1 is greedy
    a = runner.generate(["Numbers: 1 2\n"], temperature=1.0, top_k=1, seed=3)[0]
    b = runner.generate(["Numbers: 1 2\n"], temperature=0.0)[0]
    assert a.completion_ids == b.completion_ids


# ---------------------------------------------------------------------- fuzz


def test_fuzz_200_prompts_temperature_1_5(tok, markov_fuzz):
    markov = markov_fuzz
    runner = Runner(markov, tok, max_new_tokens=64, max_thread_tokens=24, max_width=3, max_depth=2, batch_size=32)
    rng = random.Random(0)
    prompts = [
        " ".join(rng.choice(["alpha", "beta", "7", "sum", "take", "\n", "Target:"]) for _ in range(rng.randint(1, 12)))
        + "\n"
        for _ in range(200)
    ]
    outs = runner.generate(prompts, temperature=1.5, seed=123)
    assert len(outs) == 200
    reasons = {}
    for r in outs:
        check_rollout(r, tok, 64)
        reasons[r.finish_reason] = reasons.get(r.finish_reason, 0) + 1
    print(reasons, sum(r.forks for r in outs))
    assert sum(r.forks for r in outs) >= 50
    assert len(reasons) >= 5, reasons
    assert worst_logprob_diff(markov, outs, tok.pad_token_id) <= TOL


@pytest.mark.parametrize("join", JOIN_MODES)
def test_constrained_decoding_never_malformed(tok, markov_fuzz, model, join):
    """With constraints the fuzz model at T=1.5 (which often samples tags out of place)
    and a random model end no rollout with a grammar violation; the recorded log-probs
    stay the model's own (what the trainer computes), the sampler's are the constrained
    distribution's (never below the model's: the mass of banned tags moved to the rest)."""
    rng = random.Random(0)
    prompts = [
        " ".join(rng.choice(["alpha", "beta", "7", "sum", "take", "\n", "Target:"]) for _ in range(rng.randint(1, 12)))
        + "\n"
        for _ in range(64)
    ]
    violations = {"malformed", "eos_in_thread", "no_outlines", "max_threads", "max_depth"}
    for m in (markov_fuzz, model):
        free = Runner(
            m, tok, max_new_tokens=64, max_thread_tokens=24, max_width=3, max_depth=2, batch_size=32, join=join
        ).generate(prompts, temperature=1.5, seed=5)
        outs = Runner(
            m,
            tok,
            max_new_tokens=64,
            max_thread_tokens=24,
            max_width=3,
            max_depth=2,
            batch_size=32,
            join=join,
            constrained=True,
        ).generate(prompts, temperature=1.5, seed=5)
        if m is markov_fuzz:
            assert sum(r.finish_reason in violations for r in free) >= 10
            assert sum(r.forks for r in outs) >= 20
        assert not [r.finish_reason for r in outs if r.finish_reason in violations]
        for r in outs:
            check_rollout(r, tok, 64)
        assert worst_logprob_diff(m, outs, tok.pad_token_id) <= TOL
    # at T=1 without filters the sampler's distribution is the model's renormalised over what is allowed
    outs = Runner(
        markov_fuzz, tok, max_new_tokens=64, max_width=3, max_depth=2, batch_size=32, join=join, constrained=True
    ).generate(prompts[:16], temperature=1.0, seed=1)
    pairs = [(s, lp) for r in outs for s, lp in zip(r.sampler_logprobs, r.logprobs)]
    assert all(s >= lp - 1e-5 for s, lp in pairs) and any(s > lp + 1e-3 for s, lp in pairs)


def test_constrained_banned_sets(tok, model):
    """The banned tags in each state are exactly those the guards would stop on."""
    from parallel_reason.runner.scheduler import Context, RolloutState, RunLimits, TagSet

    T = tag_token_ids(tok)
    eos = tok.eos_token_id
    st = RolloutState(
        Context(None, encode(tok, "x")), TagSet(tok), RunLimits(max_new_tokens=100, max_width=1, max_depth=1)
    )
    lane = st.main
    names = {v: k for k, v in T.items()}

    def allowed():
        return sorted(names[i] for i in set(T.values()) - set(st.banned(lane))), eos in st.banned(lane)

    assert allowed() == ([PARALLEL_OPEN], False)  # main text: open a block or end
    st.advance(lane, T[PARALLEL_OPEN], -1.0)
    assert allowed() == ([OUTLINES_OPEN], True)
    st.advance(lane, T[OUTLINES_OPEN], -1.0)
    assert allowed() == ([OUTLINE_OPEN], True)  # zero outlines: </Outlines> is banned
    st.advance(lane, T[OUTLINE_OPEN], -1.0)
    assert allowed() == ([OUTLINE_CLOSE], True)
    st.advance(lane, T[OUTLINE_CLOSE], -1.0)
    assert allowed() == ([OUTLINES_CLOSE], True)  # max_width 1 reached: no second <Outline>
    st.advance(lane, T[OUTLINES_CLOSE], -1.0)
    thread = st.active_lanes()[0]
    assert thread.is_thread
    lane = thread
    assert allowed() == ([THREAD_CLOSE, RESULT], True)  # max_depth 1: no nested block; no EOS in a thread
    st.advance(lane, T[RESULT], -1.0)
    assert allowed() == ([THREAD_CLOSE], True)  # one result per thread
    st.advance(lane, encode(tok, " alpha")[0], -1.0)
    assert allowed() == ([THREAD_CLOSE], True)
    # depth allowing a nested block: not after the result
    st2 = RolloutState(Context(None, encode(tok, "x")), TagSet(tok), RunLimits(max_new_tokens=100, max_depth=2))
    for t in [T[PARALLEL_OPEN], T[OUTLINES_OPEN], T[OUTLINE_OPEN], T[OUTLINE_CLOSE], T[OUTLINES_CLOSE]]:
        st2.advance(st2.main, t, -1.0)
    th = st2.active_lanes()[0]
    assert PARALLEL_OPEN not in [names.get(i) for i in st2.banned(th)]
    st2.advance(th, T[RESULT], -1.0)
    assert PARALLEL_OPEN in [names.get(i) for i in st2.banned(th)]
    st2.advance(th, T[PARALLEL_OPEN], -1.0)  # sampled anyway (unconstrained): malformed
    assert st2.finish_reason == "malformed" and "after the <Result>" in st2.detail


# ---------------------------------------------------------------------- guards


def _tree(tok, text: str, eos: bool = True):
    return tokenize_trajectory(text, tok, eos=eos)


BLOCK2 = (
    "<Parallel>\n<Outlines><Outline>1: a</Outline><Outline>2: b</Outline></Outlines>\n"
    "<Thread>1: alpha beta gamma delta check try plan</Thread>\n<Thread>2: found none</Thread>\n</Parallel>\n done"
)


def guard_cases(tok):
    T = tag_token_ids(tok)
    eos = tok.eos_token_id
    w = encode(tok, " alpha beta")
    head1 = (
        [T[PARALLEL_OPEN], T[OUTLINES_OPEN], T[OUTLINE_OPEN]]
        + encode(tok, "1: x")
        + [T[OUTLINE_CLOSE], T[OUTLINES_CLOSE]]
    )
    eos_thread = [TBlock(head=head1, threads=[TThread(opener_ids(tok, 1), [Run(w + [eos])])])]
    three = (
        "<Parallel>\n<Outlines><Outline>1: a</Outline><Outline>2: b</Outline><Outline>3: c</Outline></Outlines>\n"
        "<Thread>1: x</Thread>\n<Thread>2: y</Thread>\n<Thread>3: z</Thread>\n</Parallel>\n"
    )
    nested = (
        "<Parallel>\n<Outlines><Outline>1: a</Outline></Outlines>\n<Thread>1: x<Parallel>\n<Outlines>"
        "<Outline>1: b</Outline></Outlines>\n<Thread>1: y</Thread>\n</Parallel>\n</Thread>\n</Parallel>\n"
    )
    return [
        # (reason, runner kwargs, completion)
        ("eos", {}, " alpha" + BLOCK2),
        ("max_new_tokens", {"max_new_tokens": 5}, " alpha beta gamma delta check try plan"),
        ("unclosed_thread", {"max_new_tokens": 20}, " alpha" + BLOCK2),
        ("max_thread_tokens", {"max_thread_tokens": 4}, " alpha" + BLOCK2),
        ("max_threads", {"max_width": 2}, three),
        ("max_depth", {"max_depth": 1}, nested),
        ("no_outlines", {}, [T[PARALLEL_OPEN], T[OUTLINES_OPEN], T[OUTLINES_CLOSE], eos]),
        ("eos_in_thread", {}, eos_thread),
        ("malformed", {}, w + [T[PARALLEL_CLOSE]] + w),  # the model samples </Parallel>
        ("malformed", {}, w + [T[THREAD_OPEN]] + w),  # <Thread> outside a fork
        ("malformed", {}, w + [T[THREAD_CLOSE], eos]),  # </Thread> outside a thread
        ("malformed", {}, [T[PARALLEL_OPEN], T[OUTLINE_OPEN]] + w),  # <Outline> before <Outlines>
        ("malformed", {}, head1[:4] + [T[OUTLINES_CLOSE]]),  # </Outlines> inside an open outline
        ("malformed", {}, [T[PARALLEL_OPEN], T[OUTLINES_OPEN], eos]),  # EOS in a block head
        ("malformed", {}, [TBlock(head=head1, threads=[TThread(opener_ids(tok, 1), [Run(w + [T[PARALLEL_CLOSE]])])])]),
        ("replay_end", {}, _tree(tok, " alpha" + BLOCK2, eos=False)),
    ]


def test_every_finish_reason_has_a_case(tok):
    assert {c[0] for c in guard_cases(tok)} == set(FINISH_REASONS)


@pytest.mark.parametrize("case", range(16))
def test_guard(tok, model, case):
    reason, kw, completion = guard_cases(tok)[case]
    runner = Runner(model, tok, **{"max_new_tokens": 256, **kw})
    r = runner.replay(["Numbers: 1 2\n"], [completion])[0]
    assert r.finish_reason == reason, (r.finish_reason, r.detail)
    check_rollout(r, tok, runner.limits.max_new_tokens)
    if reason not in ("eos",):
        assert r.detail or reason == "max_new_tokens"
    if reason == "max_thread_tokens":
        assert "thread 1" in r.detail
    assert worst_logprob_diff(model, [r], tok.pad_token_id) <= TOL


def test_guards_inside_a_batch_do_not_disturb_neighbours(tok, model):
    cases = guard_cases(tok)
    runner = Runner(model, tok, max_new_tokens=256, max_width=2, max_depth=1, batch_size=4)
    comps = [c[2] for c in cases if not c[1]] + [" alpha" + BLOCK2]
    outs = runner.replay(["Numbers: 1 2\n"] * len(comps), comps)
    assert outs[-1].finish_reason == "eos"
    for r in outs:
        check_rollout(r, tok, 256)
    assert worst_logprob_diff(model, outs, tok.pad_token_id) <= TOL


# ---------------------------------------------------------------------- engine-agnostic scheduler


def test_scheduler_contexts_are_the_graph_without_a_model(tok):
    """Drive the state machine by hand, as a prefix-caching engine would: the context
    each lane samples from (``lane.ctx.path()``) is exactly the ancestor path of that
    token in the packed graph the trainer builds."""
    from collections import Counter

    from parallel_reason.runner.scheduler import Context, RolloutState, RunLimits, Script, TagSet, to_rollout

    rng = random.Random(21)
    tags = TagSet(tok)
    for _ in range(5):
        text = random_trajectory(rng, depth=2, max_width=4, p_block=0.9)
        prompt = encode(tok, "Numbers: 1 2\n")
        st = RolloutState(
            Context(None, prompt),
            tags,
            RunLimits(max_new_tokens=10_000, max_width=4, max_depth=3),
            script=Script(tokenize_trajectory(text, tok)),
        )
        seen = Counter()
        while not st.finished:
            for lane in st.active_lanes():
                if st.finished:
                    break
                assert st.lane_budget(lane) > 0
                t = lane.script.next()
                seen[(tuple(lane.ctx.path()), t)] += 1
                st.advance(lane, t, -1.0)
        r = to_rollout(st, tok)
        assert r.finish_reason == "eos" and r.completion == text + tok.eos_token
        g = r.graph
        ids = g.input_ids.tolist()
        want = Counter(
            (tuple(ids[i] for i in g.ancestors(int(g.pred[n]))), ids[n])
            for n in torch.nonzero(g.loss_mask).flatten().tolist()
        )
        assert seen == want


# ---------------------------------------------------------------------- seeds, sharing, memory


def test_seeds_do_not_depend_on_batch_composition(tok, markov):
    prompts = ["Numbers: 1 2\n", "Target: 9\n", "alpha beta gamma\n"]
    big = Runner(markov, tok, max_new_tokens=80, batch_size=8).generate(prompts, n=3, temperature=1.0, seed=[5, 6, 7])
    alone = Runner(markov, tok, max_new_tokens=80, batch_size=1).generate(prompts[1:2], n=3, temperature=1.0, seed=[6])
    assert [r.completion_ids for r in big[3:6]] == [r.completion_ids for r in alone]
    assert len({tuple(r.completion_ids) for r in big[3:6]}) > 1  # the n samples differ
    again = Runner(markov, tok, max_new_tokens=80, batch_size=2).generate(prompts, n=3, temperature=1.0, seed=[5, 6, 7])
    assert [r.completion_ids for r in again] == [r.completion_ids for r in big]


@pytest.mark.parametrize("join", JOIN_MODES)
def test_fork_recomputes_nothing_and_prompt_is_shared(tok, model, join):
    rng = random.Random(3)
    texts = [random_trajectory(rng, depth=2, max_width=4, p_block=0.9) for _ in range(4)]
    runner = Runner(model, tok, max_new_tokens=4096, max_width=4, max_depth=3, batch_size=4, join=join)
    outs = runner.replay(["Numbers: 1 2\n"] * 4, texts)
    assert runner.stats.tokens_fed == sum(non_leaf_nodes(r.graph) for r in outs)
    # n samples of a prompt share one prefill of the prompt
    prompt = "Numbers: 1 2 3 4 5 6 7 8\nTarget: 24\n"
    hook = tag_bias_hook(model, tok, -1e4)
    runner = Runner(model, tok, max_new_tokens=30)
    try:
        outs = runner.generate([prompt], n=4, temperature=1.0, seed=0)
    finally:
        hook.remove()
    P = len(outs[0].prompt_ids)
    assert runner.stats.tokens_fed == P + sum(r.total_tokens - 1 for r in outs)


@pytest.mark.parametrize("join", JOIN_MODES)
def test_dead_slots_are_reclaimed(tok, model, join):
    rng = random.Random(5)
    texts = [wide_trajectory(rng, blocks=3, width=4) for _ in range(3)]
    runner = Runner(
        model, tok, max_new_tokens=4096, max_width=4, max_depth=3, batch_size=3, compact_min_slots=16, join=join
    )
    outs = runner.replay(["Numbers: 1 2\n", "Target: 3\n", "x"], texts)
    assert runner.stats.compactions > 0
    assert worst_logprob_diff(model, outs, tok.pad_token_id) <= TOL
    # one row: without reclaim the cache would hold every token fed
    runner = Runner(model, tok, max_new_tokens=4096, max_width=4, batch_size=1, compact_min_slots=16, join=join)
    r = runner.replay(["Numbers: 1 2\n"], [wide_trajectory(rng, blocks=4, width=4)])[0]
    st = runner.stats
    if join == "tree":  # a tree join keeps every thread in view: nothing dies, nothing is fed twice
        assert st.compactions == 0 and st.max_slots == st.tokens_fed == non_leaf_nodes(r.graph), st
    else:  # concat re-reads and drops threads 2..n; summary keeps only openers and results
        assert st.compactions > 0 and st.max_slots < st.tokens_fed - 100, st
    if join == "summary":
        assert st.tokens_fed == non_leaf_nodes(r.graph), st  # nothing fed twice
    assert worst_logprob_diff(model, [r], tok.pad_token_id) <= TOL


def test_sequential_mode_is_plain_decoding(tok, model):
    rng = random.Random(9)
    text = random_trajectory(rng, depth=2, max_width=3, p_block=0.9)
    runner = Runner(model, tok, max_new_tokens=4096, parallel=False)
    r = runner.replay(["Numbers: 1 2\n"], [text])[0]
    assert r.finish_reason == "eos" and r.forks == 0
    assert r.completion == text + tok.eos_token
    ref = linear_graph(encode(tok, "Numbers: 1 2\n"), linear_ids(tokenize_trajectory(text, tok)))
    assert torch.equal(ref.input_ids, r.graph.input_ids) and torch.equal(ref.position_ids, r.graph.position_ids)
    assert r.total_tokens == r.critical_path == len(r.completion_ids)
    assert worst_logprob_diff(model, [r], tok.pad_token_id) <= TOL


def test_bad_arguments(tok, model):
    runner = Runner(model, tok)
    with pytest.raises(ValueError):
        runner.generate([""])
    with pytest.raises(ValueError):
        runner.generate(["a"], top_p=0.0)
    with pytest.raises(ValueError, match="join mode 'merge' is not available"):
        Runner(model, tok, join="merge")
    with pytest.raises(ValueError):
        runner.replay(["a", "b"], ["x"])


# ---------------------------------------------------------------------- thread header "outline"


def restated(text: str) -> str:
    """``text`` with every thread restating its outline (the form thread_header=outline trains)."""
    from parallel_reason.format import Block, Thread, Trajectory, parse, render

    def walk(parts):
        out = []
        for p in parts:
            if isinstance(p, Block):
                threads = []
                for o, t in zip(p.outlines, p.threads):
                    body = walk(t.parts)
                    plan = o[len(t.header) :]
                    body = [plan + body[0]] if body and isinstance(body[0], str) else [plan, *body]
                    threads.append(Thread(header=t.header, parts=body))
                out.append(Block(outlines=list(p.outlines), threads=threads))
            else:
                out.append(p)
        return out

    return render(Trajectory(walk(parse(text).parts)))


def test_outline_header_replay_matches_trainer_graph(tok, model):
    """Header mode ``outline``: the runner opens thread i with outline i's own ids (never
    sampled, never trained), and what it records equals the trainer's graph of the text."""
    from parallel_reason.layout import THREAD_HEADERS, encode, tokenize_trajectory

    assert THREAD_HEADERS == ("index", "outline")
    rng = random.Random(11)
    texts = [restated(random_trajectory(rng, depth=2, max_width=3, p_block=0.9)) for _ in range(5)]
    prompts = [f"Numbers: {k} 4 5\nTarget: {k + 9}\n" for k in range(5)]
    runner = Runner(model, tok, max_new_tokens=4096, max_width=4, max_depth=3, batch_size=2, thread_header="outline")
    outs = runner.replay(prompts, texts)
    assert sum(r.forks for r in outs) >= 4
    for r, p, text in zip(outs, prompts, texts):
        assert r.finish_reason == "eos" and r.completion == text + tok.eos_token
        ref = graph_from_text(p, text, tok, thread_header="outline")
        for name in ("input_ids", "pred", "position_ids", "loss_mask", "seg_id", "seg_vis"):
            assert torch.equal(getattr(ref, name), getattr(r.graph, name)), name
        # the restated outlines are not trained: fewer trained tokens than with "i:" openers
        assert int(ref.loss_mask.sum()) < int(graph_from_text(p, text, tok).loss_mask.sum()) or r.forks == 0
    assert worst_logprob_diff(model, outs, tok.pad_token_id) <= TOL
    # the opener of thread i is separator + <Thread> + outline i's tokens
    from parallel_reason.format import Block, parse

    text = next(t for t in texts if any(isinstance(x, Block) for x in parse(t).parts))
    block = next(x for x in parse(text).parts if isinstance(x, Block))
    tblock = next(it for it in tokenize_trajectory(text, tok, thread_header="outline") if isinstance(it, TBlock))
    for o, t in zip(block.outlines, tblock.threads):
        assert t.opener == encode(tok, "\n") + [tag_token_ids(tok)["<Thread>"]] + encode(tok, o)


def test_outline_header_generation_copies_sampled_outlines(tok, markov):
    """Sampled forks open each thread with the outline's sampled ids, whatever the model wrote."""
    runner = Runner(markov, tok, max_new_tokens=200, max_width=4, max_depth=2, batch_size=4, thread_header="outline")
    outs = runner.generate([f"Numbers: {k} 2 3\nTarget: 9\n" for k in range(12)], n=2, temperature=1.0, seed=3)
    ids = tag_token_ids(tok)
    checked = 0
    for r in outs:
        for it in r.items:
            if not isinstance(it, TBlock) or not it.threads:
                continue
            head, outlines, k = it.head, [], 0
            while ids["<Outline>"] in head[k:]:  # the sampled ids of every outline, in order
                a = head.index(ids["<Outline>"], k) + 1
                b = head.index(ids["</Outline>"], a)
                outlines.append(head[a:b])
                k = b
            for i, t in enumerate(it.threads):
                assert t.opener == encode(tok, "\n") + [ids["<Thread>"]] + outlines[i]
                checked += 1
    assert checked >= 4
    assert worst_logprob_diff(markov, outs, tok.pad_token_id) <= TOL


def test_outline_header_rejects_threads_that_do_not_restate(tok):
    from parallel_reason.layout import tokenize_trajectory

    text = "a <Parallel>\n<Outlines><Outline>1: x y</Outline></Outlines>\n<Thread>1: z</Thread>\n</Parallel>\nend"
    with pytest.raises(ValueError, match="does not restate its outline"):
        tokenize_trajectory(text, tok, thread_header="outline")
    with pytest.raises(ValueError, match="thread_header"):
        tokenize_trajectory(text, tok, thread_header="title")


def test_runner_reads_the_header_mode_from_the_model_config(tok):
    m = make_model(tok, seed=2)
    assert Runner(m, tok).thread_header == "index"
    m.config.thread_header = "outline"
    assert Runner(m, tok).thread_header == "outline"
    assert Runner(m, tok, thread_header="index").thread_header == "index"
