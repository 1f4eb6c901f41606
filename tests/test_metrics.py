"""Metrics on hand-computed examples, nested blocks included."""

from __future__ import annotations

import pytest

from parallel_reason.format import parse
from parallel_reason.metrics import (
    aggregate,
    critical_path,
    parallel_ratio,
    speedup,
    speedup_vs,
    stats,
    stats_from_ids,
    total_tokens,
)


def words(piece) -> int:
    """Count whitespace-separated words (tags count 1 each in the metric itself)."""
    return len(piece.split()) if isinstance(piece, str) else len(piece)


FLAT = (
    "a b\n<Parallel>\n<Outlines><Outline>1: p</Outline><Outline>2: q</Outline></Outlines>\n"
    "<Thread>1: x x x</Thread>\n<Thread>2: y</Thread>\n</Parallel>\nz"
)


def test_flat_block_hand_computed():
    # sampled: "a b"(2) + <Parallel>(1) + <Outlines>(1) + outline 1: <Outline> "1: p"(2) </Outline> = 4,
    # outline 2 = 4, </Outlines>(1) -> block head 11; thread 1: "x x x"(3)+</Thread>(1)=4;
    # thread 2: "y"(1)+</Thread>=2; after: "z"(1). Headers "1:" and openers are runner-written.
    assert total_tokens(FLAT, words) == 2 + 11 + 4 + 2 + 1
    assert critical_path(FLAT, words) == 2 + 11 + 4 + 1
    assert speedup(FLAT, words) == pytest.approx(20 / 18)
    assert parallel_ratio(FLAT, words) == pytest.approx(6 / 20)


NESTED = (
    "s\n<Parallel>\n<Outlines><Outline>1:</Outline><Outline>2:</Outline></Outlines>\n"
    "<Thread>1: a\n<Parallel>\n<Outlines><Outline>1:</Outline><Outline>2:</Outline></Outlines>\n"
    "<Thread>1: b b b b</Thread>\n<Thread>2: c</Thread>\n</Parallel>\nd</Thread>\n"
    "<Thread>2: e e e e e e e e</Thread>\n</Parallel>\nf"
)


def test_nested_hand_computed():
    # block heads: <Parallel> <Outlines> 2x(<Outline> "1:" </Outline>) </Outlines> = 1+1+2*3+1 = 9
    inner_total = 9 + (4 + 1) + (1 + 1)
    inner_cp = 9 + (4 + 1)
    t1_total = 1 + inner_total + 1 + 1  # "a", inner, "d", </Thread>
    t1_cp = 1 + inner_cp + 1 + 1
    t2 = 8 + 1
    assert total_tokens(NESTED, words) == 1 + 9 + t1_total + t2 + 1
    assert critical_path(NESTED, words) == 1 + 9 + max(t1_cp, t2) + 1
    st = stats(NESTED, words)
    assert (st.blocks, st.threads, st.max_depth) == (2, 4, 2)


def test_sequential_text_speedup_one():
    assert speedup("just text here", words) == 1.0
    assert critical_path("just text here", words) == total_tokens("just text here", words) == 3


def test_from_ids_matches_text(tiny_tokenizer):
    from parallel_reason.layout import critical_path_count, linear_ids, sampled_count, tokenize_trajectory
    from parallel_reason.metrics import tokenizer_counter

    tok = tiny_tokenizer
    items = tokenize_trajectory(parse(NESTED), tok, eos=False)
    ids = linear_ids(items)
    st = stats_from_ids(ids, tok)
    assert st.total_tokens == sampled_count(items)
    assert st.critical_path == critical_path_count(items)
    # the text-level metric with the tokenizer's counter agrees too
    count = tokenizer_counter(tok)
    assert total_tokens(NESTED, count) == st.total_tokens
    assert critical_path(NESTED, count) == st.critical_path


def test_aggregate_both_speedups():
    rows = [{"total_tokens": 10, "critical_path": 5}, {"total_tokens": 30, "critical_path": 10}]
    agg = aggregate(rows, baseline_total=[20, 20])
    assert agg["speedup_mean_of_ratios"] == pytest.approx((2 + 3) / 2)
    assert agg["speedup_ratio_of_means"] == pytest.approx(40 / 15)
    assert agg["speedup_vs_baseline_mean_of_ratios"] == pytest.approx((4 + 2) / 2)
    assert agg["speedup_vs_baseline_ratio_of_means"] == pytest.approx(40 / 15)
    assert speedup_vs(20, 5) == 4.0
    with pytest.raises(ValueError):
        aggregate(rows, baseline_total=[1])
