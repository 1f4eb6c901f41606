"""Math word problems (GSM8K, MATH and the like): a prompt that asks for a final
``\\boxed{}``, answer extraction (:func:`extract_answer`, :func:`reference_answer`)
and a verifier (:func:`verify`): plain numbers are compared exactly, everything else
with Hugging Face's ``math-verify``. Its ``signal.alarm`` timeouts only work in the
main thread, so calls from other threads go to a helper process
(``python -m parallel_reason.tasks.math --worker``) that is restarted when it
overruns. Nothing calls ``eval``/``exec`` on model output. See docs/design.md#tasks.
"""

from __future__ import annotations

import atexit
import logging
import re
import signal
import threading
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING

from ..format import strip_tags
from .countdown import Verdict

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger(__name__)

NAME = "math"

#: default prompt: the question, then a request for reasoning and a final \boxed{}
PROMPT_TEMPLATE = (
    "Solve the following problem. Reason step by step, and put the final answer "
    "within \\boxed{}.\n\nProblem: {question}\nSolution:"
)

#: named extraction patterns (``pattern="gsm8k"``); group ``answer`` (or 1) is the answer
PATTERNS: dict[str, str] = {
    "gsm8k": r"####\s*(?P<answer>[^\n]*?)\s*$",
    "answer_is": r"(?:final answer|answer) is:?\s*(?P<answer>[^\n]*?)\s*\.?\s*$",
}

#: math-verify timeout (seconds) per parse / comparison, applied in the main thread and
#: in the helper process (None: no timeout anywhere)
TIMEOUT_SECONDS: int | None = 5
#: answers longer than this are rejected before any parsing (no unbounded sympy work)
MAX_ANSWER_CHARS = 1000
#: completions longer than this are cut (from the left) before extraction
MAX_COMPLETION_CHARS = 200_000

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")

PatternLike = str | re.Pattern | None


# ---------------------------------------------------------------------------
# Prompt


def prompt(question: str, template: str | None = None) -> str:
    """The problem as plain text (no chat template). ``template`` must contain
    ``{question}``; it is substituted literally (LaTeX braces in a template are safe)."""
    tpl = PROMPT_TEMPLATE if template is None else template
    if "{question}" not in tpl:
        raise ValueError("a math prompt template must contain '{question}'")
    return tpl.replace("{question}", str(question))


