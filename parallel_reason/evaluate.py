"""Decode problems with the fork/join runner and score every sample: the piece
that the benchmark (:mod:`eval.benchmark`) and self-training
(:mod:`data_gen.self_train`) share.

- :func:`load_problems`: the problems of a data source (id, prompt, reference and
  the verifier's arguments);
- :func:`add_runner_args` / :func:`check_runner_args`: the command-line options of
  a decoding run (data source, decoding, model) and their checks;
- :func:`load_runner`: the model of ``--model`` in a :class:`~parallel_reason.runner.Runner`;
- :func:`decode_and_score`: problems decoded chunk by chunk (``--samples`` rollouts
  each, seeded per problem by :func:`problem_seed`), every rollout scored by
  :func:`score_sample` (fields :data:`SAMPLE_FIELDS`).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .data import DataError, check_prompt, read_records, render_prompt
from .format import Limits
from .inputs import DTYPES, InputError, check_device, check_model_path
from .layout import JOIN_MODES
from .rewards import format_outcome, rollout_stats
from .runner import Rollout, Runner
from .tasks import get_task
from .tokens import load_tokenizer

#: fields of one scored sample (:func:`score_sample`)
SAMPLE_FIELDS = {
    "sample_index": "index of the sample (0..K-1)",
    "answer": "extracted answer (None when there is none)",
    "correct": "the task's verifier accepts the answer",
    "verdict": "the verifier's reason ('correct' or why not)",
    "total_tokens": "sampled tokens (runner token tree)",
    "critical_path": "sampled tokens on the longest causal chain",
    "speedup": "total_tokens / critical_path",
    "blocks": "<Parallel> blocks (nested ones included)",
    "threads": "threads over all blocks",
    "wall_clock_s": "runner-measured seconds from admission to the end of this sample",
    "finish_reason": "the runner's finish reason (see parallel_reason.runner.FINISH_REASONS)",
    "format_valid": "format.validate finds no problem (width/depth limits included)",
    "format_problems": "the first problems found (strings)",
    "completion": "the trajectory text: linear form, runner-written tokens included, special tokens (EOS) removed",
}


# ---------------------------------------------------------------------------
# Problems


def _first_present(rec: dict, names: Sequence[str]) -> str | None:
    for n in names:
        if n in rec and rec[n] is not None:
            return n
    return None


def load_problems(
    data,
    task: str,
    split: str = "test",
    config: str | None = None,
    n: int | None = None,
    prompt_field: str | None = "prompt",
    question_field: str | None = None,
    answer_field: str | None = None,
    prompt_template: str | None = None,
) -> list[dict]:
    """Problems of a data source: dicts with ``id``, ``prompt`` (text or messages),
    ``reference`` and the verifier's arguments (``nums``/``target`` or ``answer``)."""
    mod = get_task(task)
    rows = read_records(data, split, config)
    if not rows:
        raise DataError(f"{data}: no records")
    if n is not None and n >= 0:
        rows = rows[:n]
    out, seen = [], set()
    for k, (origin, rec) in enumerate(rows):
        pid = str(rec["id"]) if rec.get("id") is not None else str(k)
        if pid in seen:
            raise DataError(f"{origin}: duplicate id {pid!r}; ids must be unique")
        seen.add(pid)
        p = rec.get(prompt_field) if prompt_field else None
        if p is not None and prompt_field:
            p = check_prompt(p, origin, prompt_field)
        if task == "countdown":
            if rec.get("nums") is None or rec.get("target") is None:
                raise DataError(f"{origin}: a countdown record needs 'nums' and 'target'")
            try:
                nums, target = mod.check_problem(rec["nums"], rec["target"])
            except ValueError as e:
                raise DataError(f"{origin}: 'nums' must be a list of integers and 'target' an integer: {e}") from None
            args = {"nums": nums, "target": target}
            prompt = p if p is not None else mod.prompt(**args)
            reference = dict(args)
        else:
            af = answer_field or _first_present(rec, ("answer", "solution", "final_answer"))
            if af is None or rec.get(af) is None:
                raise DataError(f"{origin}: no answer field (tried {answer_field or 'answer, solution, final_answer'})")
            if p is None:
                qf = question_field or _first_present(rec, ("question", "problem", "query"))
                if qf is None or rec.get(qf) is None:
                    raise DataError(
                        f"{origin}: no question field (tried {question_field or 'question, problem, query'})"
                    )
                p = mod.prompt(str(rec[qf]), prompt_template)
            prompt = p
            reference = mod.reference_answer(rec[af])
            args = {"answer": reference}
        out.append({"id": pid, "origin": origin, "prompt": prompt, "reference": reference, "args": args})
    return out


