"""Packed-graph SFT: the recipe, exact resume, gradient accumulation, LoRA,
sequential mode, config parsing, data errors, multi-process (slow) and DeepSpeed
ZeRO-2 on CPU (slow). Every model is a tiny one built from the test data."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_trajectory, reset_accelerate

from parallel_reason import sft
from parallel_reason.data import (
    DataError,
    build_graphs,
    epoch_windows,
    eval_shards,
    load_examples,
    split_holdout,
    steps_per_epoch,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "configs" / "sft" / "countdown_tiny.yaml"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU two OpenMP
    threads per process slow training down several times; restore afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    """Every in-process run gets a fresh accelerate state (it is a process singleton)."""
    reset_accelerate()
    yield
    reset_accelerate()


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _random_rows(n: int, seed: int, mode: str = "parallel") -> list[dict]:
    from parallel_reason.format import strip_tags

    rng = random.Random(seed)
    rows = []
    for k in range(n):
        text = random_trajectory(rng, depth=2, max_width=3, p_block=0.8)
        rows.append(
            {
                "id": f"r{seed}-{k}",
                "prompt": f"Numbers: {k % 10} {k % 7}\nTarget: {k % 13}\n",
                "completion": text if mode == "parallel" else strip_tags(text),
            }
        )
    return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """train/val JSONL: Countdown traces from data_gen.countdown when it exists (3 numbers,
    depth 1: short), random nested trajectories otherwise; plus sequential renditions."""
    d = tmp_path_factory.mktemp("sft_data")
    have_gen = importlib.util.find_spec("data_gen.countdown") is not None
    if have_gen:
        for split, n, name in (("train", 48, "train"), ("val", 12, "val")):
            for mode in ("parallel", "sequential"):
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "data_gen.countdown",
                        "--n",
                        str(n),
                        "--seed",
                        "0",
                        "--split",
                        split,
                        "--numbers",
                        "3",
                        "--max-depth",
                        "1",
                        "--mode",
                        mode,
                        "--out",
                        str(d / f"{name}.{mode}.jsonl"),
                        "--no-progress",
                    ],
                    check=True,
                    cwd=ROOT,
                    capture_output=True,
                )
    else:
        for name, n, seed in (("train", 48, 0), ("val", 12, 1)):
            for mode in ("parallel", "sequential"):
                _write_jsonl(d / f"{name}.{mode}.jsonl", _random_rows(n, seed, mode))
    # small random nested trajectories: fast runs for resume/accumulation checks
    _write_jsonl(d / "small.jsonl", _random_rows(12, 5))
    _write_jsonl(d / "small_val.jsonl", _random_rows(6, 6))
    return d


def _cfg(data_dir: Path, out: Path, **kw) -> sft.SFTConfig:
    base = dict(
        train_data=str(data_dir / "small.jsonl"),
        eval_data=str(data_dir / "small_val.jsonl"),
        output_dir=str(out),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=3e-3,
        lr_scheduler_type="linear",
        warmup_steps=1,
        max_steps=6,
        logging_steps=1,
        eval_steps=3,
        save_steps=2,
        save_total_limit=None,
        disable_tqdm=True,
        max_length=1024,
        seed=7,
        tiny_vocab_size=320,
        report_to=["none"],
        log_level="warning",
    )
    base.update(kw)
    return sft.SFTConfig(**base).validate()


# ---------------------------------------------------------------------------
# the recipe end to end


def test_tiny_recipe_lowers_eval_loss_and_saves(data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from parallel_reason.format import CONTROL_TAGS

    sys.path.insert(0, str(ROOT))
    try:
        from recipes.sft import main as recipe_main
    finally:
        sys.path.pop(0)
    out = tmp_path / "run"
    rc = recipe_main(
        [
            "--config",
            str(TINY_YAML),
            "--train_data",
            str(data_dir / "train.parallel.jsonl"),
            "--eval_data",
            str(data_dir / "val.parallel.jsonl"),
            "--output_dir",
            str(out),
            "--max_steps",
            "8",
            "--per_device_train_batch_size",
            "8",
            "--eval_steps",
            "4",
            "--save_steps",
            "4",
            "--save_total_limit",
            "1",
            "--logging_steps",
            "4",
            "--disable_tqdm",
            "--log_level",
            "warning",
            "--tiny_vocab_size",
            "320",
        ]
    )
    assert rc == 0
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e]
    assert len(evals) == 3  # start, step 4, step 8
    assert evals[-1] < evals[0] - 0.5, evals
    assert all(e["loss"] == e["loss"] for e in state["log_history"] if "loss" in e)  # no NaN
    # checkpoints: keep the last one only; each a loadable model + accelerate state
    cks = sorted(p.name for p in out.glob("checkpoint-*"))
    assert cks == ["checkpoint-8"]
    assert (out / "checkpoint-8" / "accelerate_state").is_dir()
    final = out / "final"
    assert (final / "model.safetensors").exists() and not (final / "pytorch_model.bin").exists()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert (final / name).exists(), name
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    for tag in CONTROL_TAGS:
        assert tok.convert_tokens_to_ids(tag) < model.get_input_embeddings().weight.shape[0]
    card = (final / "README.md").read_text()
    assert "<Parallel>" in card and "## Training config" in card and "learning_rate" in card
    from parallel_reason.hub import read_card_config

    assert read_card_config(final)["max_steps"] == 8
    # the saved model reproduces the final eval loss
    from parallel_reason.attention import collate
    from parallel_reason.logprobs import packed_logprobs

    graphs, _ = build_graphs(load_examples(data_dir / "val.parallel.jsonl"), tok, max_length=1024)
    nll = tokens = 0.0
    with torch.no_grad():
        for i in range(0, len(graphs), 8):
            b = collate(graphs[i : i + 8], tok.pad_token_id)
            nll -= float(packed_logprobs(model.eval(), b).sum())
            tokens += float(b["loss_mask"].sum())
    assert abs(nll / tokens - evals[-1]) < 1e-4


def test_resume_reproduces_uninterrupted_run(data_dir, tmp_path):
    full = sft.train(_cfg(data_dir, tmp_path / "full"))
    assert full.global_step == 6
    # "interrupt" after step 2: a fresh run directory holding only what existed then
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(tmp_path / "full" / "base_model", cut / "base_model")
    shutil.copytree(tmp_path / "full" / "checkpoint-2", cut / "checkpoint-2")
    reset_accelerate()
    resumed = sft.train(_cfg(data_dir, cut, resume_from_checkpoint="auto"))
    a, b = full.losses(), resumed.losses()
    assert sorted(b) == [1, 2, 3, 4, 5, 6]  # steps 1-2 come from the checkpoint's history
    for step in range(3, 7):
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])
    ea, eb = full.eval_losses(), resumed.eval_losses()
    assert ea.keys() == eb.keys() and all(abs(ea[k] - eb[k]) < 1e-6 for k in ea)
    # two epochs (12 examples / 4 per step = 3 steps each): the resume crossed an epoch boundary
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "full" / "final" / "model.safetensors")
    wb = load_file(cut / "final" / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6


def test_accumulation_normalises_by_window_tokens(data_dir, tmp_path):
    """B=2 x G=2 and B=4 x G=1 see the same examples per step: same loss curve."""
    kw = dict(save_steps=0, eval_steps=0, eval_on_start=False, max_steps=3, eval_data=None)
    r1 = sft.train(_cfg(data_dir, tmp_path / "g2", per_device_train_batch_size=2, gradient_accumulation_steps=2, **kw))
    reset_accelerate()
    shutil.copytree(tmp_path / "g2" / "base_model", tmp_path / "g1" / "base_model")
    r2 = sft.train(_cfg(data_dir, tmp_path / "g1", per_device_train_batch_size=4, gradient_accumulation_steps=1, **kw))
    a, b = r1.losses(), r2.losses()
    assert a.keys() == b.keys() == {1, 2, 3}
    for s in a:
        assert abs(a[s] - b[s]) < 2e-5, (s, a[s], b[s])


def test_lora_run(data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "lora"
    res = sft.train(
        _cfg(
            data_dir,
            out,
            use_peft=True,
            lora_r=4,
            lora_alpha=8,
            max_steps=4,
            save_steps=2,
            save_total_limit=1,
            learning_rate=5e-3,
        )
    )
    ev = res.eval_losses()
    assert ev[4] < ev[0]
    ck = out / "checkpoint-4"
    assert (ck / "adapter_config.json").exists() and (ck / "adapter_model.safetensors").exists()
    assert (out / "final" / "adapter" / "adapter_model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(out / "final")  # merged: a plain model directory
    base = AutoModelForCausalLM.from_pretrained(out / "base_model")
    tok = AutoTokenizer.from_pretrained(out / "final")
    # control-token embedding rows learned (modules_to_save), and LoRA changed the projections
    tid = tok.convert_tokens_to_ids("<Parallel>")
    assert not torch.equal(merged.get_input_embeddings().weight[tid], base.get_input_embeddings().weight[tid])
    q_m = merged.model.layers[0].self_attn.q_proj.weight
    q_b = base.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q_m, q_b)
    assert not any("lora" in k for k in merged.state_dict())


def test_eager_and_gradient_checkpointing_match_sdpa(data_dir, tmp_path):
    kw = dict(save_steps=0, eval_steps=0, eval_on_start=False, max_steps=2, eval_data=None)
    a = sft.train(_cfg(data_dir, tmp_path / "sdpa", **kw)).losses()
    reset_accelerate()
    shutil.copytree(tmp_path / "sdpa" / "base_model", tmp_path / "eager" / "base_model")
    b = sft.train(
        _cfg(data_dir, tmp_path / "eager", attn_implementation="eager", gradient_checkpointing=True, **kw)
    ).losses()
    assert a.keys() == b.keys() == {1, 2}
    assert all(abs(a[s] - b[s]) < 1e-4 for s in a), (a, b)


def test_sequential_mode_and_trackers(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "seq"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    report = [t for t in ("tensorboard", "wandb") if importlib.util.find_spec(t)] or ["none"]
    res = sft.train(
        _cfg(
            data_dir,
            out,
            mode="sequential",
            train_data=str(data_dir / "train.sequential.jsonl"),
            eval_data=str(data_dir / "val.sequential.jsonl"),
            per_device_train_batch_size=4,
            max_steps=3,
            save_steps=0,
            report_to=report,
        )
    )
    ev = res.eval_losses()
    assert ev[3] < ev[0]
    ex = load_examples(data_dir / "train.sequential.jsonl")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "final")
    graphs, _ = build_graphs(ex[:5], tok, mode="sequential")
    assert all(g.num_segments == 1 for g in graphs)  # plain causal: one chain
    assert all(int(g.loss_mask.sum()) == len(g) - g.prompt_len for g in graphs)
    if "tensorboard" in report:
        assert list((out / "logs").rglob("events.out.tfevents.*"))
    if "wandb" in report:
        assert list(out.rglob("offline-run-*"))


# ---------------------------------------------------------------------------
# config and data


def test_config_parsing_overrides_and_errors(tmp_path, capsys):
    cfg = sft.parse_args(
        [
            "--config",
            str(TINY_YAML),
            "--learning_rate",
            "1e-4",
            "--max_steps=7",
            "--use_peft",
            "--lora_target_modules",
            "q_proj,v_proj",
            "--bf16",
            "false",
            "--max_train_samples",
            "none",
            "--report-to",
            "[tensorboard]",
            "--num_train_epochs",
            "2",
        ]
    )
    assert cfg.learning_rate == 1e-4 and isinstance(cfg.learning_rate, float)
    assert cfg.max_steps == 7 and cfg.use_peft is True and cfg.bf16 is False
    assert cfg.lora_target_modules == ["q_proj", "v_proj"] and cfg.report_to == ["tensorboard"]
    assert cfg.max_train_samples is None and cfg.num_train_epochs == 2.0
    assert cfg.model_name_or_path == "tiny" and cfg.mode == "parallel"  # from the YAML
    qwen = sft.parse_args(["--config", str(ROOT / "configs" / "sft" / "countdown_qwen.yaml")])
    assert qwen.model_name_or_path.startswith("Qwen/") and qwen.trust_remote_code is False
    assert sft.SFTConfig().trust_remote_code is False and sft.SFTConfig().attn_implementation == "sdpa"

    with pytest.raises(ValueError, match=r"unknown config field 'lerning_rate'.*did you mean 'learning_rate'"):
        sft.parse_args(["--config", str(TINY_YAML), "--lerning_rate", "1"])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("learning_rate: 1e-3\nbatch_size: 4\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config field 'batch_size'"):
        sft.parse_args(["--config", str(bad_yaml)])
    with pytest.raises(ValueError, match=r"'max_steps' expects an integer, got 'ten'"):
        sft.parse_args(["--max_steps", "ten"])
    with pytest.raises(ValueError, match=r"'use_peft' expects true/false"):
        sft.parse_args(["--use_peft", "maybe"])
    with pytest.raises(ValueError, match="mode must be"):
        sft.parse_args(["--mode", "tree"])
    with pytest.raises(ValueError, match="flash"):
        sft.parse_args(["--attn_implementation", "flash_attention_2"])
    with pytest.raises(ValueError, match="does not exist"):
        sft.parse_args(["--config", str(tmp_path / "nope.yaml")])
    assert sft.main(["--config", str(TINY_YAML), "--nope", "1"]) == 2
    assert "unknown config field 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sft.parse_args(["--help"])
    assert "--gradient_accumulation_steps" in capsys.readouterr().out


def test_data_errors_name_file_line_and_problem(tmp_path, tiny_tokenizer):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "a", "completion": \n')
    with pytest.raises(DataError, match=r"d.jsonl:3: invalid JSON"):
        load_examples(p)
    p.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "answer": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: missing field\(s\) \['completion'\]"):
        load_examples(p)
    p.write_text('{"prompt": 3, "completion": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'prompt' must be a string"):
        load_examples(p)
    p.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"d.jsonl:1: expected a JSON object"):
        load_examples(p)
    p.write_text(json.dumps({"prompt": "p", "completion": "x <Parallel>\n<Outlines></Outlines>\n<Thread>1: y"}) + "\n")
    ex = load_examples(p)
    with pytest.raises(DataError, match=r"d.jsonl:1: completion is not a well-formed parallel trajectory"):
        build_graphs(ex, tiny_tokenizer)
    g, st = build_graphs(ex, tiny_tokenizer, mode="sequential")  # plain text: fine
    assert st.kept == 1
    with pytest.raises(DataError, match="no such file"):
        load_examples(tmp_path / "missing.jsonl")
    # conversational records and datasets objects
    import datasets

    ds = datasets.Dataset.from_list(
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    )
    ex = load_examples(ds)
    assert ex[0].prompt == [{"role": "user", "content": "hi"}] and ex[0].completion == "yo"
    assert "row 0" in ex[0].origin
    ds.save_to_disk(str(tmp_path / "saved"))
    assert load_examples(str(tmp_path / "saved"))[0].completion == "yo"
    with pytest.raises(DataError, match="chat template"):
        build_graphs(ex, tiny_tokenizer)
    import copy

    chat_tok = copy.deepcopy(tiny_tokenizer)
    chat_tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    (g,), _ = build_graphs(ex, chat_tok)
    assert chat_tok.decode(g.input_ids[: g.prompt_len]) == "<user>hi\n<assistant>"
    # max_length drops and counts
    rows = _random_rows(10, 3)
    ex = load_examples(_write_jsonl(tmp_path / "r.jsonl", rows))
    gs, st = build_graphs(ex, tiny_tokenizer)
    cut = sorted(len(g) for g in gs)[5]
    gs2, st2 = build_graphs(ex, tiny_tokenizer, max_length=cut)
    assert st2.dropped_too_long == sum(len(g) > cut for g in gs) and st2.kept + st2.dropped_too_long == 10
    assert all(len(g) <= cut for g in gs2)


def test_batch_order_is_seeded_and_split_independent():
    n = 21
    w1 = epoch_windows(n, 4, num_processes=1, gradient_accumulation_steps=2, seed=3, epoch=1)
    w2 = epoch_windows(n, 2, num_processes=2, gradient_accumulation_steps=2, seed=3, epoch=1)
    assert len(w1) == len(w2) == steps_per_epoch(n, 4, 1, 2) == 3
    for a, b in zip(w1, w2):  # same examples per micro-batch, however split across processes
        assert [sorted(m[0]) for m in a] == [sorted(m[0] + m[1]) for m in b]
    flat = [i for win in w1 for m in win for i in m[0]]
    assert set(flat) == set(range(n)) and len(flat) == 24  # padded from the epoch's own start
    assert epoch_windows(n, 4, 1, 2, seed=3, epoch=1) == w1
    assert epoch_windows(n, 4, 1, 2, seed=3, epoch=2) != w1
    train, held = split_holdout(list(range(20)), 0.25, seed=1)
    assert len(held) == 5 and sorted(train + held) == list(range(20))
    assert split_holdout(list(range(20)), 0.25, seed=1) == (train, held)
    for W in (1, 2, 3):  # eval: every example once with weight 1, same batch count on every rank
        shards = [eval_shards(7, 2, r, W) for r in range(W)]
        assert len({len(s) for s in shards}) == 1
        got = sorted(i for s in shards for idx, w in s for i, x in zip(idx, w) if x == 1.0)
        assert got == list(range(7))


# ---------------------------------------------------------------------------
# multi-process (slow)


def _launch(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        WANDB_MODE="offline",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT),
    )
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _recipe_args(data_dir: Path, out: Path, **kw) -> list[str]:
    base = dict(
        train_data=data_dir / "small.jsonl",
        eval_data=data_dir / "small_val.jsonl",
        output_dir=out,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=3e-3,
        lr_scheduler_type="linear",
        warmup_steps=1,
        max_steps=4,
        logging_steps=1,
        eval_steps=0,
        save_steps=2,
        save_total_limit=None,
        disable_tqdm=True,
        seed=7,
        tiny_vocab_size=320,
        model_name_or_path="tiny",
        report_to="none",
        log_level="warning",
        generate_data="none",
    )
    base.update(kw)
    args = [str(ROOT / "recipes" / "sft.py")]
    for k, v in base.items():
        args += [f"--{k}", str(v)]
    return args


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(data_dir, tmp_path):
    """DDP over gloo, 2 processes x 2 graphs == 1 process x 4 graphs (same examples per step).

    accelerate 1.x starts a single process for ``--cpu --num_processes 2`` unless MPI is
    used, so the processes are started by the torchrun launcher (configs/accelerate/ddp.yaml,
    i.e. ``--multi_gpu``) and
    parallel_reason.sft asks accelerate for CPU (gloo) since the host has no GPU."""
    two = tmp_path / "two"
    # the shipped DDP config (multi-GPU launcher), 2 processes instead of 8
    r = _launch(
        [
            "--config_file",
            str(ROOT / "configs" / "accelerate" / "ddp.yaml"),
            "--num_processes",
            "2",
            *_recipe_args(data_dir, two),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    shutil.copytree(two / "base_model", tmp_path / "one" / "base_model")
    one = sft.train(
        _cfg(
            data_dir,
            tmp_path / "one",
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            per_device_eval_batch_size=2,
            max_steps=4,
            eval_steps=0,
            save_steps=2,
        )
    )
    st = json.loads((two / "trainer_state.json").read_text())
    assert st["num_processes"] == 2 and st["distributed_type"] == "MULTI_CPU"
    a = {e["step"]: e["loss"] for e in st["log_history"] if "loss" in e}
    b = one.losses()
    assert a.keys() == b.keys() == {1, 2, 3, 4}
    for s in a:
        assert abs(a[s] - b[s]) < 1e-4, (s, a[s], b[s])
    ea = [e["eval_loss"] for e in st["log_history"] if "eval_loss" in e]
    eb = list(one.eval_losses().values())
    assert len(ea) == len(eb) and all(abs(x - y) < 1e-4 for x, y in zip(ea, eb))
    assert (two / "checkpoint-2" / "accelerate_state" / "random_states_1.pkl").exists()


def _deepspeed_unavailable() -> str | None:
    if importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (pip install deepspeed)"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_on_cpu(data_dir, tmp_path, stage):
    """DeepSpeed ZeRO-2/3 through accelerate on DeepSpeed's CPU accelerator (gloo), 2 processes,
    with the repo's configs/deepspeed JSON: same losses as one process with the same global batch."""
    why = _deepspeed_unavailable()
    if why:
        pytest.skip(why)
    # the shipped accelerate config (it names configs/deepspeed/zeroN.json relative to the repo
    # root, the launch directory), with 2 processes instead of 8
    acc_cfg = ROOT / "configs" / "accelerate" / f"zero{stage}.yaml"
    out = tmp_path / "z"
    r = _launch(["--config_file", str(acc_cfg), "--num_processes", "2", *_recipe_args(data_dir, out)], tmp_path)
    assert r.returncode == 0, r.stderr[-6000:]
    st = json.loads((out / "trainer_state.json").read_text())
    assert st["distributed_type"] == "DEEPSPEED" and st["num_processes"] == 2
    assert (out / "checkpoint-2" / "accelerate_state" / "pytorch_model").is_dir()  # DeepSpeed checkpoint
    if stage == 2:  # exact resume from the DeepSpeed checkpoint
        cut = tmp_path / "cut"
        cut.mkdir()
        for name in ("base_model", "checkpoint-2"):
            shutil.copytree(out / name, cut / name)
        r = _launch(
            [
                "--config_file",
                str(acc_cfg),
                "--num_processes",
                "2",
                *_recipe_args(data_dir, cut, resume_from_checkpoint="auto"),
            ],
            tmp_path,
        )
        assert r.returncode == 0, r.stderr[-6000:]
        st2 = json.loads((cut / "trainer_state.json").read_text())
        a = [e["loss"] for e in st["log_history"] if "loss" in e]
        b = [e["loss"] for e in st2["log_history"] if "loss" in e]
        assert len(a) == len(b) == 4 and all(abs(x - y) < 1e-6 for x, y in zip(a, b)), (a, b)
    losses = [e["loss"] for e in st["log_history"] if "loss" in e]
    assert len(losses) == 4 and all(x == x for x in losses)
    assert (out / "final" / "model.safetensors").exists()
    # same global batch as the DDP/single-process runs: same first-step loss (before any update)
    shutil.copytree(out / "base_model", tmp_path / "one" / "base_model")
    one = sft.train(
        _cfg(
            data_dir,
            tmp_path / "one",
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            max_steps=4,
            eval_steps=0,
            save_steps=0,
            eval_data=None,
        )
    )
    b = one.losses()
    for s, x in enumerate(losses, 1):
        assert abs(x - b[s]) < 1e-4, (s, x, b[s])


