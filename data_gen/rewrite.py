"""Rewrite sequential chains of thought into fork/join trajectories with an LLM.

    python -m data_gen.rewrite --input cots.jsonl --out par.jsonl \\
        --llm http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-72B-Instruct --concurrency 16
    python -m data_gen.rewrite --input openai/gsm8k --dataset-config main --split train \\
        --reasoning-field answer --answer-field answer --answer-pattern gsm8k --limit 500 \\
        --llm https://api.openai.com/v1 --model gpt-4o-mini --api-key-env OPENAI_API_KEY \\
        --price-prompt 0.00015 --price-completion 0.0006 --out gsm8k_par.jsonl
    python -m data_gen.rewrite --input cots.jsonl --out par.jsonl --llm ./local-model   # transformers

The LLM splits the reasoning into steps, finds their dependencies, groups them into
a plan that code checks, rewrites threads so none refers to a sibling and outlines
them; code assembles and validates the trajectory (rejections go to
``<out>.rejected.jsonl``). Calls are cached per record and step, so a rerun repeats
none. Pipeline and rejection reasons: docs/design.md#data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from parallel_reason.data import read_jsonl, read_records
from parallel_reason.files import write_jsonl
from parallel_reason.format import Block, FormatError, Limits, Trajectory, make_block, parse, render, strip_tags
from parallel_reason.inputs import InputError, check_device, check_model_path, reports_input_errors
from parallel_reason.llm import DEFAULT_API_KEY_ENV, LLM, JSONAnswerError, LLMError, make_client, parse_json_answer
from parallel_reason.metrics import aggregate, approx_count, parallel_ratio, stats

log = logging.getLogger("data_gen.rewrite")

QUESTION_FIELDS = ("question", "problem", "prompt", "query")
REASONING_FIELDS = ("reasoning", "solution", "cot", "completion", "response", "generation")
ANSWER_FIELDS = ("answer", "final_answer", "gold", "target_answer")

# ---------------------------------------------------------------------------
# Prompts (placeholders {{name}} are filled with str.replace, so braces are safe)

SYSTEM = (
    "You restructure step-by-step solutions into parallel (fork/join) reasoning. "
    "Follow the instructions exactly and answer with one JSON object and nothing else."
)

PROMPT_SPLIT = """Split the solution below into numbered steps. A step is a short run of consecutive sentences that does one thing (one computation, one case, one check). Copy the text exactly: do not reword, drop, merge or add anything; every part of the solution belongs to exactly one step, in the original order. Keep the final answer (for example \\boxed{...}) in the last step.

Question:
<<<
{{question}}
>>>

Solution:
<<<
{{reasoning}}
>>>

Answer with JSON of the form {"steps": [{"id": 1, "text": "..."}, {"id": 2, "text": "..."}]}"""

PROMPT_DEPS = """Below are the numbered steps of a solution. For every step, list the earlier steps whose results (numbers, expressions, facts, cases) it uses directly. A step that only uses the question depends on nothing. Only earlier steps may be listed.

Question:
<<<
{{question}}
>>>

Steps:
{{steps}}

Answer with JSON of the form {"dependencies": {"1": [], "2": [1], "3": [1, 2]}}"""

PROMPT_GROUP = """Plan how to run the steps below with as much parallelism as their dependencies allow. A plan is a list of items run in order; an item is a step number, or a parallel block {"parallel": [thread, thread, ...]} of two or more threads, each thread a list of step numbers run in order. Threads of a block run at the same time and cannot see each other.
Rules: every step appears exactly once; every step comes after all the steps it depends on; a step never depends on a step of a sibling thread in the same block; the step that states the final answer comes after every block. Prefer few, balanced threads; keep steps sequential when nothing can run in parallel.

Question:
<<<
{{question}}
>>>

Steps (with the steps each depends on):
{{steps}}

Answer with JSON of the form {"plan": [1, {"parallel": [[2, 3], [4]]}, 5]}"""

PROMPT_REWRITE = """The threads below will run at the same time. Each sees only the question and the shared reasoning before the block, never another thread. Rewrite every thread so it stands alone: keep its own computations, numbers and conclusions, remove every reference to another thread or its results (no "from thread 2", "as found above", "the other case", no value that only another thread computes); if a thread needs a value from the shared reasoning, it may use it. Do not add new results or a final answer, do not reorder the threads, and do not write the tags <Parallel>, <Outlines>, <Outline> or <Thread>.

Question:
<<<
{{question}}
>>>

Shared reasoning before the block:
<<<
{{shared}}
>>>

