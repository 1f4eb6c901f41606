"""Grammar: round trip, error cases with offsets, lenient parsing of anything."""

from __future__ import annotations

import random
import time

import pytest
from conftest import random_trajectory

from parallel_reason.format import (
    CONTROL_TAGS,
    MAX_NESTING,
    Block,
    FormatError,
    Limits,
    Thread,
    Trajectory,
    make_block,
    parse,
    parse_ids,
    parse_lenient,
    render,
    strip_tags,
    validate,
)

GOOD = (
    "Plan first.\n<Parallel>\n<Outlines><Outline>1: left</Outline><Outline>2: right</Outline></Outlines>\n"
    "<Thread>1: go left <Parallel>\n<Outlines><Outline>1: deep</Outline></Outlines>\n<Thread>1: deeper</Thread>\n"
    "</Parallel> back</Thread>\n<Thread>2: go right</Thread>\n</Parallel>\nAnswer: 3"
)


def test_parse_structure():
    t = parse(GOOD)
    blocks = t.blocks()
    assert [(b.width, d) for b, d in blocks] == [(2, 1), (1, 2)]
    top = blocks[0][0]
    assert top.outlines == ["1: left", "2: right"]
    assert [th.header for th in top.threads] == ["1:", "2:"]
    assert top.threads[1].parts == [" go right"]
    assert t.parts[0] == "Plan first.\n" and t.parts[-1] == "\nAnswer: 3"
    assert t.depth == 2


def test_round_trip_random_nested():
    rng = random.Random(3)
    for _ in range(300):
        text = random_trajectory(rng, depth=3, max_width=4)
        assert render(parse(text)) == text


def test_round_trip_keeps_unusual_whitespace():
    text = "<Parallel>  \n<Outlines>\n<Outline>1: a</Outline>\n <Outline>2: b</Outline>\n</Outlines>\n\n<Thread>1: x</Thread> <Thread>2: y</Thread>\n\n</Parallel>"
    assert render(parse(text)) == text


def test_make_block_renders_canonical():
    b = make_block([("try a", " body a"), ("try b", [" pre", make_block([("z", " zz")]), " post"])])
    text = render(Trajectory(["S", b, "\nE"]))
    assert text == (
        "S<Parallel>\n<Outlines><Outline>1: try a</Outline><Outline>2: try b</Outline></Outlines>\n"
        "<Thread>1: body a</Thread>\n<Thread>2: pre<Parallel>\n<Outlines><Outline>1: z</Outline></Outlines>\n"
        "<Thread>1: zz</Thread>\n</Parallel> post</Thread>\n</Parallel>\nE"
    )
    assert render(parse(text)) == text


@pytest.mark.parametrize(
    "mutate,code,where",
    [
        (lambda s: s.replace("</Parallel>\nAnswer", "\nAnswer"), "unclosed", "Parallel"),
        (lambda s: s.replace(" back</Thread>", " back"), "unexpected_tag", "<Thread> inside a thread"),
        (lambda s: s.replace("<Outline>2: right</Outline>", ""), "count_mismatch", "1 outlines but 2 threads"),
        (lambda s: s.replace("<Thread>2: go right", "<Thread>3: go right"), "numbering", "'2:'"),
        (lambda s: s.replace("<Thread>2: go right", "<Thread> go right"), "numbering", "no header"),
        (lambda s: s.replace("<Outline>2: right", "<Outline>two: right"), "numbering", "outline 2"),
        (lambda s: s.replace("</Thread>\n<Thread>2", "</Thread>\noops<Thread>2"), "text_between", "oops"),
        (lambda s: s + "</Thread>", "unexpected_tag", "</Thread>"),
        (lambda s: s.replace("<Outlines><Outline>1: left", "<Outline>1: left"), "missing_outlines", "<Outlines>"),
    ],
)
def test_errors_name_problem_and_offset(mutate, code, where):
    bad = mutate(GOOD)
    with pytest.raises(FormatError) as ei:
        parse(bad)
    codes = [p.code for p in ei.value.problems]
    assert code in codes, codes
    prob = next(p for p in ei.value.problems if p.code == code)
    assert where in prob.message
    assert 0 <= prob.offset <= len(bad)
    assert f"offset {prob.offset}" in str(prob)


def test_result_marks_the_rest_of_a_thread():
    text = GOOD.replace(" back</Thread>", " back => <Result>found 3</Thread>")
    assert text != GOOD
    traj = parse(text)
    assert render(traj) == text
    results = [t.result for b, _ in traj.blocks() for t in b.threads]
    assert "found 3" in results and None in results  # a thread without one gives none
    assert strip_tags("a <Result>b") == "a b"
    twice = text.replace("=> <Result>found 3", "=> <Result>found <Result>3")
    (p,) = validate(twice)
    assert p.code == "result_twice" and twice[p.offset :].startswith("<Result>3")
    after = GOOD.replace(
        "<Thread>1: go left",
        "<Thread>1: go left <Result>x<Parallel>\n<Outlines><Outline>1: a</Outline></Outlines>\n<Thread>1: b</Thread>\n</Parallel>",
    )
    assert {p.code for p in validate(after)} == {"block_after_result"}
    assert [p.code for p in validate("text <Result>x")] == ["unexpected_tag"]  # outside any thread


