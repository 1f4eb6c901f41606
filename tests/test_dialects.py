"""Dialect converters (parallel_reason.dialects): structure and text preserved,
strictly valid output, malformed inputs named with dialect and offset; the
convert CLI."""

from __future__ import annotations

import json
import re

import pytest

from parallel_reason import format as fmt
from parallel_reason.dialects import DialectError, convert, dialect_name, first_sentence
from parallel_reason.format import Limits, parse

# ---------------------------------------------------------------------------
# helpers


def structure(text: str) -> list[tuple[int, int]]:
    """(depth, width) of every block, in document order."""
    return [(d, b.width) for b, d in parse(text).blocks()]


def words(text: str, tag_re: str | None = None) -> list[str]:
    if tag_re:
        text = re.sub(tag_re, " ", text)
    return re.findall(r"\w+", text)


def in_order(needle: list[str], hay: list[str]) -> bool:
    """``needle`` is a subsequence of ``hay``."""
    it = iter(hay)
    return all(any(w == h for h in it) for w in needle)


def out_words(text: str) -> list[str]:
    return words(text, r"</?(?:Parallel|Outlines|Outline|Thread)>")


# ---------------------------------------------------------------------------
# samples

MULTIVERSE = """We need |AB| for A=(1,2), B=(7,-7).
<Parallel>
<Goal>
Split the distance formula into its two squares.
<Outline>1: Compute (dx)^2 from the x-coordinates.</Outline>
<Outline>2: Compute (dy)^2 from the y-coordinates.</Outline>
</Goal>
<Path>
1: dx = 7 - 1 = 6, so (dx)^2 = 36.
</Path>
<Path>
2: dy = -7 - 2 = -9, so (dy)^2 = 81.
</Path>
<Conclusion>
Adding gives 36 + 81 = 117.
</Conclusion>
</Parallel>
So |AB| = sqrt(117) and the answer is \\boxed{\\sqrt{117}}."""

MULTIVERSE_NESTED = """Count the cases.
<Parallel>
<Goal>
<Outline>Case n even.</Outline>
<Outline>Case n odd.</Outline>
</Goal>
<Path>
If n is even, split again.
<Parallel>
<Goal>
<Outline>n = 0 mod 4</Outline>
<Outline>n = 2 mod 4</Outline>
<Outline>n large</Outline>
</Goal>
<Path>Then 4 solutions.</Path>
<Path>Then 2 solutions.</Path>
<Path>None beyond 100.</Path>
<Conclusion>Even total: 6.</Conclusion>
</Parallel>
Done with even.
</Path>
<Path>
If n is odd there is 1 solution.
</Path>
<Conclusion>
Total 7.
</Conclusion>
</Parallel>
<Parallel><Goal><Outline>check a</Outline><Outline>check b</Outline></Goal><Path>a ok</Path><Path>b ok</Path><Conclusion>both ok</Conclusion></Parallel>
The answer is 7."""

PARALLEL_R1 = """Let me solve x^2 - 5x + 6 = 0.
<Parallel>
<Path>Factor it. x^2 - 5x + 6 = (x - 2)(x - 3), so x = 2 or x = 3.</Path>
<Path>Use the quadratic formula: x = (5 +- sqrt(25 - 24)) / 2, giving 3 and 2.</Path>
<Path>Check by Vieta! The roots sum to 5 and multiply to 6, so they are 2 and 3.</Path>
<Summary>
All three methods give the roots 2 and 3.
</Summary>
</Parallel>
The larger root is \\boxed{3}."""

PARALLEL_R1_NESTED_OUTSIDE_SUMMARY = """Start.
<Parallel>
<Path><Parallel><Path>Inner one works.</Path><Path>Inner two fails.</Path><Summary>Inner done.</Summary></Parallel> Outer path one ends.</Path>
<Path>Outer path two is short.</Path>
</Parallel>
<Summary>Both outer paths agree.</Summary>
End."""

THREADWEAVER = """<think>
We will use d = sqrt((dx)^2 + (dy)^2).
<Parallel>
<Outlines>
<Outline>1: Compute (dx)^2.</Outline>
<Outline>2: Compute (dy)^2.</Outline>
</Outlines>
<Thread> 1: dx = 6, (dx)^2 = 36.</Thread>
<Thread>2: dy = -9, (dy)^2 = 81.
<Parallel>
<Outlines><Outline>1: double-check 81</Outline><Outline>2: sign check</Outline></Outlines>
<Thread>1: 9*9 = 81.</Thread>
<Thread>2: (-9)^2 is positive.</Thread>
</Parallel>
</Thread>
</Parallel>
Sum the results: 36 + 81 = 117.
</think>
The distance is \\boxed{\\sqrt{117}}."""