{{threads}}

Answer with JSON of the form {"threads": ["rewritten thread 1", "rewritten thread 2"]} with exactly {{n}} strings."""

PROMPT_OUTLINE = """Write a one-line plan for each of the threads below: what the thread will do, in the imperative, without stating its result. The plans are written before the threads run, so they must not reveal results.

Question:
<<<
{{question}}
>>>

{{threads}}

Answer with JSON of the form {"outlines": ["plan of thread 1", "plan of thread 2"]} with exactly {{n}} strings."""

JSON_RETRY_NOTE = (
    "\n\nYour previous answer could not be used ({{error}}). Answer again with the JSON "
    "object only, exactly in the requested form."
)


def fill(template: str, **values) -> str:
    out = template
    for k, v in values.items():
        out = out.replace("{{" + k + "}}", str(v))
    return out


# ---------------------------------------------------------------------------
# Records, configuration, rejections


@dataclass
class Record:
    id: str
    question: str
    reasoning: str
    answer: str | None
    extra: dict = field(default_factory=dict)


@dataclass
class RewriteConfig:
    task: str = "math"
    answer_pattern: str | None = None  # math: e.g. "gsm8k" reads "#### 42" instead of \boxed{}
    max_tokens: int = 4096
    temperature: float = 0.0
    json_retries: int = 1
    min_split_coverage: float = 0.85
    max_split_growth: float = 1.3
    min_parallel_ratio: float = 0.3
    max_imbalance: float = 4.0
    max_depth: int | None = 1
    max_width: int | None = 8
    leak_min_digits: int = 2
    keep: tuple = ("nums", "target")


class Reject(Exception):
    """A record that cannot be (or was not) rewritten; ``code`` is the reason kind."""

    def __init__(self, code: str, message: str, step: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.step = step
        self.extra = extra or {}


# ---------------------------------------------------------------------------
# Task verifiers


class TaskChecker:
    """Reads the final answer through the task's verifier."""

    def __init__(self, task: str, answer_pattern: str | None = None):
        if task not in ("math", "countdown"):
            raise ValueError(f"unknown task {task!r}: choose math or countdown")
        self.task = task
        self.pattern = answer_pattern  # math: read the answer with this regex/alias instead of \boxed{}

    def reference(self, rec: Record) -> str:
        if self.task == "countdown":
            for k in ("nums", "target"):
                if k not in rec.extra:
                    raise Reject("missing_field", f"countdown record has no {k!r}")
            return str(rec.answer or "")
        from parallel_reason.tasks import math as math_task

        if rec.answer is not None and str(rec.answer).strip():
            return math_task.reference_answer(rec.answer)  # "#### 42", a \boxed{} solution, or the bare answer
        found = math_task.extract_answer(rec.reasoning, self.pattern)
        if found is None:
            raise Reject("no_answer", "the record has no answer field and none is found in its reasoning", "input")
        return found

    def check(self, text: str, rec: Record) -> tuple[bool, str]:
        if self.task == "countdown":
            from parallel_reason.tasks import countdown

            v = countdown.verify(text, rec.extra["nums"], rec.extra["target"])
            return bool(v.ok), v.reason
        from parallel_reason.tasks import math as math_task

        ref = self.reference(rec)
        v = math_task.verify(text, ref, self.pattern)
        if v.ok and math_task.extract_answer(text, self.pattern) is None:
            return False, "no final answer found"
        return bool(v.ok), v.reason


# ---------------------------------------------------------------------------
# Steps (a)-(e): ask, parse, check


def _ask(llm: LLM, prompt: str, rec: Record, step: str, cfg: RewriteConfig, parse_fn):
    """Ask for JSON, parse it with ``parse_fn``; re-ask (a different prompt, so a
    different cache entry) up to ``cfg.json_retries`` times when it is unusable."""
    note = ""
    for attempt in range(cfg.json_retries + 1):
        comp = llm(
            prompt + note,
            record_id=rec.id,
            step=step if attempt == 0 else f"{step}-retry{attempt}",
            system=SYSTEM,
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
        )
        try:
            return parse_fn(parse_json_answer(comp.text))
        except (JSONAnswerError, ValueError) as e:  # no JSON / JSON of the wrong shape or content
            err = str(e)
            if attempt == cfg.json_retries:
                code = "llm_json" if isinstance(e, JSONAnswerError) else "llm_schema"
                raise Reject(code, f"step {step}: {err}", step) from None
            note = fill(JSON_RETRY_NOTE, error=err[:200])
    raise AssertionError("unreachable")


