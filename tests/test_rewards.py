"""Rewards (docs/design.md#rewards-metrics): correctness on Countdown, the acceleration formula
(hand computed, correct answers only, clipped), the format reward on valid, invalid
and truncated text, and the combination with separate components."""

from __future__ import annotations

import random

import pytest
from conftest import make_rollout, random_trajectory

from parallel_reason import rewards as R
from parallel_reason.format import Trajectory, make_block, render
from parallel_reason.layout import Run, TBlock, TThread, block_counts

NUMS, TARGET = [1, 2, 3, 4], 24
GOOD = "try 1*2*3*4\nAnswer: 1*2*3*4"
WRONG = "try 1+2+3+4\nAnswer: 1+2+3+4"


def FakeRollout(completion: str, items=(), **fields):
    """A real runner Rollout of ``completion`` (token tree ``items``; counts overridable)."""
    return make_rollout(items, completion=completion, **fields)


def kw(n, **extra):
    return dict(nums=[NUMS] * n, target=[TARGET] * n, **extra)


def words(piece) -> int:
    return len(piece.split()) if isinstance(piece, str) else len(piece)


# -- correctness ----------------------------------------------------------------


def test_correctness_countdown():
    f = R.Correctness("countdown")
    assert f.__name__ == "correctness"
    comps = [
        GOOD,
        WRONG,
        "no answer at all",
        "Answer: 1*2*3",
        "Answer: __import__('os')",
        "Answer: 4*3*2*1",
        "<Parallel>\n<Outlines><Outline>1: a</Outline></Outlines>\n<Thread>1: x</Thread>\n</Parallel>\nAnswer: (1+3)*(2+4)",
        "",
        "Answer: 1*2*3*4*",
        "Answer: " + "(" * 100 + "1",
    ]
    assert f([""] * len(comps), comps, **kw(len(comps))) == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_correctness_task_column_and_conversational():
    f = R.Correctness(task=None)
    conv = [[{"role": "assistant", "content": GOOD}]]
    assert f([""], conv, task=["countdown"], nums=[NUMS], target=[TARGET]) == [1.0]
    with pytest.raises(ValueError, match="no task"):
        f([""], [GOOD], nums=[NUMS], target=[TARGET])
    with pytest.raises(ValueError, match="needs the column"):
        R.Correctness("countdown")([""], [GOOD], nums=[NUMS])


def test_verifier_never_evals(monkeypatch):
    import builtins

    def boom(*a, **k):
        raise AssertionError("eval/exec called on model output")

    monkeypatch.setattr(builtins, "eval", boom)
    monkeypatch.setattr(builtins, "exec", boom)
    comps = [GOOD, "Answer: __import__('os').system('true')", "Answer: 1*2*3*4 # x"]
    assert R.Correctness()([""] * 3, comps, **kw(3)) == [1.0, 0.0, 0.0]


# -- acceleration ---------------------------------------------------------------


def test_acceleration_formula_hand_computed():
    assert R.acceleration_value(100, 60, factor=0.5, clip=0.5) == pytest.approx(0.5 * 0.4)
    assert R.acceleration_value(100, 60, factor=0.5, clip=0.2) == pytest.approx(0.5 * 0.2)  # clipped
    assert R.acceleration_value(100, 100, factor=1.0, clip=1.0) == 0.0  # sequential: no acceleration
    assert R.acceleration_value(0, 0, factor=1.0, clip=1.0) == 0.0


def test_acceleration_only_for_correct_answers_and_clip():
    f = R.Acceleration(factor=0.5, clip=0.3)
    assert f.__name__ == "acceleration"
    ros = [
        FakeRollout(GOOD, total_tokens=100, critical_path=80),  # eta 0.2 -> 0.1
        FakeRollout(GOOD, total_tokens=100, critical_path=40),  # eta 0.6 clipped to 0.3 -> 0.15
        FakeRollout(WRONG, total_tokens=100, critical_path=40),  # wrong: 0
        FakeRollout(GOOD, total_tokens=50, critical_path=50),
    ]  # sequential: 0
    out = f([""] * 4, [r.completion for r in ros], rollouts=ros, **kw(4))
    assert out == pytest.approx([0.1, 0.15, 0.0, 0.0])


def test_acceleration_counts_the_token_tree():
    # sampled: run 3 + head 4 + thread bodies 5 and 2 + run 1 = 15; cp = 3 + 4 + 5 + 1 = 13.
    # runner-written openers / closer (ids 90..) count nowhere.
    tree = [
        Run([1, 2, 3]),
        TBlock(
            head=[10, 11, 12, 13],
            threads=[
                TThread(opener=[90, 91], body=[Run([4, 5, 6, 7, 8])]),
                TThread(opener=[90, 92], body=[Run([9, 9])]),
            ],
            closer=[93, 94],
        ),
        Run([95, 96], train=False),
        Run([7]),
    ]
    ro = FakeRollout(GOOD, tree)
    st = R.rollout_stats(ro)
    assert (st["total_tokens"], st["critical_path"], st["blocks"], st["threads"]) == (15, 13, 1, 2)
    nested = [TBlock(head=[1], threads=[TThread(opener=[90], body=[tree[1]]), TThread(opener=[91], body=[Run([2])])])]
    assert block_counts(nested) == (2, 4) and block_counts([Run([1])]) == (0, 0)
    out = R.Acceleration(factor=1.0, clip=1.0)([""], [GOOD], rollouts=[ro], **kw(1))
    assert out == pytest.approx([1 - 13 / 15])