def _apr_sample() -> tuple[dict, list[str]]:
    """A trace_dict with two spawns in the root and one nested spawn in a child,
    and the words of the input in document order (markers excluded)."""
    head = (
        "Moving to Node #0\nCurrent State: 24:[2, 3, 4, 6], Operations: []\n"
        "Exploring Operation: 2*3=6, Resulting Numbers: [4, 6, 6]\n"
        "Generated Node #0,0: 24:[4, 6, 6] Operation: 2*3=6\n"
        "Exploring Operation: 6-4=2, Resulting Numbers: [2, 3, 6]\n"
        "Generated Node #0,1: 24:[2, 3, 6] Operation: 6-4=2\n"
    )
    spawn0 = (
        "<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,0\n"
        "<Start Sub Search 1 at level 1> Moving to Node #0,1\n<End Calling Sub Searches>\n"
    )
    join0 = (
        "<Sub Searches>\n<No Solution in Sub Search 0 at level 1 at Node #0,0>\n"
        "<No Solution in Sub Search 1 at level 1 at Node #0,1>\n<End Sub Searches>\n"
    )
    mid = (
        "Moving to Node #0,2\nCurrent State: 24:[3, 4, 12], Operations: ['2*6=12']\n"
        "Generated Node #0,2,0: 24:[12, 12] Operation: 3*4=12\n"
        "Generated Node #0,2,1: 24:[7, 12] Operation: 3+4=7\n"
    )
    spawn1 = (
        "<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,2,0\n"
        "<Start Sub Search 1 at level 1> Moving to Node #0,2,1\n<End Calling Sub Searches>\n"
    )
    join1 = (
        "<Sub Searches>\n<Goal Reached in Sub Search 0 at level 1 at Node #0,2,0>\n"
        "Moving to Node #0,2,0\nExploring Operation: 12+12=24, Resulting Numbers: [24]\n24,24 equal: Goal Reached\n"
        "<No Solution in Sub Search 1 at level 1 at Node #0,2,1>\n<End Sub Searches>\n"
    )
    tail = "24,24 equal: Goal Reached\n"
    c00_head = "Moving to Node #0,0\nCurrent State: 24:[4, 6, 6], Operations: ['2*3=6']\n"
    c00_spawn = (
        "<Calling Sub Searches>\n<Start Sub Search 0 at level 2> Moving to Node #0,0,0\n"
        "<Start Sub Search 1 at level 2> Moving to Node #0,0,1\n<End Calling Sub Searches>\n"
    )
    c00_join = (
        "<Sub Searches>\n<No Solution in Sub Search 0 at level 2 at Node #0,0,0>\n"
        "<No Solution in Sub Search 1 at level 2 at Node #0,0,1>\n<End Sub Searches>\nNo solution found.\n"
    )
    g000 = "Moving to Node #0,0,0\nCurrent State: 24:[6, 10], Operations: ['2*3=6', '4+6=10']\n10+6=16 unequal: No Solution\n"
    g001 = "Moving to Node #0,0,1\nCurrent State: 24:[4, 36], Operations: ['2*3=6', '6*6=36']\n36-4=32 unequal: No Solution\n"
    c01 = "Moving to Node #0,1\nCurrent State: 24:[2, 3, 6], Operations: ['6-4=2']\nNo solution found.\n"
    c20 = "Moving to Node #0,2,0\nCurrent State: 24:[12, 12], Operations: ['2*6=12', '3*4=12']\n12+12=24 equal: Goal Reached\n"
    c21 = "Moving to Node #0,2,1\nCurrent State: 24:[7, 12], Operations: ['2*6=12', '3+4=7']\n12+7=19 unequal: No Solution\n"
    leaf = lambda s: {"main_calls": [s], "sub_calls": []}  # noqa: E731
    td = {
        "main_calls": [head + spawn0, head + join0 + mid + spawn1, head + join0 + mid + join1 + tail],
        "sub_calls": [
            [
                {"main_calls": [c00_head + c00_spawn, c00_head + c00_join], "sub_calls": [[leaf(g000), leaf(g001)]]},
                leaf(c01),
            ],
            [leaf(c20), leaf(c21)],
        ],
    }
    order = head + c00_head + g000 + g001 + c00_join + c01 + join0 + mid + c20 + c21 + join1 + tail
    return td, order