def _as_int(x, what: str) -> int:
    if isinstance(x, bool):
        raise ValueError(f"{what}: {x!r} is not a step number")
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, str) and re.fullmatch(r"\s*(?:step\s*)?\d+\s*", x, re.I):
        return int(re.sub(r"\D", "", x))
    raise ValueError(f"{what}: {x!r} is not a step number")


def parse_steps(obj: dict) -> list[str]:
    steps = obj.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ValueError("'steps' must be a non-empty list")
    out = []
    for k, s in enumerate(steps, 1):
        if isinstance(s, dict):
            if "id" in s and _as_int(s["id"], "step id") != k:
                raise ValueError(f"step {k} has id {s['id']!r}")
            s = s.get("text")
        if not isinstance(s, str) or not s.strip():
            raise ValueError(f"step {k} has no text")
        out.append(s.strip())
    return out


def parse_deps(obj: dict, n: int) -> dict[int, set[int]]:
    deps = obj.get("dependencies")
    pairs: list[tuple[int, list]] = []
    if isinstance(deps, dict):
        pairs = [(_as_int(k, "dependency key"), v) for k, v in deps.items()]
    elif isinstance(deps, list):
        for item in deps:
            if not isinstance(item, dict) or "step" not in item:
                raise ValueError("each dependency entry must be an object with 'step' and 'depends_on'")
            pairs.append((_as_int(item["step"], "dependency step"), item.get("depends_on", [])))
    else:
        raise ValueError("'dependencies' must be an object or a list")
    out: dict[int, set[int]] = {s: set() for s in range(1, n + 1)}
    for s, ds in pairs:
        if not 1 <= s <= n:
            raise ValueError(f"dependencies name step {s}, but there are {n} steps")
        if ds is None:
            ds = []
        if not isinstance(ds, list):
            ds = [ds]
        for d in ds:
            d = _as_int(d, f"dependency of step {s}")
            if not 1 <= d < s:
                raise ValueError(f"step {s} depends on step {d}, which is not an earlier step")
            out[s].add(d)
    return out


@dataclass
class Par:
    threads: list  # list[list[int]]


def parse_plan(obj: dict, n: int) -> list:
    """Plan JSON -> list of step ids and :class:`Par` blocks (depth 1: blocks nested
    inside a thread are flattened into that thread, in order)."""
    plan = obj.get("plan")
    if not isinstance(plan, list) or not plan:
        raise ValueError("'plan' must be a non-empty list")

    def step(x) -> int:
        s = _as_int(x, "plan item")
        if not 1 <= s <= n:
            raise ValueError(f"the plan names step {s}, but there are {n} steps")
        return s

    def flat(items) -> list[int]:
        out = []
        for it in items if isinstance(items, list) else [items]:
            if isinstance(it, dict):
                for th in _threads_of(it):
                    out.extend(flat(th))
            else:
                out.append(step(it))
        return out

    def _threads_of(it: dict) -> list:
        th = it.get("parallel", it.get("threads"))
        if not isinstance(th, list) or not th:
            raise ValueError(f"a parallel block needs a non-empty list of threads, got {json.dumps(it)[:80]}")
        return th

    out: list = []
    for it in plan:
        if isinstance(it, dict):
            threads = [flat(th) for th in _threads_of(it)]
            threads = [t for t in threads if t]
            if len(threads) >= 2:
                out.append(Par(threads))
            else:
                out.extend(t for th in threads for t in th)
        else:
            out.append(step(it))
    return out


def check_plan(plan: list, deps: dict[int, set[int]], n: int) -> None:
    seen: list[int] = []
    for it in plan:
        if isinstance(it, Par):
            seen.extend(t for th in it.threads for t in th)
        else:
            seen.append(it)
    c = Counter(seen)
    for s, k in sorted(c.items()):
        if not 1 <= s <= n:
            raise Reject("plan", f"the plan names step {s}, but there are {n} steps", "group")
        if k > 1:
            raise Reject("plan", f"step {s} appears {k} times in the plan", "group")
    missing = sorted(set(range(1, n + 1)) - set(c))
    if missing:
        raise Reject("plan", f"the plan leaves out step(s) {', '.join(map(str, missing))}", "group")
    if not any(isinstance(it, Par) for it in plan):
        raise Reject("no_parallel", "the plan has no parallel block", "group")
    visible: set[int] = set()
    for it in plan:
        if isinstance(it, Par):
            owner = {s: k for k, th in enumerate(it.threads, 1) for s in th}
            for k, th in enumerate(it.threads, 1):
                local = set(visible)
                for s in th:
                    for d in sorted(deps.get(s, ())):
                        if d not in local:
                            if d in owner and owner[d] != k:
                                raise Reject(
                                    "plan",
                                    f"step {s} (thread {k}) depends on step {d}, which runs in sibling thread {owner[d]}",
                                    "group",
                                )
                            raise Reject(
                                "plan", f"step {s} depends on step {d}, which comes later in the plan", "group"
                            )
                    local.add(s)
            visible |= set(owner)
        else:
            for d in sorted(deps.get(it, ())):
                if d not in visible:
                    raise Reject("plan", f"step {it} depends on step {d}, which comes later in the plan", "group")
            visible.add(it)


