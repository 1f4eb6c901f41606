"""Training records -> packed graphs, and the order batches are drawn in (both trainers).

:func:`load_examples` reads TRL prompt-completion records (plain or conversational)
from JSONL/JSON files, ``save_to_disk`` folders or ``datasets`` sources, keeping
each record's origin; :func:`build_graphs` lays them out (parallel or sequential);
:func:`epoch_windows` / :func:`eval_shards` hand examples to processes and
micro-batches by a permutation seeded with ``(seed, epoch)``, so a resumed run sees
the same batches. Bad data raises :class:`DataError` naming the record. See docs/design.md#data.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .format import RESULT, FormatError, parse
from .inputs import InputError
from .layout import PackedGraph, graph_from_text

log = logging.getLogger(__name__)

MODES = ("parallel", "sequential")
_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


class DataError(InputError):
    """A record (or a whole source) cannot be used; the message names where and why."""


@dataclass
class Example:
    """One prompt/completion pair and where it came from."""

    prompt: str | list  # text, or a list of chat messages
    completion: str
    origin: str  # "train.jsonl:12", "my/dataset[train] row 7"
    meta: dict = field(default_factory=dict)  # the record's other fields (id, answer, ...)


# ---------------------------------------------------------------------------
# Loading


def parse_record(line: bytes | str, origin: str) -> dict:
    """One JSON object of a data file; :class:`DataError` naming ``origin`` otherwise
    (invalid UTF-8, invalid or too deeply nested JSON, not an object)."""
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        rec = json.loads(text)
    except UnicodeDecodeError as e:
        raise DataError(f"{origin}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{origin}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{origin}: JSON nested too deeply") from None
    if not isinstance(rec, dict):
        raise DataError(f"{origin}: expected a JSON object, got {type(rec).__name__}")
    return rec


def read_bytes(path: str | os.PathLike, label: str | None = None) -> bytes:
    """The bytes of a data file without a UTF-8 byte order mark; :class:`DataError`
    (named by ``label``, default the path) when it is missing or unreadable."""
    path, label = Path(path), label or str(path)
    if not path.is_file():
        raise DataError(f"{label}: no such file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{label}: cannot be read ({e.strerror or e})") from None
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # a UTF-8 byte order mark


def read_jsonl(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """``(origin, record)`` for every non-blank line of a JSONL file; raises
    :class:`DataError` naming the first line that is not a JSON object."""
    path = Path(path)
    out = []
    for lineno, line in enumerate(read_bytes(path).split(b"\n"), 1):
        if line.strip():
            origin = f"{path}:{lineno}"
            out.append((origin, parse_record(line, origin)))
    return out


def _read_json(path: Path) -> list[tuple[str, dict]]:
    try:
        obj = json.loads(read_bytes(path).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        if e.lineno > 1:  # probably JSON lines saved as .json
            return read_jsonl(path)
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), list):
        obj = next(iter(obj.values()))  # {"data": [...]}
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of records (or JSON lines), got {type(obj).__name__}")
    out = []
    for k, rec in enumerate(obj):
        origin = f"{path}[{k}]"
        if not isinstance(rec, dict):
            raise DataError(f"{origin}: expected a JSON object, got {type(rec).__name__}")
        out.append((origin, rec))
    return out


def read_records(source, split: str | None, config: str | None) -> list[tuple[str, dict]]:
    """``(origin, record)`` rows of any supported source."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets = None
    if datasets is not None and isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        ds = source
        name = getattr(source, "info", None) and source.info.dataset_name or "dataset"
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{name}: no split {split!r}; available: {sorted(ds)}")
            ds = ds[split]
        return [(f"{name}[{split}] row {i}", dict(r)) for i, r in enumerate(ds)]
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"unsupported data source of type {type(source).__name__}")
    src = str(source)
    path = Path(src)
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".jsonl":
        return read_jsonl(path)
    if path.is_file() and suffix == ".json":
        return _read_json(path)
    if datasets is None:
        raise DataError(f"{src}: not a JSONL/JSON file and the `datasets` package is not installed")
    if path.suffix and not path.exists() and suffix in _LOCAL_FORMATS:
        raise DataError(f"{src}: no such file")
    try:
        if path.is_dir() and (
            (path / "dataset_info.json").exists()
            or (path / "dataset_dict.json").exists()
            or (path / "state.json").exists()
        ):
            ds = datasets.load_from_disk(src)
        elif path.is_file() and suffix in _LOCAL_FORMATS:
            ds = datasets.load_dataset(_LOCAL_FORMATS[suffix], data_files=src, split="train")
        else:
            ds = datasets.load_dataset(src, config, split=split)
    except Exception as e:  # datasets raises many types; name the source in every case
        raise DataError(
            f"{src}: could not load as a `datasets` source (split={split!r}, "
            f"config={config!r}): {type(e).__name__}: {e}"
        ) from e
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{src}: no split {split!r}; available: {sorted(ds)}")
        ds = ds[split]
    return [(f"{src}[{split}] row {i}", dict(r)) for i, r in enumerate(ds)]