MV_TAGS = r"</?(?:Parallel|Goal|Outline|Path|Conclusion)>"
PR1_TAGS = r"</?(?:Parallel|Path|Summary)>"
TW_TAGS = r"</?(?:Parallel|Outlines|Outline|Thread|think)>"
APR_MARKERS = r"<(?:/?[A-Za-z][^<>\n]*)>"


# ---------------------------------------------------------------------------
# conversions


def test_multiverse_structure_and_text():
    out = convert(MULTIVERSE, "multiverse")
    assert structure(out) == [(1, 2)]
    assert in_order(words(MULTIVERSE, MV_TAGS), out_words(out))
    b = parse(out).blocks()[0][0]
    assert b.outlines == ["1: Compute (dx)^2 from the x-coordinates.", "2: Compute (dy)^2 from the y-coordinates."]
    assert [t.header for t in b.threads] == ["1:", "2:"]
    assert fmt.render(b.threads[0].parts) == " dx = 7 - 1 = 6, so (dx)^2 = 36."
    # goal text before the block, conclusion right after it
    before, after = out.split("<Parallel>")[0], out.split("</Parallel>")[1]
    assert "Split the distance formula" in before
    assert after.lstrip().startswith("Adding gives 36 + 81 = 117.")


def test_multiverse_nested_and_unnumbered():
    out = convert(MULTIVERSE_NESTED, "multiverse")
    assert structure(out) == [(1, 2), (2, 3), (1, 2)]
    assert in_order(words(MULTIVERSE_NESTED, MV_TAGS), out_words(out))
    outer = parse(out).blocks()[0][0]
    assert outer.outlines == ["1: Case n even.", "2: Case n odd."]  # numbering added
    inner_text = fmt.render(outer.threads[0].parts)
    assert "Even total: 6." in inner_text.split("</Parallel>")[1]  # the inner conclusion stays in the thread
    with pytest.raises(DialectError, match="depth"):
        convert(MULTIVERSE_NESTED, "multiverse", Limits(max_depth=1))


def test_parallel_r1_synthesised_outlines():
    out = convert(PARALLEL_R1, "parallel_r1")
    assert structure(out) == [(1, 3)]
    assert in_order(words(PARALLEL_R1, PR1_TAGS), out_words(out))
    b = parse(out).blocks()[0][0]
    # outlines come from the first sentence of each path
    assert b.outlines == [
        "1: Factor it.",
        "2: Use the quadratic formula: x = (5 +- sqrt(25 - 24)) / 2, giving 3 and 2.",
        "3: Check by Vieta!",
    ]
    assert out.split("</Parallel>")[1].startswith("\nAll three methods give the roots 2 and 3.")


def test_parallel_r1_nested_and_summary_after_block():
    out = convert(PARALLEL_R1_NESTED_OUTSIDE_SUMMARY, "parallel_r1")
    assert structure(out) == [(1, 2), (2, 2)]
    assert in_order(words(PARALLEL_R1_NESTED_OUTSIDE_SUMMARY, PR1_TAGS), out_words(out))
    outer = parse(out).blocks()[0][0]
    assert outer.outlines[0] == "1: Inner one works."  # a path opening with a block: its first outline
    assert "Both outer paths agree." in out.split("</Parallel>")[-1]


def test_first_sentence_is_bounded():
    s = first_sentence("word " * 100)
    assert len(s) <= 164 and s.endswith("...")
    assert first_sentence("A. B.") == "A."
    assert first_sentence("Compute 3.5 times 2. Then add.") == "Compute 3.5 times 2."


def test_threadweaver():
    out = convert(THREADWEAVER, "threadweaver")
    assert structure(out) == [(1, 2), (2, 2)]
    assert in_order(words(THREADWEAVER, TW_TAGS), out_words(out))
    assert "<think>" not in out and "</think>" not in out
    assert "<Thread>1: dx = 6" in out  # "<Thread> 1:" normalised
    assert out.startswith("We will use")


def test_canonical_roundtrip_and_threadweaver_identity():
    canon = convert(MULTIVERSE, "multiverse")
    assert convert(canon, "canonical") == canon
    assert convert(canon, "threadweaver") == canon  # our grammar is ThreadWeaver's without <think>