def _strings(obj: dict, key: str, n: int) -> list[str]:
    v = obj.get(key)
    if not isinstance(v, list):
        raise ValueError(f"'{key}' must be a list")
    if len(v) != n:
        raise ValueError(f"'{key}' has {len(v)} entries, expected {n}")
    out = []
    for k, s in enumerate(v, 1):
        if isinstance(s, dict):
            s = s.get("text", s.get("outline"))
        if not isinstance(s, str) or not s.strip():
            raise ValueError(f"entry {k} of '{key}' is empty")
        out.append(s.strip())
    return out


_LEADING_NUM_RE = re.compile(r"^\s*(?:thread\s*)?\d+\s*[:.)]\s*", re.I)


# ---------------------------------------------------------------------------
# Validation of the assembled trajectory

_QTY_RE = re.compile(r"(?<![\w.])(\d+(?:,\d{3})*(?:\.\d+)?|[A-Za-z]_\{?\w+\}?|[A-Za-z]+\d+)(?![\w])")
_RESULT_BEFORE_RE = re.compile(
    r"(?:=|≈|\\approx|\\equiv|\bis|\bare|\bequals|\bgives|\bget|\bgot|\bmakes|\bleaves|\bto)\s*[$\\(\-−]*\s*$", re.I
)
_DEFINE_BEFORE_RE = re.compile(r"\b(?:let|define|set|denote|call)\s*[$\\(]*\s*$", re.I)
_DEFINE_AFTER_RE = re.compile(r"\s*[$)]*\s*(?::=|=(?!=)|\\coloneqq)")
LEAK_PHRASES = (
    r"\b(?:thread|path|branch)\s*#?\s*\d+",
    r"\b(?:other|another|sibling|previous|preceding|parallel)\s+(?:thread|path|branch)(?:es|s)?\b",
    r"\bas\s+(?:found|computed|shown|obtained|derived|calculated|established|determined|seen)\s+(?:above|earlier|before|previously)\b",
    r"\b(?:from|in|by|using)\s+the\s+other\s+(?:case|part|computation|calculation|result)s?\b",
)
_LEAK_PHRASE_RE = re.compile("|".join(LEAK_PHRASES), re.I)


def _norm_qty(tok: str) -> str:
    t = tok.replace(",", "")
    if re.fullmatch(r"\d+\.\d+", t):
        t = t.rstrip("0").rstrip(".")
    return t


def quantities(text: str, min_digits: int = 2) -> dict[str, bool]:
    """Quantities (numbers with >= ``min_digits`` digits) and identifiers with a digit
    or subscript (``x_1``, ``a2``) of ``text``, each mapped to whether its first
    occurrence is a result (follows ``=``, "is", "gives"...)."""
    out: dict[str, bool] = {}
    for m in _QTY_RE.finditer(text):
        tok = m.group(1)
        if tok[0].isdigit() and sum(ch.isdigit() for ch in tok) < min_digits:
            continue
        key = _norm_qty(tok)
        if key not in out:
            if tok[0].isdigit():
                out[key] = bool(_RESULT_BEFORE_RE.search(text[max(0, m.start() - 16) : m.start()]))
            else:  # an identifier is introduced by "let x_1", "x_1 = ..."
                out[key] = bool(
                    _DEFINE_BEFORE_RE.search(text[max(0, m.start() - 16) : m.start()])
                    or _DEFINE_AFTER_RE.match(text, m.end())
                )
    return out


