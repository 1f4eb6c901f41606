"""Saving trained models and publishing them on the Hugging Face Hub.

:func:`render_model_card` writes the ``README.md`` card of every model folder (the
folders themselves are written by :func:`parallel_reason.training.save_model`);
:func:`push` checks a folder, refreshes its card and uploads it::

    python -m parallel_reason.hub push --model runs/sft/countdown_qwen/final --repo-id me/countdown-par [--eval RUN_DIR ...] [--dry-run]

What is checked, written and uploaded: docs/design.md#hub.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .eval_runs import Run, baseline_speedups
from .format import ALL_TAGS, CONTROL_TAGS, PARALLEL_CLOSE, THREAD_CLOSE, THREAD_OPEN
from .inputs import InputError
from .llm import redact
from .metrics import markdown_table
from .tokens import load_tokenizer

log = logging.getLogger(__name__)

CARD_NAME = "README.md"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


#: order of the card's ``##`` sections (a refreshed card keeps this order)
SECTION_ORDER = (
    "Training",
    "Results",
    "Evaluation",
    "Control-token grammar",
    "Usage",
    "Notes",
    "Reproduce",
    "Training config",
)

#: columns of the evaluation table: (header, key of a record, format)
EVAL_COLUMNS = [
    ("run", "name", "{}"),
    ("task", "task", "{}"),
    ("mode", "mode", "{}"),
    ("problems", "n_problems", "{:d}"),
    ("samples / problem", "samples_per_problem", "{:d}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("pass@k", "pass_at_k", None),
    ("total tokens", "total_tokens_mean", "{:.1f}"),
    ("critical path", "critical_path_mean", "{:.1f}"),
    ("speedup (mean of ratios)", "speedup_mean_of_ratios", "{:.3f}"),
    ("speedup (ratio of means)", "speedup_ratio_of_means", "{:.3f}"),
    ("vs seq (ratio of means)", "speedup_vs_baseline_ratio_of_means", "{:.3f}"),
    ("format valid", "format_valid_rate", "{:.3f}"),
]

#: task -> code of an example prompt in the usage snippet
_TASK_EXAMPLES = {
    "countdown": "task.prompt([3, 5, 7, 11], 24)",
    "math": 'task.prompt("Tom has 3 boxes of 12 pencils and gives away 7. How many are left?")',
}


def _stage(card: dict) -> str:
    stage = card.get("stage")
    if stage:
        return str(stage)
    cfg = card.get("config") or {}
    return "grpo" if "num_generations" in cfg else "sft"


def _task(card: dict) -> str | None:
    cfg = card.get("config") or {}
    for t in (card.get("task"), cfg.get("task"), cfg.get("generate_data")):
        if t in _TASK_EXAMPLES:
            return t
    return None


#: what the continuation after a block sees, per join mode (model card)
_JOIN_TEXT = {
    "concat": "sees the prefix and all threads re-read as one linear text (decodable by any engine "
    "with prefix caching).",
    "tree": "attends to every thread's tokens where they are, nothing re-read (decode with the "
    "parallel_reason runner).",
    "summary": "attends to each thread's opener and result (from `<Result>`) only, where they are; "
    "the threads' reasoning stays hidden (decode with the parallel_reason runner).",
}


def usage_lines(card: dict) -> list[str]:
    """Body of the ``Usage`` section: a runnable fork/join decoding snippet with
    :class:`parallel_reason.runner.Runner` (limits and join mode from the training
    config when the card has one) and the matching ``eval.benchmark`` command."""
    cfg = card.get("config") or {}
    path = card.get("repo_id") or "PATH"  # PATH: the local directory
    parallel = (
        card.get("mode") or cfg.get("mode") or ("parallel" if cfg.get("parallel", True) else "sequential")
    ) != "sequential"
    join = card.get("join") or cfg.get("join") or "concat"
    kw = [f"max_new_tokens={int(cfg.get('max_new_tokens') or 1024)}"]
    if cfg.get("max_thread_tokens"):
        kw.append(f"max_thread_tokens={int(cfg['max_thread_tokens'])}")
    kw += [
        f"max_width={cfg.get('max_width', 8)!r}",
        f"max_depth={cfg.get('max_depth', 2)!r}",
        f"join={json.dumps(join)}",
    ]
    if not parallel:
        kw.append("parallel=False")
    task = _task(card)
    chat = bool(cfg.get("apply_chat_template"))
    code = [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        "from parallel_reason.runner import Runner",
    ]
    if chat:
        code.append("from parallel_reason.data import render_prompt")
    if task:
        code.append("from parallel_reason.tasks import get_task")
    code += [
        "",
        f"path = {json.dumps(path)}  # hub id or local directory",
        "tok = AutoTokenizer.from_pretrained(path)",
        'model = AutoModelForCausalLM.from_pretrained(path).eval()  # .to("cuda") on a GPU',
        f"runner = Runner(model, tok, {', '.join(kw)})",
    ]
    if task:
        code += [f"task = get_task({json.dumps(task)})", f"prompt = {_TASK_EXAMPLES[task]}"]
    else:
        code.append('prompt = "..."  # a prompt formatted as in training')
    if chat:
        code.append("prompt = render_prompt(prompt, tok, apply_chat_template=True)  # as in training")
    code += [
        "rollouts = runner.generate([prompt], n=1, temperature=0.0, seed=0)  # greedy; n > 1: temperature > 0",
        "r = rollouts[0]",
        "print(r.completion)",
        "print(r.finish_reason, r.total_tokens, r.critical_path)  # sampled tokens, longest causal chain",
    ]
    if task:
        code.append("print(task.extract_answer(r.completion))")
    how = (
        (
            "The runner forks one concurrent thread per outline of a `<Parallel>` block, writes the thread openers "
            "and the join itself and batches the decode steps of all live threads."
        )
        if parallel
        else (
            "This is a sequential model: the runner decodes it with `parallel=False` (control tags are ordinary "
            "tokens, nothing is forked)."
        )
    )
    lines = [
        "Decode with the fork/join runner of `parallel_reason` (install this project: `pip install -e .` "
        "in its repository). " + how,
        "",
        "```python",
        *code,
        "```",
        "",
    ]
    bench = ["python -m eval.benchmark", f"--model {path}"]
    bench += [
        f"--task {task}" if task else "--task TASK",
        "--data test.jsonl",
        f"--mode {'parallel' if parallel else 'sequential'}",
        "--out runs/eval",
    ]
    lines += [
        "Benchmark (accuracy, total tokens, critical path, speedup; `results.jsonl` + `summary.json`):",
        "",
        "```bash",
        " ".join(bench),
        "```",
        "",
    ]
    lines += [
        "A plain `model.generate` call decodes one linear sequence: it never forks the threads, and the "
        "thread openers and the join, which the runner writes, were never trained.",
        "",
    ]
    return lines


def reproduce_lines(card: dict) -> list[str]:
    """Body of the ``Reproduce`` section: the commands that rerun the training
    recipe with the config stored in the card (empty without a config)."""
    cfg = card.get("config")
    if not cfg:
        return []
    stage = _stage(card)
    recipe = "recipes/grpo.py" if stage == "grpo" else "recipes/sft.py"
    lines = [
        "From a checkout of `parallel_reason`, write the training config of this card (the YAML block below) "
        "to `config.yaml`, then run the recipe (`--push_to_hub false`: do not publish the rerun):",
        "",
        "```bash",
        'python -c "import sys, yaml; from parallel_reason.hub import read_card_config; '
        "yaml.safe_dump(read_card_config(sys.argv[1]), open('config.yaml', 'w'), sort_keys=False)\" README.md",
        f"accelerate launch {recipe} --config config.yaml --push_to_hub false",
        f"# several GPUs: accelerate launch --config_file configs/accelerate/ddp.yaml {recipe} "
        "--config config.yaml --push_to_hub false",
        "```",
        "",
    ]
    notes = []
    if cfg.get("generate_data"):
        notes.append(
            f"Missing `train_data` / `eval_data` files are generated first with "
            f"`python -m data_gen.{cfg['generate_data']}` (seeded, so the rerun sees the same problems)."
        )
    base = str(cfg.get("model_name_or_path") or "")
    if stage == "grpo":
        notes.append(
            f"GRPO starts from `model_name_or_path` (`{base}`), the SFT model: when that is a local "
            "directory, run the SFT recipe first (its own card holds its config)."
        )
    elif base == "tiny":
        notes.append(
            "`model_name_or_path: tiny` builds the tiny Qwen2 and its BPE tokenizer from the training "
            "data, so the rerun needs no download."
        )
    for n in notes:
        lines.append(f"- {n}")
    if notes:
        lines.append("")
    return lines


def eval_lines(records: list[dict]) -> list[str]:
    """Body of the ``Evaluation`` section: one table row per ``eval.benchmark`` run
    (see :func:`eval_records`), then each run's decoding settings and command."""
    if not records:
        return []
    optional = ("pass_at_k", "speedup_vs_baseline_ratio_of_means")  # shown when a run has them
    cols = [c for c in EVAL_COLUMNS if c[1] not in optional or any(r.get(c[1]) for r in records)]
    lines = markdown_table(records, cols)
    lines += [
        "",
        "Accuracy: mean correctness over every sample (= pass@1). Total tokens: sampled tokens of a "
        "rollout, all threads together; critical path: sampled tokens on its longest causal chain; "
        "speedup: total tokens / critical path of the same sample.",
    ]
    if any("speedup_vs_baseline_ratio_of_means" in r for r in records):
        base = next((r["name"] for r in records if r.get("is_baseline")), "the sequential run")
        lines += [
            "",
            f"vs seq: mean total tokens of the sequential baseline `{base}` / mean critical path, on the "
            "problems both runs hold.",
        ]
    lines.append("")
    for rec in records:
        dec = rec.get("decoding") or {}
        bits = [
            f"{k} {dec[k]}"
            for k in ("temperature", "samples", "max_new_tokens", "max_width", "max_depth")
            if dec.get(k) is not None
        ]
        head = f"- `{rec['name']}`" + (f" ({', '.join(bits)})" if bits else "")
        lines.append(head + (f": `{rec['command']}`" if rec.get("command") else ""))
    lines.append("")
    return lines