def test_acceleration_from_text_uses_metrics():
    block = make_block([("p", " x x x"), ("q", " y")])
    text = render(Trajectory(["a b\n", block, "\nAnswer: 1*2*3*4"]))
    from parallel_reason.metrics import critical_path, total_tokens

    t, c = total_tokens(text, words), critical_path(text, words)
    assert c < t
    f = R.Acceleration(factor=2.0, clip=1.0, count=words)
    assert f([""], [text], **kw(1)) == pytest.approx([2.0 * (1 - c / t)])


# -- format -----------------------------------------------------------------------

VALID_BLOCK = (
    "s\n<Parallel>\n<Outlines><Outline>1: p</Outline><Outline>2: q</Outline></Outlines>\n"
    "<Thread>1: a</Thread>\n<Thread>2: b</Thread>\n</Parallel>\nAnswer: 1"
)


def test_format_reward_valid_invalid_truncated():
    f = R.FormatReward(valid=1.0, invalid=-1.0, truncated=-0.5, no_block=0.25, max_width=2)
    assert f.__name__ == "format"
    texts = {
        "valid": VALID_BLOCK,
        "no_block": "plain text\nAnswer: 3",
        "unclosed": VALID_BLOCK.replace("\n</Parallel>", ""),
        "count_mismatch": VALID_BLOCK.replace("<Outline>2: q</Outline>", ""),
        "stray": "x </Thread> y",
        "numbering": VALID_BLOCK.replace("<Thread>2:", "<Thread>3:"),
        "too_wide": VALID_BLOCK.replace("</Outlines>", "<Outline>3: r</Outline></Outlines>").replace(
            "\n</Parallel>", "\n<Thread>3: c</Thread>\n</Parallel>"
        ),
        "garbage": "<Parallel><Parallel></Outline><Thread>",
        "empty": "",
    }
    expect = {
        "valid": 1.0,
        "no_block": 0.25,
        "unclosed": -1.0,
        "count_mismatch": -1.0,
        "stray": -1.0,
        "numbering": -1.0,
        "too_wide": -1.0,
        "garbage": -1.0,
        "empty": 0.25,
    }
    names = list(texts)
    out = f([""] * len(names), [texts[n] for n in names])
    assert dict(zip(names, out)) == expect
    # truncation (from the rollout) wins over everything
    ros = [
        FakeRollout(VALID_BLOCK, finish_reason="length"),
        FakeRollout(texts["unclosed"], finish_reason="unclosed_thread"),
        FakeRollout(VALID_BLOCK, finish_reason="max_new_tokens"),
        FakeRollout(VALID_BLOCK, finish_reason="eos"),
        FakeRollout(VALID_BLOCK, finish_reason="eos_in_thread"),
        FakeRollout(VALID_BLOCK, finish_reason="malformed"),
    ]
    # the runner's own verdict on a grammar violation makes the rollout invalid whatever its text
    assert f([""] * 6, [r.completion for r in ros], rollouts=ros) == [-0.5, -0.5, -0.5, 1.0, -1.0, -1.0]


def test_format_reward_never_raises_on_fuzz():
    rng = random.Random(3)
    f = R.FormatReward()
    texts = []
    for _ in range(200):
        t = random_trajectory(rng, depth=2, max_width=3)
        cut = rng.randint(0, len(t))
        texts += [t, t[:cut], t[cut:], t.replace("</Thread>", "", 1)]
    out = f([""] * len(texts), texts)
    assert set(out) <= {0.0, 1.0} and 1.0 in out and 0.0 in out


# -- building and combining -----------------------------------------------------------


def test_build_and_score_components():
    spec = R.RewardSpec(
        rewards=["correctness", "acceleration", "format"],
        reward_weights=[1.0, 2.0, 0.5],
        acceleration_factor=0.5,
        acceleration_clip=1.0,
    )
    funcs, weights = R.build_reward_funcs(spec)
    assert [R.reward_name(f) for f in funcs] == ["correctness", "acceleration", "format"]
    ros = [
        FakeRollout(GOOD, total_tokens=10, critical_path=5),
        FakeRollout(WRONG, total_tokens=10, critical_path=5),
        FakeRollout(GOOD, total_tokens=10, critical_path=5, finish_reason="length"),
    ]
    total, parts = R.score(
        funcs,
        weights,
        [""] * 3,
        [r.completion for r in ros],
        rollouts=ros,
        **kw(3),
        completion_ids=[[1]] * 3,
        trainer_state=None,
    )
    assert parts["correctness"] == [1.0, 0.0, 1.0]
    assert parts["acceleration"] == pytest.approx([0.25, 0.0, 0.25])
    assert parts["format"] == [1.0, 1.0, 0.0]
    assert total == pytest.approx([1 + 0.5 + 0.5, 0.5, 1 + 0.5])
    with pytest.raises(ValueError, match="unknown reward"):
        R.build_reward_funcs(R.RewardSpec(rewards=["nope"]))
    with pytest.raises(ValueError, match="reward_weights"):
        R.build_reward_funcs(R.RewardSpec(rewards=["correctness"], reward_weights=[1.0, 2.0]))