def find_leaks(traj: Trajectory, question: str, min_digits: int = 2) -> list[str]:
    """Heuristic cross-thread references (see the module docstring)."""
    problems: list[str] = []

    def walk(parts: list, shared: str, where: str) -> None:
        for p in parts:
            if not isinstance(p, Block):
                shared += strip_tags(p)
                continue
            b = p
            shared_here = shared + "\n" + "\n".join(b.outlines)
            texts = [strip_tags(render(t.parts)) for t in b.threads]
            s_q = quantities(shared_here, min_digits)
            q = [quantities(t, min_digits) for t in texts]
            intro = [{k for k in qi if k not in s_q} for qi in q]
            for i, t in enumerate(texts):
                name = f"{where}thread {i + 1}"
                m = _LEAK_PHRASE_RE.search(t)
                if m:
                    problems.append(f"{name} refers to another thread: {m.group(0)!r}")
                for tok, is_result in q[i].items():
                    if tok in s_q or is_result:
                        continue
                    src = [j + 1 for j in range(len(texts)) if j != i and tok in intro[j] and q[j][tok]]
                    if src:
                        problems.append(
                            f"{name} uses {tok!r}, first introduced in sibling thread {src[0]} "
                            "and not in the shared prefix"
                        )
                walk(b.threads[i].parts, shared_here, f"{name} > ")
            shared = shared_here + "\n" + "\n".join(texts)

    walk(traj.parts, question + "\n", "")
    return problems


def validate_trajectory(
    completion: str, rec: Record, cfg: RewriteConfig, checker: TaskChecker
) -> list[tuple[str, str]]:
    """All reasons to reject ``completion`` (empty = keep)."""
    reasons: list[tuple[str, str]] = []
    try:
        traj = parse(completion, Limits(max_depth=cfg.max_depth, max_width=cfg.max_width))
    except FormatError as e:
        return [("grammar", str(e))]
    ok, why = checker.check(completion, rec)
    if not ok:
        reasons.append(("answer", why))
    for leak in find_leaks(traj, rec.question, cfg.leak_min_digits):
        reasons.append(("leak", leak))
    ratio = parallel_ratio(traj)
    if ratio < cfg.min_parallel_ratio:
        reasons.append(("parallel_ratio", f"share of tokens in threads {ratio:.2f} < {cfg.min_parallel_ratio}"))
    for k, (b, _) in enumerate(traj.blocks(), 1):
        sizes = [max(1, approx_count(render(t.parts))) for t in b.threads]
        if len(sizes) >= 2 and max(sizes) / min(sizes) > cfg.max_imbalance:
            reasons.append(
                (
                    "imbalance",
                    f"block {k}: longest/shortest thread = {max(sizes)}/{min(sizes)} "
                    f"= {max(sizes) / min(sizes):.1f} > {cfg.max_imbalance}",
                )
            )
    return reasons


# ---------------------------------------------------------------------------
# One record


def _numbered(steps: Sequence[str], ids: Iterable[int], deps: dict | None = None) -> str:
    lines = []
    for s in ids:
        d = ""
        if deps is not None:
            ds = sorted(deps.get(s, ()))
            d = f" (depends on: {', '.join(map(str, ds)) if ds else 'none'})"
        lines.append(f"{s}.{d} {steps[s - 1]}")
    return "\n".join(lines)


def _coverage(reasoning: str, steps: Sequence[str]) -> tuple[float, float]:
    words = Counter(re.findall(r"\w+", reasoning.lower()))
    got = Counter(re.findall(r"\w+", " ".join(steps).lower()))
    total = sum(words.values()) or 1
    covered = sum(min(c, got[w]) for w, c in words.items())
    return covered / total, sum(got.values()) / total


def assemble(plan: list, steps: Sequence[str], blocks: list[tuple[list[str], list[str]]]) -> str:
    """Plan + step texts + per-block (outlines, thread texts) -> canonical text (step f)."""
    parts: list = []
    buf: list[str] = []
    k = 0

    def flush(after_block: bool) -> None:
        if buf:
            text = "\n".join(buf)
            parts.append(("\n" if after_block else "") + text + "\n")
            buf.clear()

    for it in plan:
        if isinstance(it, Par):
            flush(bool(parts))
            outlines, texts = blocks[k]
            k += 1
            if parts and isinstance(parts[-1], Block):
                parts.append("\n")
            parts.append(make_block([(o, " " + t) for o, t in zip(outlines, texts)]))
        else:
            buf.append(steps[it - 1])
    flush(bool(parts))
    return render(Trajectory(parts))