def test_summary_join_end_to_end(tmp_path):
    """SFT with ``join: summary``: data without any <Result> is refused before a model
    loads; with results, the join is stored in the model and the runner decodes with it,
    its recorded log-probs equal to the packed ones (what the next SFT/RL step trains)."""
    from transformers import AutoModelForCausalLM

    from parallel_reason.attention import collate
    from parallel_reason.data import DataError
    from parallel_reason.logprobs import packed_logprobs
    from parallel_reason.runner import Runner
    from parallel_reason.tokens import load_tokenizer

    rng = random.Random(3)
    rows = []
    for k in range(12):
        text = random_trajectory(rng, depth=2, max_width=3, p_block=0.9, p_result=0.8)
        rows.append({"prompt": f"Numbers: {k} 4\nTarget: 9\n", "completion": text})
    assert any("<Result>" in r["completion"] for r in rows)
    data = _write_jsonl(tmp_path / "results.jsonl", rows)
    bare = _write_jsonl(
        tmp_path / "no_results.jsonl", [{**r, "completion": r["completion"].replace("<Result>", "")} for r in rows]
    )
    with pytest.raises(DataError, match="join 'summary'.*marks its result"):
        sft.train(_cfg(tmp_path, tmp_path / "bad", train_data=str(bare), eval_data=None, join="summary"))
    reset_accelerate()
    res = sft.train(_cfg(tmp_path, tmp_path / "run", train_data=str(data), eval_data=None, join="summary", max_steps=2))
    assert res.global_step == 2
    final = tmp_path / "run" / "final"
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    tok = load_tokenizer(str(final))
    assert model.config.parallel_join == "summary"
    runner = Runner(model, tok, max_new_tokens=4096, max_width=4, max_depth=3)
    assert runner.join == "summary"
    outs = runner.replay([r["prompt"] for r in rows[:4]], [r["completion"] for r in rows[:4]])
    batch = collate([r.graph for r in outs], tok.pad_token_id)
    with torch.no_grad():
        lp = packed_logprobs(model, batch)
    for b, r in enumerate(outs):
        g = r.graph
        assert g.join == "summary" and r.finish_reason == "eos"
        assert float((lp[b, : len(g)] - g.sample_logprobs)[g.loss_mask].abs().max()) < 1e-4