def problem_seed(seed: int, pid: str) -> int:
    """Seed of a problem's generators: a stable hash of the run seed and the id."""
    h = hashlib.sha256(f"{int(seed)}|{pid}".encode()).digest()
    return int.from_bytes(h[:7], "big")


# ---------------------------------------------------------------------------
# Scoring


def completion_text(rollout: Rollout, tokenizer=None) -> str:
    """The text that is scored and stored: the completion ids decoded without special
    tokens (EOS, padding; the control tags are ordinary added tokens and stay), as the
    GRPO trainer's rewards read it; ``rollout.completion`` without a tokenizer."""
    if tokenizer is not None:
        return tokenizer.decode(rollout.completion_ids, skip_special_tokens=True)
    return rollout.completion


def score_sample(
    task_mod, problem: dict, rollout: Rollout, limits: Limits, answer_pattern: str | None = None, tokenizer=None
) -> dict:
    """The fields of one sample (see :data:`SAMPLE_FIELDS`)."""
    text = completion_text(rollout, tokenizer)
    if answer_pattern is not None:
        answer = task_mod.extract_answer(text, answer_pattern)
    else:
        answer = task_mod.extract_answer(text)
    if answer is None:
        ok, reason = False, "no answer"
    else:
        # the extracted answer is verified on its own (one line: LaTeX reads a newline as a space)
        one_line = " ".join(answer.split("\n"))
        try:
            if answer_pattern is not None:
                v = task_mod.verify(one_line, **problem["args"], pattern=answer_pattern)
            else:
                v = task_mod.verify(one_line, **problem["args"])
            ok, reason = bool(v.ok), str(v.reason)
        except Exception as e:  # a verifier must not stop a benchmark
            ok, reason = False, f"verifier raised {type(e).__name__}: {e}"
    st = rollout_stats(rollout, text)
    fo = format_outcome(text, None, limits)
    return {
        "sample_index": int(rollout.sample_index),
        "answer": answer,
        "correct": ok,
        "verdict": reason,
        "total_tokens": int(st["total_tokens"]),
        "critical_path": int(st["critical_path"]),
        "speedup": float(st["speedup"]),
        "blocks": int(st["blocks"]),
        "threads": int(st["threads"]),
        "wall_clock_s": float(rollout.wall_s),
        "finish_reason": str(rollout.finish_reason),
        "format_valid": bool(fo.valid),
        "format_problems": [str(p) for p in fo.problems[:3]],
        "completion": text,
    }


# ---------------------------------------------------------------------------
# Decoding


def load_model(
    path: str, dtype: str = "auto", device: str = "auto", attn: str = "sdpa", trust_remote_code: bool = False
):
    """``(tokenizer, model)`` of a model directory (or cached hub id), on ``device``
    in eval mode; :class:`~parallel_reason.inputs.InputError` when it cannot be loaded."""
    from transformers import AutoModelForCausalLM

    kw: dict = {"attn_implementation": attn, "trust_remote_code": trust_remote_code}
    if dtype != "auto":
        kw["dtype"] = getattr(torch, dtype)
    try:
        tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:  # no or broken weights/tokenizer files, an unknown architecture
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--model {path}: cannot be loaded ({why})") from None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()  # type: ignore[arg-type]  # transformers' stub of PreTrainedModel.to is wrong
    return tok, model