def render_model_card(card: dict, tokenizer=None) -> str:
    """Markdown model card. Recognised keys of ``card`` (all optional):
    ``model_name, base_model, datasets (list), mode, join, summary, metrics (dict),
    config (dict, the training config), tags (list), license, extra (dict), stage
    (sft | grpo), repo_id (used in the usage snippet), task, eval (list of records
    from :func:`eval_records`)``."""
    card = dict(card or {})
    base = card.get("base_model")
    tags = ["parallel-reasoning", "fork-join", "parallel_reason"] + list(card.get("tags", []))
    front: dict[str, Any] = {"library_name": "transformers", "tags": tags}
    if base and not os.path.isabs(str(base)) and not str(base).startswith(".") and str(base) != "tiny":
        front["base_model"] = str(base)
    if card.get("license"):
        front["license"] = card["license"]
    ds = [d for d in card.get("datasets", []) if d and not os.path.exists(str(d))]
    if ds:
        front["datasets"] = ds
    name = card.get("model_name") or "parallel_reason model"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    default_summary = (
        "A causal language model fine-tuned with `parallel_reason` to reason in fork/join "
        "parallel threads: it writes a `<Parallel>` block with one outline per thread, the threads "
        "are decoded concurrently by the runner, and the reasoning continues after the join."
    )
    if card.get("mode") == "sequential":
        default_summary = (
            "A causal language model fine-tuned with `parallel_reason` on linear (sequential) reasoning: "
            "the sequential baseline of the fork/join models. Its tokenizer carries the control tokens "
            "below, but its training data had no `<Parallel>` block."
        )
    lines += [card.get("summary") or default_summary, ""]
    lines += ["## Training", ""]
    rows = [
        ("stage", card.get("stage", "sft")),
        ("base model", base),
        ("training data", ", ".join(map(str, card.get("datasets", [])))),
        ("mode", card.get("mode")),
        ("join", card.get("join")),
    ]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows if v not in (None, "")]
    lines.append("")
    metrics = card.get("metrics") or {}
    if metrics:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
        lines.append("")
    ev = eval_lines(list(card.get("eval") or []))
    if ev:
        lines += ["## Evaluation", "", *ev]
    lines += [
        "## Control-token grammar",
        "",
        "Each tag below is one added token of the tokenizer (not a special token, so "
        "`decode(..., skip_special_tokens=True)` keeps it):",
        "",
        "| tag | token id |",
        "|---|---|",
    ]
    for tag in ALL_TAGS:
        tid = None
        if tokenizer is not None:
            t = tokenizer.convert_tokens_to_ids(tag)
            tid = t if t is not None and t != getattr(tokenizer, "unk_token_id", None) else "missing"
            if tid == "missing" and tag not in CONTROL_TAGS:
                tid = "not added (needed by the summary join only)"
        lines.append(f"| `{tag}` | {tid if tid is not None else ''} |")
    lines += [
        "",
        "```text",
        "...sequential reasoning...",
        "<Parallel>",
        "<Outlines><Outline>1: plan of thread 1</Outline><Outline>2: plan of thread 2</Outline></Outlines>",
        "<Thread>1: text of thread 1</Thread>",
        "<Thread>2: text of thread 2</Thread>",
        "</Parallel>",
        "...sequential continuation, possibly more blocks...",
        "```",
        "",
        "- The number of outlines is the number of threads; threads may nest blocks.",
        "- A thread sees the shared prefix and the outlines, never its siblings.",
        f"- The runner writes each thread's opener and the join (`\\n{PARALLEL_CLOSE}`) itself: those "
        f"tokens were never trained. The model writes everything else, including each `{THREAD_CLOSE}`. "
        + (
            f"Thread header `outline`: the opener is `\\n{THREAD_OPEN}` followed by the thread's own "
            "outline (`i: plan`), copied from the block; the mode is in `config.json` (`thread_header`) "
            "and the runner reads it."
            if card.get("thread_header") == "outline"
            else f"The opener is `\\n{THREAD_OPEN}i:`."
        ),
        f"- Join mode `{card.get('join') or 'concat'}`: after `{PARALLEL_CLOSE}` the continuation "
        + _JOIN_TEXT.get(card.get("join") or "concat", "follows the join mode of the training run."),
        "",
    ]
    lines += ["## Usage", "", *usage_lines(card)]
    extra = card.get("extra") or {}
    if extra:
        lines += ["## Notes", ""] + [f"- {k}: {_fmt(v)}" for k, v in extra.items()] + [""]
    rep = reproduce_lines(card)
    if rep:
        lines += ["## Reproduce", "", *rep]
    cfg = card.get("config")
    if cfg:
        lines += ["## Training config", "", "```yaml", yaml.safe_dump(_plain(cfg), sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def read_card_config(path: str | os.PathLike) -> dict | None:
    """The training config stored in a model card (``## Training config`` YAML block)."""
    text = (
        Path(path).read_text(encoding="utf-8")
        if Path(path).is_file()
        else (Path(path) / CARD_NAME).read_text(encoding="utf-8")
    )
    marker = "## Training config"
    if marker not in text:
        return None
    block = text.split(marker, 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block)


# ---------------------------------------------------------------------------
# Refreshing a saved card


def _split_sections(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """``(head lines, [(title, body lines)])`` of a markdown card split at its
    ``## `` headings (headings inside code fences do not count)."""
    head: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    fence = False
    for line in text.split("\n"):
        if line.startswith("```"):
            fence = not fence
        if not fence and line.startswith("## "):
            sections.append((line[3:].strip(), []))
        elif sections:
            sections[-1][1].append(line)
        else:
            head.append(line)
    return head, sections


def _join_sections(head: list[str], sections: list[tuple[str, list[str]]]) -> str:
    out = list(head)
    for title, body in sections:
        out.append(f"## {title}")
        out.extend(body)
    return "\n".join(out)


def _put_section(sections: list[tuple[str, list[str]]], title: str, body: list[str]) -> None:
    """Replace section ``title`` in place, or insert it where :data:`SECTION_ORDER` puts it."""
    for i, (t, _) in enumerate(sections):
        if t == title:
            sections[i] = (title, body)
            return
    rank = SECTION_ORDER.index(title) if title in SECTION_ORDER else len(SECTION_ORDER)
    at = len(sections)
    for i, (t, _) in enumerate(sections):
        if t in SECTION_ORDER and SECTION_ORDER.index(t) > rank:
            at = i
            break
    sections.insert(at, (title, body))


def _card_fields(text: str) -> dict:
    """What a saved card says about its run: the training config (YAML block) and
    the ``stage``, ``mode`` and ``join`` rows of its ``Training`` table."""
    fields: dict[str, Any] = {}
    _, sections = _split_sections(text)
    for title, body in sections:
        if title == "Training config":
            block = "\n".join(body)
            if "```yaml" in block:
                cfg = yaml.safe_load(block.split("```yaml", 1)[1].split("```", 1)[0])
                if isinstance(cfg, dict):
                    fields["config"] = cfg
        elif title == "Training":
            for line in body:
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if len(cells) == 2 and cells[0] in ("stage", "mode", "join"):
                    fields[cells[0]] = cells[1]
    cfg = fields.get("config") or {}
    fields.setdefault("mode", cfg.get("mode") or ("sequential" if cfg.get("parallel") is False else None))
    fields.setdefault("join", cfg.get("join"))
    return {k: v for k, v in fields.items() if v is not None}


def refresh_model_card(
    text: str | None,
    repo_id: str | None = None,
    evals: Sequence[dict] = (),
    tokenizer=None,
    model_name: str | None = None,
) -> str:
    """The card ``text`` (as :func:`parallel_reason.training.save_model` wrote it) brought up to date for
    publishing: everything it holds is kept, and the sections this module writes are
    (re)rendered: ``Usage`` (runner snippet for ``repo_id``), ``Control-token grammar``
    (token ids of ``tokenizer``), ``Reproduce`` (from the stored training config) and,
    when ``evals`` records (:func:`eval_records`) are given, ``Evaluation``. Without ``text`` a fresh card is
    rendered (it then has no training recipe)."""
    if not text or not text.strip():
        return render_model_card(
            {
                "model_name": model_name or (repo_id or "").split("/")[-1] or None,
                "repo_id": repo_id,
                "eval": list(evals),
            },
            tokenizer,
        )
    fields = _card_fields(text)
    card = {**fields, "repo_id": repo_id, "eval": list(evals)}
    _, fresh = _split_sections(render_model_card(card, tokenizer))
    fresh_by_title = dict(fresh)
    head, sections = _split_sections(text.rstrip("\n") + "\n")
    wanted = ["Control-token grammar", "Usage", "Reproduce"] + (["Evaluation"] if evals else [])
    for title in wanted:
        if title in fresh_by_title:
            _put_section(sections, title, fresh_by_title[title])
    # a section that ended the old card has no blank line before the next heading
    sections = [(t, b if (not b or b[-1] == "") else b + [""]) for t, b in sections]
    return _join_sections(head, sections).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------
# Evaluation runs


def eval_records(eval_dirs: Sequence[str | os.PathLike], repo_id: str | None = None) -> list[dict]:
    """One record per ``eval.benchmark`` run directory (its ``summary.json``), for
    the card's evaluation table: the summary's metrics, the run name (directory
    name), the speedup against the first sequential run when one is given (its
    ``results.jsonl`` rows, as :mod:`eval.compare` computes it) and the benchmark
    command with ``--model`` pointing at ``repo_id``."""
    summary_name = "summary.json"
    runs = []
    seen: dict[str, int] = {}
    for d in eval_dirs:
        path = Path(d)
        sp = path / summary_name
        if not sp.is_file():
            raise PushError(
                f"--eval {path}: no {summary_name} (write it with python -m eval.benchmark ... --out {path})"
            )
        try:
            summary = json.loads(sp.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PushError(f"--eval {sp}: not valid JSON ({e})") from None
        if not isinstance(summary, dict) or "n_problems" not in summary:
            raise PushError(f"--eval {sp}: not an eval.benchmark summary (no n_problems)")
        name = path.resolve().name
        if name in seen:
            seen[name] += 1
            name = f"{name}#{seen[name]}"
        else:
            seen[name] = 0
        runs.append((path, name, summary))
    records = []
    for _path, name, summary in runs:
        rec = {k: summary.get(k) for _, k, _ in EVAL_COLUMNS if k in summary}
        rec.update(
            name=name, task=summary.get("task"), mode=summary.get("mode"), decoding=summary.get("decoding") or {}
        )
        argv = summary.get("argv")
        if isinstance(argv, list):
            rec["command"] = "python -m eval.benchmark " + shlex.join(_portable_argv(argv, repo_id, name))
        records.append(rec)
    base = next((i for i, (_, _, s) in enumerate(runs) if s.get("mode") == "sequential"), None)
    if base is not None and len(runs) > 1:
        base_run = Run(runs[base][0])
        records[base]["is_baseline"] = True
        for i, (path, _, _) in enumerate(runs):
            if i != base:
                speedups = baseline_speedups(Run(path), base_run)
                if speedups.get("baseline_common_problems"):
                    records[i].update({k: v for k, v in speedups.items() if k.startswith("speedup_vs_baseline")})
    return records


def _portable_argv(argv: list, repo_id: str | None, name: str) -> list[str]:
    """``argv`` of a benchmark command as a card reader can rerun it: ``--model``
    names ``repo_id``, ``--out`` is ``runs/eval/NAME`` and an absolute ``--data`` path
    is cut to its file name (the run's local paths mean nothing elsewhere)."""
    out = [str(a) for a in argv]
    repl = {"--out": f"runs/eval/{name}"}
    if repo_id:
        repl["--model"] = repo_id
    for i, a in enumerate(out):
        if a == "--data" and i + 1 < len(out) and os.path.isabs(out[i + 1]):
            repl["--data"] = Path(out[i + 1]).name
        elif a.startswith("--data=") and os.path.isabs(a.split("=", 1)[1]):
            repl["--data"] = Path(a.split("=", 1)[1]).name
    for i, a in enumerate(out):
        if a in repl and i + 1 < len(out):
            out[i + 1] = repl[a]
        elif a.split("=", 1)[0] in repl and "=" in a:
            out[i] = f"{a.split('=', 1)[0]}={repl[a.split('=', 1)[0]]}"
    return out


# ---------------------------------------------------------------------------
# Checking a folder before it is uploaded


class PushError(InputError):
    """A model folder (or an argument of :func:`push`) that cannot be published."""


class PushFailed(RuntimeError):
    """The hub refused the upload or could not be reached; the message is redacted of the token."""


#: never uploaded: trainer/optimizer state, checkpoints, temporary and cache files
IGNORE_PATTERNS = [
    "checkpoint-*",
    "*/checkpoint-*",
    "accelerate_state",
    "accelerate_state/*",
    "*/accelerate_state/*",
    "trainer_state.json",
    "*/trainer_state.json",
    "training_args.bin",
    "*/training_args.bin",
    "*optimizer*",
    "*scheduler*.pt",
    "*scheduler*.bin",
    "*rng_state*",
    "*random_states*",
    "*scaler.pt",
    "*.tmp",
    "*.lock",
    "*.pyc",
    "__pycache__/*",
    "*/__pycache__/*",
    ".DS_Store",
    "*/.DS_Store",
    ".cache/*",
    ".git/*",
    "logs/*",
    "wandb/*",
]

#: suffixes of pickled files: they can run code when loaded, so they are refused
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
#: any of these holds the vocabulary of a tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
GENERATION_CONFIG = "generation_config.json"
#: files of an earlier push to the same repo that this upload replaces (removed first
#: when the new folder does not have them): a stale adapter_config.json would make
#: transformers load the repo as an adapter, a stale shard index would shadow the weights
REPLACED_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "adapter_config.json",
    "adapter_model.*",
    GENERATION_CONFIG,
]


def upload_files(model_dir: str | os.PathLike) -> list[str]:
    """Relative paths (posix) of the files under ``model_dir`` that an upload sends:
    everything except :data:`IGNORE_PATTERNS` (the same filter ``upload_folder`` applies)."""
    from huggingface_hub.utils import filter_repo_objects

    root = Path(model_dir)
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS))


@dataclass
class FolderCheck:
    """Outcome of :func:`check_folder`."""

    kind: str  # "model" (config.json + weights) or "adapter" (PEFT)
    files: list[str]  # what an upload sends
    tokenizer: Any
    generation_config: Any = None  # a GenerationConfig to write when the folder has none


def check_folder(model_dir: str | os.PathLike) -> FolderCheck:
    """Check that ``model_dir`` is publishable; :class:`PushError` naming the file and
    the problem otherwise. Required: safetensors weights (a full model: ``config.json``
    and ``model.safetensors`` or the shards of ``model.safetensors.index.json``; a PEFT
    adapter: ``adapter_config.json`` + ``adapter_model.safetensors``), no pickled file
    among the uploaded ones, tokenizer files whose tokenizer (``AutoTokenizer``) has
    every control tag as one token (inside the embedding matrix of a full model).
    A missing ``generation_config.json`` is built from ``config.json`` and the tokenizer."""
    root = Path(model_dir)
    if not root.is_dir():
        raise PushError(f"{root}: no such directory")
    files = upload_files(root)
    for f in files:
        if f.endswith(PICKLE_SUFFIXES):
            raise PushError(
                f"{root / f}: pickled file ({Path(f).suffix}) refused: pickles run code when loaded; "
                "save weights as safetensors (parallel_reason.training.save_model or "
                "save_pretrained(..., safe_serialization=True)) and remove it"
            )
    top = {f for f in files if "/" not in f}
    model_cfg: dict = {}
    if "config.json" in top:
        kind = "model"
        model_cfg = _read_json(root / "config.json")
        index = root / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            missing = [s for s in shards if s not in top]
            if not shards or missing:
                raise PushError(f"{index}: shard(s) {missing or '(none listed)'} missing from {root}")
        elif not any(f.endswith(".safetensors") for f in top):
            raise PushError(
                f"{root}: no *.safetensors weights next to config.json "
                "(model.safetensors or model.safetensors.index.json + shards)"
            )
    elif "adapter_config.json" in top:
        kind = "adapter"
        _read_json(root / "adapter_config.json")
        if "adapter_model.safetensors" not in top:
            raise PushError(f"{root}: PEFT adapter without adapter_model.safetensors")
    else:
        raise PushError(f"{root}: no config.json (a model) or adapter_config.json (a PEFT adapter)")
    if "tokenizer_config.json" not in top or not top & set(TOKENIZER_FILES):
        raise PushError(
            f"{root}: tokenizer files missing (need tokenizer_config.json and one of "
            f"{', '.join(TOKENIZER_FILES)}); save the tokenizer with the model"
        )
    tokenizer = _load_tokenizer(root)
    _check_tags(root, tokenizer, model_cfg.get("vocab_size") if kind == "model" else None)
    gen = None
    if GENERATION_CONFIG in top:
        from transformers import GenerationConfig

        try:
            GenerationConfig.from_pretrained(root)
        except Exception as e:  # noqa: BLE001 - any parse error is reported as such
            raise PushError(f"{root / GENERATION_CONFIG}: unreadable ({e})") from None
    else:
        gen = _generation_config(root, kind, tokenizer)
    return FolderCheck(kind, files, tokenizer, gen)


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PushError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise PushError(f"{path}: expected a JSON object")
    return obj


def _load_tokenizer(root: Path):
    try:
        return load_tokenizer(str(root))
    except Exception as e:  # noqa: BLE001 - report why the tokenizer does not load
        raise PushError(f"{root}: AutoTokenizer cannot load the tokenizer ({type(e).__name__}: {e})") from None


def _check_tags(root: Path, tokenizer, vocab_size: int | None) -> None:
    unk = getattr(tokenizer, "unk_token_id", None)
    for tag in CONTROL_TAGS:
        tid = tokenizer.convert_tokens_to_ids(tag)
        ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
        if tid is None or tid == unk or list(ids) != [tid]:
            raise PushError(
                f"{root}: the tokenizer encodes control tag {tag!r} as {len(ids)} tokens {list(ids)}, "
                "not one: add the tags with parallel_reason.tokens.add_control_tokens"
            )
        if vocab_size is not None and tid >= int(vocab_size):
            raise PushError(
                f"{root}: control tag {tag!r} has token id {tid}, outside the model's embeddings "
                f"(config.json vocab_size {vocab_size}); resize them (add_control_tokens(tok, model))"
            )


def _generation_config(root: Path, kind: str, tokenizer):
    """A generation config for a folder that has none: the model config's defaults
    (full model) and the tokenizer's EOS / pad ids."""
    from transformers import AutoConfig, GenerationConfig

    if kind == "model":
        try:
            gc = GenerationConfig.from_model_config(AutoConfig.from_pretrained(root))
        except Exception as e:  # noqa: BLE001
            raise PushError(f"{root / 'config.json'}: cannot build a generation config from it ({e})") from None
    else:
        gc = GenerationConfig()
    for key, tid in (("eos_token_id", tokenizer.eos_token_id), ("pad_token_id", tokenizer.pad_token_id)):
        if getattr(gc, key, None) is None and tid is not None:
            setattr(gc, key, tid)
    return gc


# ---------------------------------------------------------------------------
# Publishing


@dataclass
class PushResult:
    """What :func:`push` sent (or, with ``dry_run``, would send)."""

    repo_id: str
    kind: str
    files: list[str]
    card: str
    private: bool
    revision: str | None = None
    dry_run: bool = False
    url: str | None = None


def _check_repo_id(repo_id: str | None) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id or not str(repo_id).strip():
        raise PushError("a repo id is needed (namespace/name, e.g. my-user/countdown-parallel)")
    try:
        validate_repo_id(str(repo_id))
    except HFValidationError as e:
        raise PushError(f"invalid repo id {repo_id!r}: {e}") from None
    return str(repo_id)


def push(
    model_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    eval_dirs: Sequence[str | os.PathLike] = (),
    create_pr: bool = False,
    dry_run: bool = False,
) -> PushResult:
    """Publish ``model_dir`` (as :func:`parallel_reason.training.save_model` wrote it) to the model repo
    ``repo_id``.

    The folder is checked first (:func:`check_folder`), a missing
    ``generation_config.json`` is written, and ``README.md`` is refreshed
    (:func:`refresh_model_card`: runner usage for ``repo_id``, reproduce commands, an
    evaluation table from the ``eval.benchmark`` run directories ``eval_dirs``). Then
    ``HfApi.create_repo(exist_ok=True)`` and one ``upload_folder`` commit (to the
    branch ``revision``, created when missing, or as a pull request with
    ``create_pr``) that leaves out :data:`IGNORE_PATTERNS`.

    ``token``: a Hugging Face token; None uses ``HF_TOKEN`` or the stored login. It
    is passed to ``HfApi`` only, never printed or logged; a failed upload raises
    :class:`PushFailed`, its message redacted of the token (a server may echo it), and
    puts the folder's old ``README.md`` / generation config back. ``dry_run`` writes
    and uploads nothing: the result lists the files and holds the card."""
    repo_id = _check_repo_id(repo_id)
    root = Path(model_dir)
    check = check_folder(root)
    records = eval_records(eval_dirs, repo_id) if eval_dirs else []
    card_path = root / CARD_NAME
    old = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    if old is None or "## Training config" not in old:
        log.warning(
            "%s: no model card with a training config (not saved by parallel_reason.training.save_model?); "
            "the published card will have no training recipe",
            root,
        )
    card = refresh_model_card(old, repo_id, records, check.tokenizer, model_name=repo_id.split("/")[-1])
    files = sorted(set(check.files) | {CARD_NAME} | ({GENERATION_CONFIG} if check.generation_config else set()))
    result = PushResult(repo_id, check.kind, files, card, bool(private), revision, dry_run)
    if dry_run:
        return result
    if not token:
        from huggingface_hub import get_token

        token = get_token()  # HF_TOKEN or the stored login
        if not token:
            raise PushError(
                "no Hugging Face token: set HF_TOKEN (or name another variable with --token-env) "
                "or log in with `hf auth login`"
            )
    try:
        result.url = _upload(
            root,
            repo_id,
            check,
            card,
            len(files),
            private,
            token,
            revision,
            create_pr,
            commit_message or f"Upload {check.kind} with parallel_reason.hub ({len(files)} files)",
        )
    except Exception as e:  # noqa: BLE001 - the hub refused or could not be reached
        # the server's message may echo the token: never pass it on as it came
        raise PushFailed(redact(f"push to {repo_id} failed ({type(e).__name__}: {e})", [token])) from None
    log.info("pushed %s: %s", repo_id, result.url)
    return result


def _upload(
    root: Path,
    repo_id: str,
    check: FolderCheck,
    card: str,
    n_files: int,
    private: bool,
    token: str,
    revision: str | None,
    create_pr: bool,
    message: str,
) -> str:
    """Write the card (and a missing generation config) into ``root``, upload it and
    return the commit URL. On failure ``root`` gets its old files back, so that a
    failed push leaves the folder as it was."""
    card_path, gen_path = root / CARD_NAME, root / GENERATION_CONFIG
    saved = {p: (p.read_bytes() if p.is_file() else None) for p in (card_path, gen_path)}
    try:
        if check.generation_config is not None:
            check.generation_config.save_pretrained(root)
            log.info("wrote %s", gen_path)
        card_path.write_text(card, encoding="utf-8")
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=bool(private), exist_ok=True, repo_type="model")
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        log.info("uploading %d files of %s to %s%s", n_files, root, repo_id, f"@{revision}" if revision else "")
        info = api.upload_folder(
            folder_path=str(root),
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=message,
            create_pr=create_pr,
            ignore_patterns=list(IGNORE_PATTERNS),
            delete_patterns=list(REPLACED_PATTERNS),
        )
    except BaseException:
        for p, data in saved.items():
            if data is None:
                p.unlink(missing_ok=True)
            else:
                p.write_bytes(data)
        raise
    return getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}"