# ---------------------------------------------------------------------------
# Extraction


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at ``text[start] == '{'`` (nested braces
    and ``\\{`` ``\\}`` escapes handled) and the index after it; None if unbalanced."""
    depth = 0
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def boxed_answers(text: str) -> list[str]:
    """Contents of every complete ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` in
    order. A box that is never closed (truncated output) is skipped."""
    out: list[str] = []
    for m in _BOX_RE.finditer(text):
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            got = _braced(text, j)
            if got is not None:
                out.append(got[0])
        elif j > m.end() and j < len(text):  # "\boxed 5": up to the next space or '$'
            tok = re.match(r"[^\s$]+", text[j:])
            if tok:
                out.append(tok.group(0))
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last complete box of ``text``, stripped; None when there is none
    (or it is empty)."""
    boxes = boxed_answers(text)
    if not boxes:
        return None
    ans = boxes[-1].strip()
    return ans or None


#: alias of :func:`last_boxed`
extract_boxed = last_boxed


def _compile(pattern: PatternLike) -> re.Pattern | None:
    if pattern is None:
        return None
    if isinstance(pattern, str):
        return re.compile(PATTERNS.get(pattern, pattern), re.MULTILINE)
    return pattern


def extract_answer(completion: str, pattern: PatternLike = None) -> str | None:
    """The final answer of a completion: the last ``\\boxed{}`` content, or with
    ``pattern`` the last match of that regex (its ``answer`` group, else group 1, else
    the whole match). Control tags are removed first. None when there is no answer."""
    if not isinstance(completion, str):
        return None
    text = strip_tags(completion)[-MAX_COMPLETION_CHARS:]
    rx = _compile(pattern)
    if rx is None:
        return last_boxed(text)
    last = None
    for m in rx.finditer(text):
        last = m
    if last is None:
        return None
    if "answer" in rx.groupindex:
        ans = last.group("answer")
    elif rx.groups:
        ans = last.group(1)
    else:
        ans = last.group(0)
    ans = (ans or "").strip()
    return ans or None


def reference_answer(answer) -> str:
    """The final answer inside a dataset's answer field: after the last ``####``
    (GSM8K), else the last ``\\boxed{}`` (MATH solutions), else the stripped text."""
    text = str(answer)
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    return text.strip()


# ---------------------------------------------------------------------------
# Plain-number fast path

_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACE_CMD_RE = re.compile(r"\\[,;:! ]|~|\\quad|\\qquad")
_NUMBER_RE = re.compile(
    r"^(?:(?P<pre>[A-Za-z]{2,5}\.?|[€£¥₹])\s*)?"  # a currency word or symbol
    r"(?P<sign>[-+])?\s*"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"\s*(?P<unit>(?:[A-Za-z]{2,}|°|%)(?:[\s./]*(?:[A-Za-z]+|°|%))*)?$"
)


def plain_number(answer: str) -> Fraction | None:
    """The number an answer states when it is just one number, else None.

    Accepts thousands commas (``1,234``), ``$`` / ``\\$`` signs, a currency word or
    symbol before and a unit word after the number (``5 cm``, ``18 dollars``,
    ``\\text{ km/h}``), a trailing ``.``, ``%`` and ``^\\circ``. A single letter after
    the number (``5x``) is not a unit: such answers are left to math-verify."""
    if not isinstance(answer, str) or len(answer) > 100:
        return None
    s = answer.replace("\\$", " ").replace("$", " ").replace("\\%", "%").replace("−", "-")
    s = s.replace("^\\circ", "°").replace("^{\\circ}", "°").replace("\\circ", "°")
    s = _SPACE_CMD_RE.sub(" ", s)
    s = _TEXT_CMD_RE.sub(lambda m: " " + m.group(1) + " ", s)
    s = s.strip().rstrip(".").strip()
    m = _NUMBER_RE.match(s)
    if m is None:
        return None
    value = Fraction(m.group("num").replace(",", ""))
    return -value if m.group("sign") == "-" else value


def _has_percent(s: str) -> bool:
    return "%" in s


# ---------------------------------------------------------------------------
# math-verify


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _timeout() -> int | None:
    """The math-verify timeout to use here: None (disabled) outside the main thread,
    where ``signal.alarm`` is not available."""
    if TIMEOUT_SECONDS is None or not hasattr(signal, "SIGALRM") or not _in_main_thread():
        return None
    return max(int(TIMEOUT_SECONDS), 1)


def _mv():
    try:
        import math_verify
    except ImportError as e:  # pragma: no cover - a dependency of the math task
        raise ImportError("the math task needs math-verify: pip install math-verify") from e
    return math_verify


def _configs():
    mv = _mv()
    return [mv.LatexExtractionConfig(boxed_match_priority=0), mv.ExprExtractionConfig()]


def mv_parse(answer: str) -> list:
    """``math_verify.parse`` of one extracted answer (wrapped in ``\\boxed{}`` so the
    whole answer is read), with the thread-aware timeout; [] on any failure."""
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        return []
    try:
        return _mv().parse(f"\\boxed{{{answer}}}", extraction_config=_configs(), parsing_timeout=_timeout())
    except Exception as e:  # parse failures and timeouts are "no answer", never a crash
        log.debug("math-verify could not parse %r: %s", answer[:100], e)
        return []


@lru_cache(maxsize=4096)
def _gold_parsed(gold: str) -> tuple:
    return tuple(mv_parse(gold))


def _mv_equivalent(answer: str, gold: str) -> tuple[bool, str]:
    """The math-verify comparison, in this thread (timeouts only in the main thread)."""
    gp = list(_gold_parsed(gold))
    if not gp:
        return False, f"reference {gold!r} could not be parsed"
    pp = mv_parse(answer)
    if not pp:
        return False, f"answer {answer[:60]!r} could not be parsed"
    try:
        ok = bool(_mv().verify(gp, pp, timeout_seconds=_timeout()))
    except Exception as e:  # timeouts and sympy errors: not equal
        return False, f"math-verify failed: {type(e).__name__}"
    return (True, "math-verify") if ok else (False, f"{answer[:60]!r} is not equivalent to {gold!r}")


#: outside the main thread: "process" sends math-verify work to a helper process
#: (``python -m parallel_reason.tasks.math``: its main thread has the signal
#: timeouts, and a call that still overruns kills it); "none" runs it in the calling
#: thread with no timeout at all (an input such as ``9^{9^{9^{9}}}`` can then hang it)
THREAD_GUARD = "process"
#: seconds to wait for the helper process to start
WORKER_START_SECONDS = 120


class _Worker:
    """One helper process, shared by every thread (calls are serialised)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parallel_reason.tasks.math", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        if self._readline(WORKER_START_SECONDS) != "ready":
            self.stop()
            raise RuntimeError("the math-verify helper process did not start")

    def _readline(self, timeout: float) -> str | None:
        import select

        assert self.proc is not None and self.proc.stdout is not None  # started by _start
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line.rstrip("\n") if line else None

    def stop(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(5)
            except Exception:  # already gone
                pass
            self.proc = None

    def call(self, answer: str, gold: str) -> tuple[bool, str]:
        import json

        t = max(int(TIMEOUT_SECONDS or 5), 1)
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            assert self.proc is not None and self.proc.stdin is not None  # started above
            try:
                self.proc.stdin.write(json.dumps([answer, gold, t]) + "\n")
                self.proc.stdin.flush()
                line = self._readline(3 * t + 5)  # gold parse + answer parse + verify, each bounded by t
            except (OSError, ValueError):
                line = None
            if line is None:
                self.stop()
                return False, "math-verify timed out (helper process restarted)"
        ok, how = json.loads(line)
        return bool(ok), str(how)


_WORKER = _Worker()
atexit.register(_WORKER.stop)


def _worker_main() -> None:
    """Helper-process loop: one JSON request per line (answer, gold, timeout), one
    JSON reply per line (equal, how). Exits at the end of its input."""
    import json
    import sys

    global TIMEOUT_SECONDS
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    _mv()
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            answer, gold, t = json.loads(line)
            TIMEOUT_SECONDS = int(t)
            ok, how = _mv_equivalent(str(answer), str(gold))
        except Exception as e:  # never die on one request
            ok, how = False, f"math-verify failed: {type(e).__name__}"
        print(json.dumps([bool(ok), str(how)]), flush=True)


def is_equivalent(answer: str | None, gold: str) -> tuple[bool, str]:
    """``(equal, how)``: is the extracted ``answer`` the same as the reference answer
    ``gold`` (already extracted, see :func:`reference_answer`)? ``how`` says which
    path decided (``"number"``, ``"string"``, ``"math-verify"``) or why it failed."""
    if answer is None:
        return False, "no answer"
    answer, gold = str(answer).strip(), str(gold).strip()
    if not answer:
        return False, "empty answer"
    if len(answer) > MAX_ANSWER_CHARS:
        return False, f"answer is {len(answer)} characters long, over the limit of {MAX_ANSWER_CHARS}"
    a, g = plain_number(answer), plain_number(gold)
    if a is not None and g is not None:
        if a == g:
            return True, "number"
        if not (_has_percent(answer) or _has_percent(gold)):
            return False, f"number {answer!r} differs from {gold!r}"
    if answer == gold:
        return True, "string"
    if (
        not _in_main_thread()
        and THREAD_GUARD == "process"
        and TIMEOUT_SECONDS is not None
        and hasattr(signal, "SIGALRM")
    ):
        return _WORKER.call(answer, gold)
    return _mv_equivalent(answer, gold)


def verify(answer_or_completion: str | None, answer, pattern: PatternLike = None) -> Verdict:
    """Check an answer (or a whole completion, whose last ``\\boxed{}`` / ``pattern``
    match is read) against the dataset's ``answer`` field. A single-line string with
    no box is taken as the answer itself. Never raises on any string input."""
    if answer_or_completion is None:
        return Verdict(False, "no answer")
    if not isinstance(answer_or_completion, str):
        return Verdict(False, f"answer is a {type(answer_or_completion).__name__}, not a string")
    gold = reference_answer(answer)
    extracted = extract_answer(answer_or_completion, pattern)
    if extracted is None:
        text = strip_tags(answer_or_completion).strip()
        if "\n" in text or _BOX_RE.search(text) or (pattern is not None and text and len(text) > 100):
            return Verdict(False, "no \\boxed{} answer" if pattern is None else "no answer matching the pattern")
        extracted = text
    ok, how = is_equivalent(extracted, gold)
    return Verdict(ok, "correct" if ok else how, extracted)


def reward(completion: str, answer) -> float:
    """1.0 when the completion's last ``\\boxed{}`` equals the reference ``answer``."""
    extracted = extract_answer(completion)
    if extracted is None:
        return 0.0
    return 1.0 if is_equivalent(extracted, reference_answer(answer))[0] else 0.0


__all__ = [
    "NAME",
    "PATTERNS",
    "PROMPT_TEMPLATE",
    "Verdict",
    "boxed_answers",
    "extract_answer",
    "extract_boxed",
    "is_equivalent",
    "last_boxed",
    "mv_parse",
    "plain_number",
    "prompt",
    "reference_answer",
    "reward",
    "verify",
]


if __name__ == "__main__":
    import sys as _sys

    if _sys.argv[1:] == ["--worker"]:
        _worker_main()
    else:
        print("usage: python -m parallel_reason.tasks.math --worker  (math-verify helper process)", file=_sys.stderr)
        _sys.exit(2)