def load_runner(args, parallel: bool = True):
    """The runner set by the :func:`add_runner_args` options: the HF runner on the model
    of ``args.model``, or with ``--engine URL`` the remote backend on that server (only
    the tokenizer of ``--model`` is loaded; the join and thread header come from its config)."""
    kw = dict(
        max_new_tokens=args.max_new_tokens,
        max_thread_tokens=args.max_thread_tokens,
        max_width=args.max_width,
        max_depth=args.max_depth,
        batch_size=args.batch_size,
        parallel=parallel,
    )
    if getattr(args, "engine", None):
        from .runner.remote import RemoteError, RemoteRunner, join_of, thread_header_of

        if args.constrained:
            raise InputError("--engine: a remote server cannot mask tags at every step; add --no-constrained")
        try:
            return RemoteRunner(
                load_tokenizer(args.model),
                engine=args.engine,
                model=args.engine_model,
                join=args.join or join_of(args.model),
                thread_header=thread_header_of(args.model),
                api_key=os.environ.get(ENGINE_API_KEY_ENV),
                **kw,
            )
        except (ValueError, RemoteError) as e:  # a bad combination, or a server that is down or lacks a feature
            raise InputError(f"--engine {args.engine}: {e}") from None
    tok, model = load_model(args.model, args.dtype, args.device, args.attn)
    return Runner(model, tok, join=args.join, constrained=args.constrained, **kw)


@dataclass
class Decoded:
    """One decoded problem: its samples' rollouts and their scores (:func:`score_sample`)."""

    problem: dict  # as load_problems returns it, with "text": the prompt as given to the runner
    seed: int | None  # the seed of its generators (problem_seed); None when greedy
    rollouts: list[Rollout]
    scores: list[dict]


def decode_and_score(
    runner: Runner, problems: Sequence[dict], args, samples: int, *, total: int | None = None, desc: str = ""
) -> Iterator[tuple[list[Decoded], float]]:
    """Decode ``problems`` with ``samples`` rollouts each, ``args.chunk_size`` problems
    (default 4 x ``args.batch_size``) per runner call, and score every rollout; yields
    ``(decoded problems of the chunk, measured seconds of the chunk)``. Prompts are
    rendered first (``args.chat_template``) into ``problem["text"]``. A progress bar
    (unless ``args.no_progress``) counts ``total`` problems, the others done before."""
    from tqdm import tqdm

    task_mod = get_task(args.task)
    tok = runner.tokenizer
    limits = Limits(max_depth=args.max_depth, max_width=args.max_width)
    for p in problems:
        p["text"] = render_prompt(p["prompt"], tok, args.chat_template, p["origin"])
    chunk = args.chunk_size or 4 * args.batch_size
    total = len(problems) if total is None else total
    bar = tqdm(
        total=total, initial=total - len(problems), unit="problem", desc=desc, disable=args.no_progress, file=sys.stderr
    )
    try:
        for start in range(0, len(problems), chunk):
            batch = problems[start : start + chunk]
            seeds = [problem_seed(args.seed, p["id"]) for p in batch]
            t0 = time.perf_counter()
            rollouts = runner.generate(
                [p["text"] for p in batch],
                n=samples,
                temperature=args.temperature,
                top_p=args.top_p,
                top_k=args.top_k,
                seed=seeds,
            )
            elapsed = time.perf_counter() - t0
            if len(rollouts) != len(batch) * samples:
                raise RuntimeError(f"runner returned {len(rollouts)} rollouts for {len(batch)} prompts x {samples}")
            decoded = []
            for i, p in enumerate(batch):
                ros = rollouts[i * samples : (i + 1) * samples]
                scores = [score_sample(task_mod, p, ro, limits, args.answer_pattern, tok) for ro in ros]
                decoded.append(Decoded(p, seeds[i] if args.temperature > 0 else None, ros, scores))
            yield decoded, elapsed
            bar.update(len(batch))
    finally:
        bar.close()


# ---------------------------------------------------------------------------
# Command line


def opt_int(text: str) -> int | None:
    return None if text.lower() in ("none", "") else int(text)


#: environment variable holding the API key sent to an ``--engine`` server
ENGINE_API_KEY_ENV = "PR_ENGINE_API_KEY"

#: the decoding settings of :func:`add_runner_args` that decide the samples
RUNNER_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "max_new_tokens",
    "max_thread_tokens",
    "max_width",
    "max_depth",
    "join",
    "constrained",
)