def test_error_offsets_point_at_the_defect():
    bad = GOOD + "</Thread>"
    (p,) = [p for p in validate(bad) if p.code == "unexpected_tag"]
    assert bad[p.offset :].startswith("</Thread>")
    bad2 = GOOD.replace("<Thread>2: go right", "<Thread>3: go right")
    (p2,) = validate(bad2)
    assert bad2[p2.offset :].startswith("<Thread>3:")


def test_limits():
    assert validate(GOOD, Limits(max_depth=2, max_width=2)) == []
    codes = {p.code for p in validate(GOOD, Limits(max_depth=1))}
    assert codes == {"depth"}
    codes = {p.code for p in validate(GOOD, Limits(max_width=1))}
    assert codes == {"width"}


def test_lenient_truncated_reports_missing():
    for cut in range(len(GOOD)):
        text = GOOD[:cut]
        traj, problems = parse_lenient(text)
        assert render(traj) == text
        if text.count("<Parallel>") > text.count("</Parallel>"):
            assert any(p.code in ("unclosed", "count_mismatch") for p in problems), text
    traj, problems = parse_lenient(GOOD[: GOOD.index("go right")])
    assert [p.message for p in problems if p.code == "unclosed"] == [
        f"<Thread> at offset {GOOD.index('<Thread>2:')} is not closed",
        "<Parallel> at offset 12 is not closed: missing </Parallel>",
    ]


def test_lenient_fuzz_never_raises_and_keeps_every_byte():
    rng = random.Random(0)
    alphabet = list(CONTROL_TAGS) + ["a", " ", "1:", "2:", "\n", "<", ">", "/", "Thread", "x"]
    for _ in range(5000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        traj, problems = parse_lenient(s, Limits(max_depth=2, max_width=3))
        assert render(traj) == s
        assert all(0 <= p.offset <= len(s) for p in problems)
    # random byte soup and truncations of valid text
    for _ in range(500):
        t = random_trajectory(rng, depth=3)
        cut = t[: rng.randint(0, len(t))]
        assert render(parse_lenient(cut)[0]) == cut
        soup = "".join(chr(rng.randint(0, 0x2FF)) for _ in range(50))
        assert render(parse_lenient(soup)[0]) == soup


def test_valid_text_has_no_problems_and_strip_tags():
    assert validate(GOOD) == []
    assert "<" not in strip_tags(GOOD)
    assert validate("no blocks at all") == []
    assert isinstance(parse(GOOD).parts[1], Block)
    assert isinstance(parse(GOOD).parts[1].threads[0], Thread)


# ---------------------------------------------------------------------------
# hostile input: deep nesting and floods of stray tags


def _nested(depth: int) -> str:
    """A well-formed trajectory whose blocks nest ``depth`` levels."""
    open_ = "<Parallel>\n<Outlines><Outline>1: a</Outline></Outlines>\n<Thread>1:"
    return "S" + open_ * depth + " x" + "</Thread>\n</Parallel>" * depth + "\nE"


def test_deep_nesting_is_a_format_error_not_a_recursion_error():
    for text in ("<Parallel><Thread>" * 332, "<Parallel><Thread>" * 20000, _nested(MAX_NESTING + 1), _nested(3000)):
        traj, problems = parse_lenient(text)  # never raises
        assert render(traj) == text and traj.depth <= MAX_NESTING
        with pytest.raises(FormatError) as ei:
            parse(text)
        assert "too_deep" in [p.code for p in ei.value.problems]
        assert [p.code for p in validate(text)] == [p.code for p in problems]
    assert validate(_nested(MAX_NESTING)) == []  # the limit itself is fine
    assert render(parse(_nested(MAX_NESTING))) == _nested(MAX_NESTING)
    (p,) = [p for p in validate(_nested(MAX_NESTING + 1)) if p.code == "too_deep"]
    assert _nested(MAX_NESTING + 1)[p.offset :].startswith("<Parallel>") and str(MAX_NESTING) in p.message


@pytest.mark.parametrize(
    "flood",
    [
        "</Thread>" * 100_000,  # outside any block
        "<Parallel><Outlines></Outlines>" + "</Outline>x" * 100_000 + "</Parallel>",  # between threads
        "<Parallel><Outlines>" + "<Outlines>z" * 100_000,  # inside <Outlines>
        "<Parallel><Outlines><Outline>1: " + "<Outlines>" * 100_000,  # inside an outline
        "<Parallel><Thread>" * 100 + "<Thread>" * 100_000,  # inside the deepest thread
    ],
)
def test_stray_tags_parse_in_linear_time(flood):
    t0 = time.perf_counter()
    traj, problems = parse_lenient(flood)
    elapsed = time.perf_counter() - t0
    assert render(traj) == flood
    assert sum(p.code == "unexpected_tag" for p in problems) >= 100_000
    assert elapsed < 5.0, f"{elapsed:.1f}s for {len(flood)} characters"  # ~0.3 s; the quadratic parser took minutes


def test_stray_tag_ids_parse_in_linear_time():
    tag_ids = {1000 + k: tag for k, tag in enumerate(CONTROL_TAGS)}
    close_thread = next(k for k, v in tag_ids.items() if v == "</Thread>")
    ids = [5, 6] + [close_thread, 7] * 50_000
    t0 = time.perf_counter()
    traj, problems = parse_ids(ids, tag_ids)
    assert time.perf_counter() - t0 < 5.0
    assert len(problems) == 50_000 and traj.parts == [tuple(ids)]