def rewrite_record(rec: Record, llm: LLM, cfg: RewriteConfig, checker: TaskChecker) -> dict:
    """Run steps (a)-(f) and the validation for one record: the output record, or raise :class:`Reject`."""
    ok, why = checker.check(rec.reasoning, rec)
    if not ok:
        raise Reject("source_answer", f"the original reasoning does not verify: {why}", "input")
    # (a) split
    steps = _ask(
        llm, fill(PROMPT_SPLIT, question=rec.question, reasoning=rec.reasoning), rec, "split", cfg, parse_steps
    )
    cov, growth = _coverage(rec.reasoning, steps)
    if cov < cfg.min_split_coverage or growth > cfg.max_split_growth:
        raise Reject(
            "split",
            f"the steps cover {cov:.0%} of the reasoning's words with {growth:.0%} of its length "
            f"(need >= {cfg.min_split_coverage:.0%} and <= {cfg.max_split_growth:.0%})",
            "split",
        )
    n = len(steps)
    if n < 3:
        raise Reject("no_parallel", f"only {n} step(s): nothing to parallelise", "split")
    # (b) dependencies
    deps = _ask(
        llm,
        fill(PROMPT_DEPS, question=rec.question, steps=_numbered(steps, range(1, n + 1))),
        rec,
        "dependencies",
        cfg,
        lambda o: parse_deps(o, n),
    )
    # (c) group
    plan = _ask(
        llm,
        fill(PROMPT_GROUP, question=rec.question, steps=_numbered(steps, range(1, n + 1), deps)),
        rec,
        "group",
        cfg,
        lambda o: parse_plan(o, n),
    )
    check_plan(plan, deps, n)
    # (d) rewrite and (e) outline, block by block
    blocks: list[tuple[list[str], list[str]]] = []
    shared_ids: list[int] = []
    for bi, it in enumerate(plan):
        if not isinstance(it, Par):
            shared_ids.append(it)
            continue
        w = len(it.threads)
        shared = _numbered(steps, shared_ids) or "(nothing yet)"
        shown = "\n\n".join(
            f"Thread {k}:\n<<<\n{chr(10).join(steps[s - 1] for s in th)}\n>>>" for k, th in enumerate(it.threads, 1)
        )
        texts = _ask(
            llm,
            fill(PROMPT_REWRITE, question=rec.question, shared=shared, threads=shown, n=w),
            rec,
            f"rewrite-{bi}",
            cfg,
            lambda o, w=w: _strings(o, "threads", w),
        )
        shown2 = "\n\n".join(f"Thread {k}:\n<<<\n{t}\n>>>" for k, t in enumerate(texts, 1))
        outlines = _ask(
            llm,
            fill(PROMPT_OUTLINE, question=rec.question, threads=shown2, n=w),
            rec,
            f"outline-{bi}",
            cfg,
            lambda o, w=w: _strings(o, "outlines", w),
        )
        outlines = [_LEADING_NUM_RE.sub("", " ".join(o.split())) or o for o in outlines]
        blocks.append((outlines, texts))
        shared_ids.extend(s for th in it.threads for s in th)
    # (f) assemble, then validate
    completion = assemble(plan, steps, blocks)
    reasons = validate_trajectory(completion, rec, cfg, checker)
    if reasons:
        raise Reject(
            reasons[0][0],
            "; ".join(f"{c}: {m}" for c, m in reasons),
            "validate",
            {"reasons": [{"code": c, "message": m} for c, m in reasons], "completion": completion},
        )
    out = {
        "id": rec.id,
        "task": cfg.task,
        "prompt": rec.question,
        "completion": completion,
        "answer": checker.reference(rec),
        "stats": stats(completion).as_dict(),
    }
    for k in cfg.keep:
        if k in rec.extra:
            out[k] = rec.extra[k]
    return out


# ---------------------------------------------------------------------------
# Input, output, driver


def load_rows(src: str, split: str = "train", config: str | None = None) -> list[dict]:
    """Records of a JSONL file (any suffix but .json/.parquet/.csv/.arrow), a JSON
    list, or any source :func:`parallel_reason.data.read_records` reads;
    :class:`~parallel_reason.data.DataError` names the line that is not a record."""
    p = Path(src)
    if p.is_file() and p.suffix.lower() not in (".json", ".parquet", ".csv", ".arrow"):
        return [rec for _, rec in read_jsonl(p)]
    return [rec for _, rec in read_records(src, split, config)]


def _pick(row: dict, explicit: str | None, names: Sequence[str]):
    if explicit:
        return row.get(explicit)
    for n in names:
        if row.get(n) not in (None, ""):
            return row[n]
    return None