def _message_list(value, origin: str, field_name: str) -> list:
    if not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        raise DataError(
            f"{origin}: field {field_name!r} is a list but not a list of {{'role': str, 'content': str}} chat messages"
        )
    return list(value)


def check_prompt(value, origin: str, field_name: str = "prompt") -> str | list:
    """A record's prompt: a string or a list of chat messages; :class:`DataError` otherwise."""
    if isinstance(value, list):
        return _message_list(value, origin, field_name)
    if not isinstance(value, str):
        raise DataError(
            f"{origin}: field {field_name!r} must be a string or a list of chat messages, got {type(value).__name__}"
        )
    return value


def to_example(origin: str, rec: dict, prompt_field: str = "prompt", completion_field: str = "completion") -> Example:
    """Validate one record and turn it into an :class:`Example`."""
    if prompt_field not in rec and completion_field not in rec and "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{origin}: field 'messages' must be a non-empty list of chat messages")
        msgs = _message_list(msgs, origin, "messages")
        if msgs[-1]["role"] != "assistant":
            raise DataError(
                f"{origin}: the last message must be the assistant's (the completion), got role {msgs[-1]['role']!r}"
            )
        prompt: str | list
        prompt, completion = msgs[:-1], msgs[-1]["content"]
    else:
        missing = [f for f in (prompt_field, completion_field) if f not in rec]
        if missing:
            raise DataError(
                f"{origin}: missing field(s) {missing}; the record has {sorted(rec)} "
                "(set prompt_field / completion_field if your data names them differently)"
            )
        prompt = check_prompt(rec[prompt_field], origin, prompt_field)
        completion = rec[completion_field]
        if isinstance(completion, list):
            msgs = _message_list(completion, origin, completion_field)
            if len(msgs) != 1 or msgs[0]["role"] != "assistant":
                raise DataError(
                    f"{origin}: conversational field {completion_field!r} must hold exactly one assistant message"
                )
            completion = msgs[0]["content"]
    if not isinstance(completion, str):
        raise DataError(f"{origin}: the completion must be a string, got {type(completion).__name__}")
    if not completion:
        raise DataError(f"{origin}: empty completion")
    meta = {k: v for k, v in rec.items() if k not in (prompt_field, completion_field, "messages")}
    return Example(prompt=prompt, completion=completion, origin=origin, meta=meta)


def load_examples(
    source,
    split: str | None = "train",
    config: str | None = None,
    prompt_field: str = "prompt",
    completion_field: str = "completion",
    max_samples: int | None = None,
) -> list[Example]:
    """Examples of one source (see the module docstring for what a source can be)."""
    rows = read_records(source, split, config)
    if not rows:
        raise DataError(f"{source}: no records")
    if max_samples is not None and max_samples >= 0:
        rows = rows[:max_samples]
    return [to_example(origin, rec, prompt_field, completion_field) for origin, rec in rows]


# ---------------------------------------------------------------------------
# Packed graphs