def test_apr_structure_and_text():
    td, order = _apr_sample()
    out = convert(td, "apr")
    assert structure(out) == [(1, 2), (2, 2), (1, 2)]
    assert in_order(words(order, APR_MARKERS), out_words(out))
    assert "<Calling Sub Searches>" not in out and "<Start Sub Search" not in out
    blocks = parse(out).blocks()
    assert blocks[0][0].outlines == ["1: Moving to Node #0,0", "2: Moving to Node #0,1"]
    assert blocks[1][0].outlines == ["1: Moving to Node #0,0,0", "2: Moving to Node #0,0,1"]
    # the join message follows the block as sequential text
    assert out.split("</Parallel>\n")[2].startswith("<Sub Searches>\n<No Solution in Sub Search 0")
    # same result from the JSON text, and from the parsed JSON under another spelling of the name
    assert convert(json.dumps(td), "apr") == out
    assert convert(td, "APR") == out


def test_apr_results_mark_each_sub_search_outcome(tmp_path):
    """--results: every thread's last line (an APR sub-search's outcome) becomes its
    result; nothing else changes, and the CLI writes the same."""
    from data_gen.convert import main

    td, _ = _apr_sample()
    plain = convert(td, "apr")
    marked = convert(td, "apr", results=True)
    assert marked.replace("<Result>", "") == plain
    results = [(d, t.result) for b, d in parse(marked).blocks() for t in b.threads]
    assert results == [
        (1, "No solution found."),  # a sub-search that spawned: its own last line, after its block
        (1, "No solution found."),
        (2, "10+6=16 unequal: No Solution"),
        (2, "36-4=32 unequal: No Solution"),
        (1, "12+12=24 equal: Goal Reached"),
        (1, "12+7=19 unequal: No Solution"),
    ]
    assert convert(marked, "canonical", results=True) == marked  # a thread keeps its result
    src = tmp_path / "apr.jsonl"
    src.write_text(json.dumps({"trace_dict": td}) + "\n")
    assert main(["--from", "apr", "--input", str(src), "--out", str(tmp_path / "o.jsonl"), "--results"]) == 0
    assert json.loads((tmp_path / "o.jsonl").read_text())["completion"] == marked


def test_apr_plain_string_is_one_call():
    assert convert("Moving to Node #0\nNo solution found.\n", "apr") == "Moving to Node #0\nNo solution found.\n"


def test_dialect_names():
    assert convert(PARALLEL_R1, "Parallel-R1") == convert(PARALLEL_R1, "parallel_r1")
    assert dialect_name("TW") == "threadweaver"
    with pytest.raises(ValueError, match="unknown dialect"):
        convert("x", "klingon")


# ---------------------------------------------------------------------------
# malformed inputs


@pytest.mark.parametrize(
    "dialect,text,offset,problem",
    [
        (
            "multiverse",
            "a <Parallel><Goal><Outline>x</Outline></Goal><Path>p",
            45,
            "<Path> opened at offset 45 is never closed",
        ),
        ("multiverse", "a </Path>", 2, "without a matching <Path>"),
        ("multiverse", "<Parallel><Goal><Outline>x</Outline></Path>", 36, "closes <Goal>"),
        (
            "multiverse",
            "<Parallel><Goal><Outline>x</Outline></Goal><Path>p</Path><Path>q</Path></Parallel>",
            0,
            "1 outlines but 2 paths",
        ),
        ("multiverse", "<Parallel><Path>p</Path></Parallel>", 0, "without <Goal>"),
        ("multiverse", "<Parallel>stray<Goal><Outline>x</Outline></Goal><Path>p</Path></Parallel>", 10, "text 'stray'"),
        ("multiverse", "<Path>p</Path>", 0, "outside a <Parallel>"),
        (
            "multiverse",
            "<Parallel><Goal><Outline>1: x</Outline><Outline>2: y</Outline></Goal>"
            "<Path>2: p</Path><Path>1: q</Path></Parallel>",
            69,
            "path 1 is numbered 2",
        ),
        ("multiverse", "<Parallel><Goal><Outline>x</Outline></Goal><Path> </Path></Parallel>", 43, "path 1 is empty"),
        ("multiverse", "ok <Thread>1: x</Thread>", 3, "canonical tag"),
        ("parallel_r1", "<Parallel><Summary>s</Summary></Parallel>", 0, "without <Path>"),
        (
            "parallel_r1",
            "<Parallel><Path>a</Path><Summary>s</Summary><Path>b</Path></Parallel>",
            44,
            "<Path> after <Summary>",
        ),
        ("parallel_r1", "x <Parallel><Path>a</Path>", 2, "never closed"),
        ("parallel_r1", "<Parallel><Path>a</Path><Outline>o</Outline></Parallel>", 24, "canonical tag"),
        (
            "threadweaver",
            "<think><Parallel><Outlines><Outline>1: a</Outline></Outlines><Thread>1: x</Thread>"
            "<Thread>2: y</Thread></Parallel></think>",
            7,
            "1 outlines but 2 threads",
        ),
        ("threadweaver", "<Parallel><Thread>1: x</Thread></Parallel>", 0, "without <Outlines>"),
        ("threadweaver", "<think>unclosed", 0, "never closed"),
        ("canonical", "<Parallel><Outlines></Outlines></Parallel>", 0, "no outlines"),
    ],
)
def test_malformed_inputs_name_dialect_offset_problem(dialect, text, offset, problem):
    with pytest.raises(DialectError) as ei:
        convert(text, dialect)
    e = ei.value
    assert e.dialect == dialect
    assert e.offset == offset, str(e)
    assert problem in str(e)
    assert str(e).startswith(f"{dialect}: offset {offset}: ")