def to_record(row: dict, args_fields: dict) -> Record:
    q = _pick(row, args_fields.get("question"), QUESTION_FIELDS)
    r = _pick(row, args_fields.get("reasoning"), REASONING_FIELDS)
    a = _pick(row, args_fields.get("answer"), ANSWER_FIELDS)
    if isinstance(q, list):  # chat-style prompt
        q = "\n".join(str(m.get("content", "")) for m in q if isinstance(m, dict))
    rid = row.get(args_fields.get("id") or "id")
    if rid in (None, ""):
        rid = "rec-" + hashlib.sha256(f"{q}\0{r}".encode()).hexdigest()[:16]
    rec = Record(
        id=str(rid),
        question=q if isinstance(q, str) else "",
        reasoning=r if isinstance(r, str) else "",
        answer=None if a is None else str(a),
        extra=dict(row),
    )
    if not rec.question.strip():
        raise Reject("missing_field", "no question field found", "input")
    if not rec.reasoning.strip():
        raise Reject("missing_field", "no reasoning field found", "input")
    return rec


def rejected_path(out: str | os.PathLike) -> Path:
    return Path(str(out) + ".rejected.jsonl")


def run(
    rows: Sequence[dict],
    llm: LLM,
    cfg: RewriteConfig,
    out: str | os.PathLike,
    *,
    concurrency: int = 4,
    fields: dict | None = None,
    progress: bool = True,
) -> dict:
    """Rewrite every row; write kept records to ``out`` and rejects to
    ``<out>.rejected.jsonl`` (both atomically, in input order); return a summary."""
    checker = TaskChecker(cfg.task, cfg.answer_pattern)
    fields = fields or {}
    results: list = [None] * len(rows)

    def work(i: int):
        row = rows[i]
        rid = row.get("id") if isinstance(row, dict) else None
        try:
            if not isinstance(row, dict):
                raise Reject("missing_field", f"record is a {type(row).__name__}, not an object", "input")
            rec = to_record(row, fields)
            rid = rec.id
            return rewrite_record(rec, llm, cfg, checker)
        except Reject as r:
            return {
                "id": rid,
                "index": i,
                "reason": r.code,
                "message": r.message,
                "step": r.step,
                **r.extra,
                "_rejected": True,
            }
        except LLMError as e:
            return {"id": rid, "index": i, "reason": "llm_error", "message": str(e), "step": None, "_rejected": True}
        except Exception as e:  # a bug or an unforeseen input: keep the run going, keep the trace in the log
            log.exception("record %s failed", rid or i)
            return {
                "id": rid,
                "index": i,
                "reason": "error",
                "message": f"{type(e).__name__}: {e}",
                "step": None,
                "_rejected": True,
            }

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=len(rows), desc="rewrite", unit="rec", disable=not progress, file=sys.stderr) if tqdm else None
    kept = rej = 0
    ex = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        futs = {ex.submit(work, i): i for i in range(len(rows))}
        for f in as_completed(futs):
            res = f.result()
            results[futs[f]] = res
            if res.get("_rejected"):
                rej += 1
            else:
                kept += 1
            if bar is not None:
                u = llm.usage
                post: dict[str, int | str] = {"kept": kept, "rej": rej, "tok": u.prompt_tokens + u.completion_tokens}
                if u.cost is not None:
                    post["cost"] = f"{u.cost:.4f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    ex.shutdown(wait=True)
    good = [r for r in results if not r.get("_rejected")]
    bad = [{k: v for k, v in r.items() if k != "_rejected"} for r in results if r.get("_rejected")]
    write_jsonl(out, good)
    write_jsonl(rejected_path(out), bad)
    summary = {
        "records": len(rows),
        "kept": len(good),
        "rejected": len(bad),
        "reasons": dict(Counter(r["reason"] for r in bad).most_common()),
        "first_rejection": bad[0]["message"] if bad else None,
        "usage": llm.usage.as_dict(),
        "metrics": aggregate([r["stats"] for r in good]),
        "out": str(out),
        "rejected_file": str(rejected_path(out)),
    }
    return summary


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m data_gen.rewrite",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = ap.add_argument_group("input/output")
    io.add_argument("--input", required=True, help="JSONL/JSON file, or a datasets hub name")
    io.add_argument("--split", default="train", help="dataset split (hub input)")
    io.add_argument("--dataset-config", default=None, help="dataset config name (hub input)")
    io.add_argument("--out", required=True, help="output JSONL; rejects go to <out>.rejected.jsonl")
    io.add_argument("--limit", type=int, default=None, help="only the first N records")
    io.add_argument("--question-field", default=None, help=f"default: first of {', '.join(QUESTION_FIELDS)}")
    io.add_argument("--reasoning-field", default=None, help=f"default: first of {', '.join(REASONING_FIELDS)}")
    io.add_argument("--answer-field", default=None, help=f"default: first of {', '.join(ANSWER_FIELDS)}")
    io.add_argument("--id-field", default=None, help="default: id (else a hash of question and reasoning)")
    io.add_argument(
        "--keep",
        action="append",
        default=None,
        help="input field copied to the output (repeatable; default nums, target)",
    )
    io.add_argument("--task", default="math", choices=("math", "countdown"), help="answer verifier")
    io.add_argument(
        "--answer-pattern",
        default=None,
        help="math: read final answers with this regex or alias (gsm8k: '#### 42') instead of \\boxed{}",
    )
    m = ap.add_argument_group("model")
    m.add_argument(
        "--llm", required=True, help="http(s) base URL of an OpenAI-compatible API, or a local transformers model"
    )
    m.add_argument("--model", default=None, help="model name sent to the API")
    m.add_argument("--endpoint", default="chat", choices=("chat", "completions"))
    m.add_argument("--api-key-env", default=DEFAULT_API_KEY_ENV, help="environment variable holding the API key")
    m.add_argument("--concurrency", type=int, default=4, help="records in flight")
    m.add_argument("--cache", default=None, help="cache directory (default <out>.cache)")
    m.add_argument("--no-cache", action="store_true")
    m.add_argument("--timeout", type=float, default=300.0, help="seconds per HTTP request")
    m.add_argument("--max-retries", type=int, default=6)
    m.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles, with jitter)")
    m.add_argument("--backoff-max", type=float, default=60.0)
    m.add_argument("--max-tokens", type=int, default=4096)
    m.add_argument("--temperature", type=float, default=0.0)
    m.add_argument("--json-retries", type=int, default=1, help="re-asks when an answer holds no usable JSON")
    m.add_argument("--price-prompt", type=float, default=None, help="price per 1k prompt tokens")
    m.add_argument("--price-completion", type=float, default=None, help="price per 1k completion tokens")
    m.add_argument("--device", default=None, help="local model device")
    v = ap.add_argument_group("validation")
    v.add_argument("--min-parallel-ratio", type=float, default=0.3)
    v.add_argument("--max-imbalance", type=float, default=4.0)
    v.add_argument("--min-split-coverage", type=float, default=0.85)
    v.add_argument("--max-depth", type=int, default=1)
    v.add_argument("--max-width", type=int, default=8)
    v.add_argument(
        "--leak-min-digits", type=int, default=2, help="numbers with fewer digits are ignored by the leak check"
    )
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--log-level", default="WARNING")
    return ap