@dataclass
class GraphStats:
    """What :func:`build_graphs` kept and dropped."""

    examples: int = 0
    kept: int = 0
    dropped_too_long: int = 0
    tokens: int = 0  # packed buffer tokens of the kept graphs
    trained_tokens: int = 0
    longest: int = 0  # longest kept graph
    longest_dropped: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def render_prompt(prompt: str | list, tokenizer, apply_chat_template: bool = False, origin: str = "") -> str:
    """The prompt text the model sees: conversational prompts (and string prompts when
    ``apply_chat_template``) go through the tokenizer's chat template."""
    if isinstance(prompt, str) and not apply_chat_template:
        return prompt
    msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(
            f"{origin}: a conversational prompt needs a tokenizer with a chat template "
            "(this tokenizer has none); give string prompts or set apply_chat_template: false"
        )
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def example_graph(
    ex: Example,
    tokenizer,
    mode: str = "parallel",
    join: str = "concat",
    eos: bool = True,
    apply_chat_template: bool = False,
    thread_header: str = "index",
) -> PackedGraph:
    """Packed graph of one example; :class:`DataError` names the example on failure."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    prompt = render_prompt(ex.prompt, tokenizer, apply_chat_template, ex.origin)
    try:
        return graph_from_text(
            prompt,
            ex.completion,
            tokenizer,
            join=join,
            eos=eos,
            sequential=(mode == "sequential"),
            thread_header=thread_header,
        )
    except FormatError as e:
        raise _not_a_trajectory(ex, e) from None
    except ValueError as e:
        raise DataError(f"{ex.origin}: {e}") from None


def _not_a_trajectory(ex: Example, e: FormatError) -> DataError:
    head = ex.completion[max(0, e.offset - 30) : e.offset + 30]
    return DataError(
        f"{ex.origin}: completion is not a well-formed parallel trajectory: {e} "
        f"(near {head!r}); use mode: sequential for plain text"
    )


def check_trajectories(examples: Iterable[Example], join: str | None = None) -> None:
    """:class:`DataError` naming the first example whose completion the strict
    grammar refuses (what :func:`build_graphs` would find, without a tokenizer:
    trainers call it before loading a model). For the ``summary`` join some thread
    must mark a result: without one the text after a block sees no thread's work."""
    threads = results = 0
    for ex in examples:
        try:
            traj = parse(ex.completion)
        except FormatError as e:
            raise _not_a_trajectory(ex, e) from None
        for b, _ in traj.blocks():
            threads += len(b.threads)
            results += sum(t.result is not None for t in b.threads)
    if join == "summary" and threads and not results:
        raise DataError(
            f"join 'summary': none of the {threads} threads in the data marks its result with {RESULT} "
            "(data_gen.countdown --results writes them); the text after each block would see no thread's work"
        )


def build_graphs(
    examples: Sequence[Example],
    tokenizer,
    mode: str = "parallel",
    join: str = "concat",
    max_length: int | None = None,
    eos: bool = True,
    apply_chat_template: bool = False,
    name: str = "data",
    thread_header: str = "index",
) -> tuple[list[PackedGraph], GraphStats]:
    """Packed graphs of ``examples``; graphs longer than ``max_length`` (prompt
    included) are dropped and counted, and the count is logged."""
    graphs: list[PackedGraph] = []
    st = GraphStats(examples=len(examples))
    for ex in examples:
        g = example_graph(ex, tokenizer, mode, join, eos, apply_chat_template, thread_header)
        if int(g.loss_mask.sum()) == 0:
            raise DataError(f"{ex.origin}: the completion has no trained token")
        if max_length is not None and max_length > 0 and len(g) > max_length:
            st.dropped_too_long += 1
            st.longest_dropped = max(st.longest_dropped, len(g))
            continue
        graphs.append(g)
        st.kept += 1
        st.tokens += len(g)
        st.trained_tokens += int(g.loss_mask.sum())
        st.longest = max(st.longest, len(g))
    if st.dropped_too_long:
        log.warning(
            "%s: dropped %d of %d examples longer than max_length=%d tokens (longest %d)",
            name,
            st.dropped_too_long,
            st.examples,
            max_length,
            st.longest_dropped,
        )
    if not graphs:
        raise DataError(f"{name}: no example left (all {st.examples} are longer than max_length={max_length})")
    return graphs, st


