"""The math task: boxed / pattern extraction, reference answers, the plain-number
fast path and math-verify equivalence (LaTeX, sets, intervals), threads."""

from __future__ import annotations

import threading
from fractions import Fraction

import pytest

pytest.importorskip("math_verify")

from parallel_reason.tasks import TASKS, get_task  # noqa: E402
from parallel_reason.tasks import math as task  # noqa: E402


def test_registered():
    assert "math" in TASKS and "countdown" in TASKS
    assert get_task("math") is task
    assert get_task("countdown").NAME == "countdown"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{\\frac{\\sqrt{3}}{2}} end", "\\frac{\\sqrt{3}}{2}"),
        ("first \\boxed{1} then \\boxed{2} finally \\boxed{\\{3, 4\\}}", "\\{3, 4\\}"),  # last box, escaped braces
        ("$\\boxed{ 42 }$", "42"),
        ("\\fbox{7}", "7"),
        ("\\boxed 5 is it", "5"),
        ("the answer is 42", None),  # no box
        ("\\boxed{}", None),  # empty box
        ("\\boxed{1} and a truncated \\boxed{\\frac{1}{", "1"),  # unclosed box skipped
        (
            "<Parallel>\n<Outlines><Outline>1: a</Outline></Outlines>\n<Thread>1: \\boxed{3}</Thread>\n</Parallel>\nso \\boxed{4}",
            "4",
        ),
    ],
)
def test_extract_boxed(text, expected):
    assert task.extract_answer(text) == expected


def test_extract_pattern_gsm8k():
    sol = "Janet has 3 ducks.\n3 * 2 = 6\n#### 1,234\n"
    assert task.extract_answer(sol, pattern="gsm8k") == "1,234"
    assert task.extract_answer("#### 1\nmore\n#### 2", pattern="gsm8k") == "2"  # last match
    assert task.extract_answer("no marker", pattern="gsm8k") is None
    assert task.extract_answer("Answer: 17", pattern=r"Answer:\s*(\d+)") == "17"  # custom regex, group 1
    assert task.extract_answer("The final answer is 9.", pattern="answer_is") == "9"


def test_reference_answer():
    assert task.reference_answer("She pays 5*2=10.\n#### 10") == "10"  # GSM8K
    assert task.reference_answer("We get $x=\\boxed{\\dfrac{1}{2}}$.") == "\\dfrac{1}{2}"  # MATH solution
    assert task.reference_answer(" 3/4 ") == "3/4"
    assert task.reference_answer(72) == "72"


@pytest.mark.parametrize(
    "text,value",
    [
        ("1,234", Fraction(1234)),
        ("$1,234.50", Fraction(246900, 200)),
        ("\\$18", Fraction(18)),
        ("18 dollars", Fraction(18)),
        ("5 \\text{ cm}", Fraction(5)),
        ("12 km/h", Fraction(12)),
        ("42.", Fraction(42)),
        ("-3", Fraction(-3)),
        ("2.50", Fraction(5, 2)),
        ("30\\%", Fraction(30)),
        ("90^\\circ", Fraction(90)),
        ("5x", None),  # a variable is not a unit
        ("1/2", None),
        ("1,2", None),  # not a thousands separator: left to math-verify (a set/tuple)
        ("\\frac{1}{2}", None),
        ("x = 3", None),
    ],
)
def test_plain_number(text, value):
    assert task.plain_number(text) == value


@pytest.mark.parametrize(
    "answer,gold",
    [
        ("\\frac{1}{2}", "\\dfrac{1}{2}"),  # \frac vs \dfrac
        ("\\dfrac12", "0.5"),
        ("1,234", "1234"),  # commas in numbers
        ("\\$1,234", "#### 1234"),
        ("18 \\text{ dollars}", "18"),  # units
        ("5 cm", "5"),
        ("42.", "42"),  # trailing period
        ("2.50", "2.5"),
        ("\\{1, 2\\}", "\\{2,1\\}"),  # sets
        ("(0, 1]", "(0,1]"),  # intervals
        ("[1, \\infty)", "[1,\\infty)"),
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
        ("x = 3", "3"),
        ("1 + x^2", "x^2+1"),
    ],
)
def test_equivalent(answer, gold):
    ok, how = task.is_equivalent(answer, task.reference_answer(gold))
    assert ok, how