def add_runner_args(p: argparse.ArgumentParser, *, split: str, temperature: float, temperature_help: str) -> None:
    """The options :mod:`eval.benchmark` and :mod:`data_gen.self_train` share: the
    data source (``--split`` .. ``--chat-template``), decoding (``--temperature`` ..
    ``--chunk-size``), the model (``--dtype``, ``--device``, ``--attn``) and
    ``--no-progress``. Checked by :func:`check_runner_args`."""
    p.add_argument("--split", default=split, help=f"split of a datasets source (default {split})")
    p.add_argument("--config", default=None, help="configuration name of a datasets source (e.g. main for gsm8k)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="prompts decoded at once by the runner, each with its samples (default 8)",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="problems per runner call, written after each (default 4 x batch size)",
    )
    p.add_argument("--temperature", type=float, default=temperature, help=temperature_help)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=1024, help="sampled-token budget per rollout")
    p.add_argument("--max-thread-tokens", type=opt_int, default=None)
    p.add_argument("--max-width", type=opt_int, default=8)
    p.add_argument("--max-depth", type=opt_int, default=2)
    p.add_argument(
        "--constrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="grammar-constrained decoding: never sample a tag that makes the text malformed "
        "(default on; --no-constrained samples from the model as is)",
    )
    p.add_argument(
        "--engine",
        default=None,
        metavar="URL",
        help="decode on an OpenAI-compatible server (vLLM, SGLang, parallel_reason.serve), e.g. "
        "http://localhost:8000/v1; --model then only gives the tokenizer (API key: $PR_ENGINE_API_KEY, "
        "not $OPENAI_API_KEY, so a real OpenAI key never goes to another server)",
    )
    p.add_argument("--engine-model", default=None, help="model name on --engine (default: the server's first)")
    p.add_argument(
        "--join",
        default=None,
        choices=JOIN_MODES,
        help="join mode (default: the one the model was trained with, from its config; else concat)",
    )
    p.add_argument("--prompt-field", default="prompt", help="record field holding a ready prompt ('' = always build)")
    p.add_argument("--question-field", default=None, help="math: question field (default question|problem|query)")
    p.add_argument("--answer-field", default=None, help="math: answer field (default answer|solution|final_answer)")
    p.add_argument(
        "--answer-pattern",
        default=None,
        help="math: read the model's answer with this regex or alias (gsm8k, answer_is) instead of \\boxed{}",
    )
    p.add_argument("--prompt-template", default=None, help="math: prompt template with {question}")
    p.add_argument("--chat-template", action="store_true", help="render prompts with the tokenizer's chat template")
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    p.add_argument("--no-progress", action="store_true")


def parse_runner_args(p: argparse.ArgumentParser, argv: Sequence[str] | None, samples_flag: str):
    """Parse a decode-and-score command line (python logging on) and check its runner
    options with :func:`check_runner_args`; ``samples_flag`` names the samples option."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = p.parse_args(argv)
    check_runner_args(p, args, getattr(args, samples_flag.lstrip("-").replace("-", "_")), samples_flag)
    return args


def check_runner_args(p: argparse.ArgumentParser, args, samples: int, samples_flag: str) -> None:
    """``p.error`` on options of :func:`add_runner_args` that cannot work together;
    :class:`~parallel_reason.inputs.InputError` on a ``--device`` this machine lacks
    or a ``--model`` that does not exist (before any data or model is loaded)."""
    if samples < 1:
        p.error(f"{samples_flag} must be >= 1")
    if samples > 1 and args.temperature == 0:
        p.error(f"{samples_flag} > 1 needs --temperature > 0 (greedy samples are identical)")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        p.error("need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0")
    if args.batch_size < 1 or (args.chunk_size is not None and args.chunk_size < 1):
        p.error("--batch-size and --chunk-size must be >= 1")
    if args.max_new_tokens < 1:
        p.error("--max-new-tokens must be >= 1")
    if args.task != "math" and (args.answer_pattern or args.prompt_template):
        p.error("--answer-pattern and --prompt-template apply to --task math only")
    if args.prompt_template is not None and "{question}" not in args.prompt_template:
        p.error("--prompt-template must contain {question}")
    check_device(args.device)
    check_model_path(args.model)


__all__ = [
    "SAMPLE_FIELDS",
    "Decoded",
    "add_runner_args",
    "check_runner_args",
    "completion_text",
    "decode_and_score",
    "load_model",
    "load_problems",
    "load_runner",
    "opt_int",
    "problem_seed",
    "score_sample",
]