def test_apr_malformed():
    td, _ = _apr_sample()

    def err(x) -> DialectError:
        with pytest.raises(DialectError) as ei:
            convert(x, "apr")
        assert str(ei.value).startswith("apr: ")
        return ei.value

    e = err({**td, "sub_calls": td["sub_calls"][:1]})
    assert "3 main calls need 2 groups of sub calls, found 1" in str(e) and e.where == "sub_calls"
    bad = json.loads(json.dumps(td))
    bad["sub_calls"][1] = bad["sub_calls"][1][:1]
    assert "names 2 sub searches but sub_calls[1] has 1" in str(err(bad))
    bad = json.loads(json.dumps(td))
    bad["main_calls"][1] = bad["main_calls"][1].replace("<End Calling Sub Searches>", "")
    e = err(bad)
    assert e.where == "main_calls[1]" and "without <End Calling Sub Searches>" in str(e)
    assert e.offset == bad["main_calls"][1].index("<Calling Sub Searches>")
    bad = json.loads(json.dumps(td))
    bad["main_calls"][2] = bad["main_calls"][2].replace("Current State: 24:[2, 3, 4, 6]", "Current State: 24:[9]")
    e = err(bad)
    assert e.where == "main_calls[2]" and "does not continue main call 0" in str(e)
    assert e.offset == td["main_calls"][2].index("[2, 3, 4, 6]") + 1
    bad = json.loads(json.dumps(td))
    bad["sub_calls"][0][0]["main_calls"] = []
    e = err(bad)
    assert e.where == "sub_calls[0][0]." and "non-empty list" in str(e)
    e = err('{"main_calls": [')
    assert "invalid trace_dict JSON" in str(e)
    assert "expected a trace_dict" in str(err(42))
    e = err(
        {"main_calls": ["x\n<Calling Sub Searches>\n<Start Sub Search 0 at level 1> a\n<End Calling Sub Searches>\n"]}
    )
    assert "truncated" in str(e) and e.offset == 2
    bad = json.loads(json.dumps(td))
    bad["main_calls"][0] = bad["main_calls"][0].replace("Sub Search 1 at", "Sub Search 5 at")
    assert "numbered 5, expected 1" in str(err(bad))


# ---------------------------------------------------------------------------
# the CLI