# ---------------------------------------------------------------------------
# Batching (deterministic, resumable)


def steps_per_epoch(
    n: int, per_device_batch_size: int, num_processes: int = 1, gradient_accumulation_steps: int = 1
) -> int:
    """Optimizer steps in one pass over ``n`` examples."""
    return max(1, math.ceil(n / (per_device_batch_size * num_processes * gradient_accumulation_steps)))


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The order of epoch ``epoch``: a permutation seeded by ``(seed, epoch)`` only."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


def epoch_windows(
    n: int,
    per_device_batch_size: int,
    num_processes: int = 1,
    gradient_accumulation_steps: int = 1,
    seed: int = 0,
    epoch: int = 0,
) -> list[list[list[list[int]]]]:
    """Example indices of every optimizer step of an epoch:
    ``windows[step][micro][process] -> [indices]`` (each ``per_device_batch_size`` long).

    Global micro-batch ``j`` is ``perm[j*B*W:(j+1)*B*W]``; process ``k`` takes its
    ``k``-th slice of ``B``, so the global batch does not depend on how it is split
    across processes. When ``n`` does not fill the last window, the permutation is
    completed from its own start (as ``DistributedSampler`` pads), so every
    process runs the same number of full micro-batches (collectives stay in step)."""
    B, W, G = per_device_batch_size, num_processes, gradient_accumulation_steps
    if min(B, W, G) < 1:
        raise ValueError("batch size, process count and accumulation steps must be >= 1")
    if n < 1:
        raise ValueError("no examples")
    perm = epoch_permutation(n, seed, epoch)
    steps = steps_per_epoch(n, B, W, G)
    need = steps * B * W * G
    while len(perm) < need:
        perm = perm + perm[: need - len(perm)]
    windows = []
    for s in range(steps):
        micro = []
        for m in range(G):
            start = (s * G + m) * B * W
            glob = perm[start : start + B * W]
            micro.append([glob[k * B : (k + 1) * B] for k in range(W)])
        windows.append(micro)
    return windows


def eval_shards(
    n: int, per_device_batch_size: int, process_index: int = 0, num_processes: int = 1
) -> list[tuple[list[int], list[float]]]:
    """Evaluation batches of one process: ``(indices, weights)``; every process gets
    the same number of batches (sharded/gathered models need every rank in every
    forward), padded with weight-0 repeats of example 0."""
    B, W = per_device_batch_size, num_processes
    per_proc = math.ceil(n / W)
    nb = max(1, math.ceil(per_proc / B))
    mine = list(range(process_index, n, W))
    out = []
    for b in range(nb):
        idx = mine[b * B : (b + 1) * B]
        w = [1.0] * len(idx)
        if not idx:  # this process ran out of examples: a dummy batch keeps ranks in step
            idx, w = [0], [0.0]
        out.append((idx, w))
    return out


def corpus(examples: Iterable[Example], limit: int = 5000) -> list[str]:
    """Texts of the examples (for training a tiny tokenizer)."""
    out: list[str] = []
    for ex in examples:
        if len(out) >= limit:
            break
        p = ex.prompt if isinstance(ex.prompt, str) else "\n".join(m["content"] for m in ex.prompt)
        out.append(p + ex.completion)
    return out


def split_holdout(examples: Sequence[Any], fraction: float, seed: int) -> tuple[list, list]:
    """``(train, held_out)``: a seeded random ``fraction`` of ``examples`` held out."""
    if not 0 < fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {fraction}")
    n = len(examples)
    k = max(1, int(round(n * fraction)))
    if k >= n:
        raise DataError(f"eval_fraction={fraction} leaves no training example out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 17)).tolist()
    held = set(perm[:k])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]