@reports_input_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not re.match(r"https?://", args.llm):  # a local model: check before reading anything
        check_model_path(args.llm, "--llm")
        check_device(args.device)
    rows = load_rows(args.input, args.split, args.dataset_config)
    if args.limit is not None:
        rows = rows[: args.limit]
    if not rows:
        raise InputError(f"--input {args.input}: no records")
    client = make_client(
        args.llm,
        args.model,
        endpoint=args.endpoint,
        api_key_env=args.api_key_env,
        timeout=args.timeout,
        max_retries=args.max_retries,
        backoff=args.backoff,
        backoff_max=args.backoff_max,
        device=args.device,
    )
    cache = None if args.no_cache else (args.cache or str(args.out) + ".cache")
    llm = LLM(client, cache, price_prompt_per_1k=args.price_prompt, price_completion_per_1k=args.price_completion)
    cfg = RewriteConfig(
        task=args.task,
        answer_pattern=args.answer_pattern,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        json_retries=args.json_retries,
        min_split_coverage=args.min_split_coverage,
        min_parallel_ratio=args.min_parallel_ratio,
        max_imbalance=args.max_imbalance,
        max_depth=args.max_depth,
        max_width=args.max_width,
        leak_min_digits=args.leak_min_digits,
        keep=tuple(args.keep) if args.keep else RewriteConfig.keep,
    )
    fields = {
        "question": args.question_field,
        "reasoning": args.reasoning_field,
        "answer": args.answer_field,
        "id": args.id_field,
    }
    summary = run(rows, llm, cfg, args.out, concurrency=args.concurrency, fields=fields, progress=not args.no_progress)
    print(json.dumps(summary, indent=1), file=sys.stderr)
    if summary["reasons"].get("llm_error") == summary["records"]:
        print(
            f"error: every record failed on the LLM ({summary['records']} records; first: "
            f"{summary['first_rejection']}); see {summary['rejected_file']}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