def test_convert_cli(tmp_path):
    from data_gen.convert import main

    src = tmp_path / "mv.jsonl"
    rows = [
        {"id": "a", "prompt": "p", "completion": MULTIVERSE},
        {"id": "b", "prompt": "p", "completion": "<Parallel><Goal><Outline>x</Outline></Goal></Parallel>"},
        {"id": "c", "prompt": "p"},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    out = tmp_path / "ours.jsonl"
    assert main(["--from", "multiverse", "--input", str(src), "--out", str(out)]) == 0
    good = [json.loads(x) for x in out.read_text().splitlines()]
    bad = [json.loads(x) for x in (tmp_path / "ours.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [g["id"] for g in good] == ["a"]
    assert good[0]["completion"] == convert(MULTIVERSE, "multiverse") and good[0]["prompt"] == "p"
    assert good[0]["stats"]["blocks"] == 1 and good[0]["dialect"] == "multiverse"
    assert [(b["line"], b["id"]) for b in bad] == [(2, "b"), (3, "c"), (4, None)]
    assert bad[0]["dialect"] == "multiverse" and bad[0]["offset"] == 0 and "without <Path>" in bad[0]["reason"]
    assert "no field 'completion'" in bad[1]["reason"] and "invalid JSON" in bad[2]["reason"]

    # APR: the trace_dict field by default, dropped from the output
    td, _ = _apr_sample()
    src2 = tmp_path / "apr.jsonl"
    src2.write_text(json.dumps({"nums": [2, 3, 4, 6], "target": 24, "trace_dict": td}) + "\n")
    out2 = tmp_path / "apr_ours.jsonl"
    assert main(["--from", "apr", "--input", str(src2), "--out", str(out2), "--max-depth", "1"]) == 1
    assert not out2.exists()  # depth 2 is over the limit: nothing converted, nothing written but the rejects
    rej = json.loads((tmp_path / "apr_ours.jsonl.rejected.jsonl").read_text())
    assert "depth" in rej["reason"]
    assert main(["--from", "apr", "--input", str(src2), "--out", str(out2)]) == 0
    rec = json.loads(out2.read_text())
    assert "trace_dict" not in rec and rec["nums"] == [2, 3, 4, 6] and rec["stats"]["max_depth"] == 2
    assert main(["--from", "nope", "--input", str(src2), "--out", str(out2)]) == 2


def test_convert_cli_bad_records_and_files(tmp_path, capsys):
    """One hostile record is a rejection, not a lost file; a JSON list is read as one;
    nothing converted exits 1; a missing input is one error line with exit 2."""
    from data_gen.convert import main

    ok = {"id": "ok", "completion": MULTIVERSE}
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b"\n".join(
            [
                json.dumps({"id": "deep", "completion": "<Parallel><Thread>" * 332}).encode(),
                json.dumps({"id": "deep2", "completion": "<Parallel><Path>" * 2000}).encode(),
                json.dumps({"id": "num", "completion": 7}).encode(),
                b"\xff\xfe not utf-8",
                b"[" * 100_000,
                json.dumps(ok).encode(),
            ]
        )
        + b"\n"
    )
    out = tmp_path / "out.jsonl"
    assert main(["--from", "multiverse", "--input", str(src), "--out", str(out)]) == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["ok"]
    bad = [json.loads(x) for x in (tmp_path / "out.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [(b["line"], b["id"]) for b in bad] == [(1, "deep"), (2, "deep2"), (3, "num"), (4, None), (5, None)]
    assert "nested deeper" in bad[1]["reason"] and "UTF-8" in bad[3]["reason"] and "deeply" in bad[4]["reason"]

    # APR ships its traces as one JSON list: read as records, not as lines of JSON
    td, _ = _apr_sample()
    arr = tmp_path / "apr_traces.json"
    arr.write_text(json.dumps([{"id": 0, "trace_dict": td}, {"id": 1, "trace_dict": td}], indent=2))
    assert main(["--from", "apr", "--input", str(arr), "--out", str(out)]) == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [0, 1]

    # nothing converted: exit 1, a reason on stderr, the output is not written
    out2 = tmp_path / "none.jsonl"
    capsys.readouterr()
    assert main(["--from", "multiverse", "--input", str(arr), "--out", str(out2)]) == 1
    err = capsys.readouterr().err
    assert "no record" in err and "0 record" not in err and "no field 'completion'" in err and not out2.exists()

    # a missing input: one line, exit 2
    assert main(["--from", "multiverse", "--input", str(tmp_path / "nope.jsonl"), "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --input ") and "no such file" in err and err.count("\n") == 1


def test_docs_examples_are_what_the_converters_output():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "dialects.md").read_text()
    checked = 0
    for title, dialect in (
        ("## Multiverse", "multiverse"),
        ("## Parallel-R1", "parallel_r1"),
        ("## ThreadWeaver", "threadweaver"),
    ):
        section = doc.split(title, 1)[1].split("\n## ", 1)[0]
        blocks = re.findall(r"```\n(.*?)\n```", section, re.S)
        inp, out = blocks[0], blocks[1]
        assert convert(inp, dialect) == out
        checked += 1
    assert checked == 3