@pytest.mark.parametrize(
    "answer,gold",
    [
        ("[0, 1]", "(0,1]"),  # interval ends matter
        ("\\{1, 3\\}", "\\{1,2\\}"),
        ("5x", "5"),
        ("1,234", "1.234"),
        ("\\frac{1}{3}", "0.5"),
        ("1235", "1,234"),
        (None, "1"),
        ("", "1"),
        ("x" * 5000, "1"),
    ],
)
def test_not_equivalent(answer, gold):
    assert not task.is_equivalent(answer, gold)[0]


def test_verify_completions():
    comp = "Reason: 1/2 + 1/4.\nSo the answer is \\boxed{\\frac{3}{4}}."
    v = task.verify(comp, "0.75")
    assert v.ok and v.reason == "correct" and v.value == "\\frac{3}{4}"
    assert not task.verify("Reason...\nthe answer is 3/4", "0.75")  # no box in a completion
    assert task.verify("Reason...\nthe answer is 3/4", "0.75").reason == "no \\boxed{} answer"
    assert task.verify("3/4", "0.75")  # a bare answer is its own answer
    assert task.verify("work\n#### 1,234", "1234", pattern="gsm8k")
    assert not task.verify(None, "1") and not task.verify(12, "1")
    # multiple boxes: only the last counts
    assert task.verify("\\boxed{1} no wait \\boxed{2}", "2")
    assert not task.verify("\\boxed{2} no wait \\boxed{1}", "2")
    assert task.reward("so \\boxed{10}", "5*2=10\n#### 10") == 1.0
    assert task.reward("so 10", "10") == 0.0


def test_never_evals_and_never_raises(monkeypatch):
    monkeypatch.setattr(task, "TIMEOUT_SECONDS", 1)  # main thread: math-verify's own timeouts
    for junk in (
        "\\boxed{9^{9^{9^{9}}}}",
        "\\boxed{__import__('os').system('echo hi')}",
        "\\boxed{{{{",
        "\\boxed{1/0}",
        "\\boxed{\\frac{1}{0}}",
        "}}}\\boxed",
        "\\boxed{" + "(" * 40 + "}",
    ):
        v = task.verify(junk, "1")
        assert not v.ok


def test_verify_in_a_thread(monkeypatch):
    """math-verify's signal-based timeouts only work in the main thread: in other
    threads the comparison runs in the helper process, where they work, so an
    answer that would make sympy run for ever cannot hang the thread."""
    monkeypatch.setattr(task, "TIMEOUT_SECONDS", 1)
    out = []

    def work():
        out.append(task.verify("\\boxed{\\dfrac{2}{4}}", "\\frac12").ok)
        out.append(task.verify("\\boxed{(0,1]}", "(0,1]").ok)
        out.append(task.verify("\\boxed{9^{9^{9^{9}}}}", "1").ok)  # bounded by the helper's timeout
        out.append(task.verify("\\boxed{1,234}", "1234").ok)  # fast path: no math-verify at all

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert not t.is_alive() and out == [True, True, False, True]

    monkeypatch.setattr(task, "THREAD_GUARD", "none")  # in the thread itself, timeouts off
    out.clear()
    t = threading.Thread(target=lambda: out.append(task.verify("\\boxed{\\{1,2\\}}", "\\{2,1\\}").ok))
    t.start()
    t.join(30)
    assert out == [True]


def test_prompt():
    p = task.prompt("What is $\\{1\\}$?")
    assert "What is $\\{1\\}$?" in p and "\\boxed{" in p
    assert task.prompt("Q", template="Q: {question}\nA (boxed):") == "Q: Q\nA (boxed):"
    with pytest.raises(ValueError):
        task.prompt("Q", template="no slot")