def require_token() -> None:
    """Raise :class:`PushError` now when no Hugging Face token is available (trainers
    call it before training with ``push_to_hub: true``, not hours later)."""
    from huggingface_hub import get_token

    if not get_token():
        raise PushError(
            "push_to_hub: no Hugging Face token: set HF_TOKEN or log in with `hf auth login` "
            "(or turn push_to_hub off and push later with python -m parallel_reason.hub push)"
        )


def push_trained(final_dir: str | os.PathLike, repo_id: str, private: bool = False) -> PushResult:
    """Push the final model of a training run (``push_to_hub: true``): ``final_dir``,
    or its ``adapter`` folder when only a PEFT adapter was saved (ZeRO-3 without
    merge). A failure names the saved folder and the command that retries the push."""
    final = Path(final_dir)
    target = final if (final / "config.json").is_file() or not (final / "adapter").is_dir() else final / "adapter"
    try:
        return push(target, repo_id, private=private)
    except Exception as e:
        raise RuntimeError(
            f"push_to_hub: publishing {target} to {repo_id} failed ({type(e).__name__}: {e}); the "
            f"model is saved; retry with: python -m parallel_reason.hub push --model {target} "
            f"--repo-id {repo_id}{' --private' if private else ''}"
        ) from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m parallel_reason.hub",
        description="Publish a trained parallel_reason model on the Hugging Face Hub.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser(
        "push",
        help="check a model folder, refresh its card and upload it",
        description="Check a saved model folder (safetensors, tokenizer with the control tokens, "
        "generation config), refresh its model card and upload it.",
    )
    q.add_argument("--model", required=True, help="model folder (e.g. runs/sft/NAME/final) or a PEFT adapter folder")
    q.add_argument("--repo-id", required=True, help="hub model repo, namespace/name (created when missing)")
    q.add_argument(
        "--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)"
    )
    q.add_argument(
        "--eval",
        nargs="+",
        action="extend",
        default=[],
        metavar="RUN_DIR",
        help="eval.benchmark run directories (summary.json) for the card's evaluation table",
    )
    q.add_argument("--revision", default=None, help="branch to commit to (created when missing; default main)")
    q.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    q.add_argument("--commit-message", default=None, help="default: 'Upload model with parallel_reason.hub (N files)'")
    q.add_argument(
        "--token-env",
        default="HF_TOKEN",
        help="environment variable holding the token (default HF_TOKEN; unset: the stored login)",
    )
    q.add_argument("--dry-run", action="store_true", help="print the files and the card; write and upload nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``python -m parallel_reason.hub push ...``); returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    token = os.environ.get(args.token_env) or None
    if token is None and args.token_env != "HF_TOKEN" and not args.dry_run:
        print(f"error: --token-env {args.token_env}: that environment variable is not set", file=sys.stderr)
        return 2
    try:
        res = push(
            args.model,
            args.repo_id,
            private=args.private,
            token=token,
            revision=args.revision,
            commit_message=args.commit_message,
            eval_dirs=args.eval,
            create_pr=args.create_pr,
            dry_run=args.dry_run,
        )
    except PushError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PushFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.dry_run:
        root = Path(args.model)
        print(
            f"dry run: would create {'private' if res.private else 'public'} repo {res.repo_id} and upload "
            f"{len(res.files)} files of {root} ({res.kind}):"
        )
        for f in res.files:
            if f == CARD_NAME:
                note = "refreshed: printed below"
            elif (root / f).is_file():
                note = f"{(root / f).stat().st_size:,} bytes"
            else:
                note = "to be written"
            print(f"  {f}  ({note})")
        print(f"\n----- {CARD_NAME} -----\n{res.card}")
        return 0
    print(res.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
