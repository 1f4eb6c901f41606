"""Publishing on the Hugging Face Hub (parallel_reason.hub.push and push_to_hub in the
training configs), tested up to the upload call: ``HfApi.create_repo``,
``create_branch`` and ``upload_folder`` are replaced by recorders, nothing reaches
the network.

- a saved tiny model is checked, its card refreshed (grammar, runner usage, training
  config and reproduce commands, an eval table from real ``eval.benchmark`` runs)
  and handed to ``upload_folder`` without trainer state or pickles;
- the usage snippet of the card names real APIs with real keyword arguments (checked
  on its syntax tree, never executed) and its logic runs on the tiny model;
- broken folders fail before any upload with an error naming the file and problem;
- the token reaches ``HfApi`` and nowhere else (stdout, stderr, logs, card);
- ``push_to_hub: true`` in the SFT and GRPO configs pushes the final model once.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import logging
import random
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import make_model, random_trajectory

from parallel_reason import hub
from parallel_reason.format import CONTROL_TAGS
from parallel_reason.training import save_model

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_TESTtokenDoNotLeak0123456789abcdef"
TINY = dict(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)


# ---------------------------------------------------------------------------
# fixtures


class HubRecorder:
    """Stands in for the network side of ``HfApi``: records every call and, at
    ``upload_folder``, what the folder holds (filtered as ``upload_folder`` filters)."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.tokens: list = []
        self.uploaded: dict | None = None
        self.fail_upload: Exception | None = None

    def install(self, monkeypatch):
        import huggingface_hub
        from huggingface_hub.utils import filter_repo_objects

        rec = self
        real_init = huggingface_hub.HfApi.__init__

        def init(api, *a, **kw):
            real_init(api, *a, **kw)
            rec.tokens.append(kw.get("token"))

        def create_repo(api, repo_id, **kw):
            rec.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
            return f"https://huggingface.co/{repo_id}"

        def create_branch(api, repo_id, **kw):
            rec.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

        def upload_folder(api, **kw):
            rec.calls.append(("upload_folder", kw))
            if rec.fail_upload is not None:
                raise rec.fail_upload
            root = Path(kw["folder_path"])
            paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
            files = list(
                filter_repo_objects(
                    paths, allow_patterns=kw.get("allow_patterns"), ignore_patterns=kw.get("ignore_patterns")
                )
            )
            rec.uploaded = {"files": files, "readme": (root / "README.md").read_text(encoding="utf-8")}
            return type(
                "CommitInfo", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc", "pr_url": None}
            )()

        monkeypatch.setattr(huggingface_hub.HfApi, "__init__", init)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
        return self

    def named(self, name: str) -> list[dict]:
        return [kw for n, kw in self.calls if n == name]


@pytest.fixture
def recorder(monkeypatch):
    return HubRecorder().install(monkeypatch)


@pytest.fixture(scope="module")
def train_config() -> dict:
    """A real SFT config (as the trainer stores it in the card)."""
    from parallel_reason.sft import SFTConfig

    return (
        SFTConfig(
            output_dir="runs/sft/hub_test",
            max_steps=5,
            learning_rate=1.25e-3,
            generate_data="countdown",
            train_data="runs/data/countdown/train.parallel.jsonl",
        )
        .validate()
        .to_dict()
    )


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_tokenizer, train_config) -> Path:
    """A tiny model with the control tokens, saved by training.save_model with an SFT card."""
    d = tmp_path_factory.mktemp("hub") / "final"
    model = make_model(tiny_tokenizer, **TINY)
    save_model(
        model,
        tiny_tokenizer,
        d,
        {
            "model_name": "tiny-hub-test",
            "stage": "sft",
            "base_model": "tiny",
            "mode": "parallel",
            "join": "concat",
            "datasets": [train_config["train_data"]],
            "metrics": {"eval_loss": 1.5},
            "config": train_config,
            "extra": {"optimizer steps": 5},
        },
    )
    return d


@pytest.fixture(scope="module")
def eval_runs(saved_model, tmp_path_factory) -> tuple[Path, Path]:
    """Two real eval.benchmark runs of the tiny model (2 countdown problems): parallel and sequential."""
    from data_gen import countdown as dg
    from eval import benchmark as bm

    d = tmp_path_factory.mktemp("hub_eval")
    data = d / "test.jsonl"
    dg.write_jsonl(dg.generate(dg.GenConfig(n_numbers=3, split="test", seed=0), 3, progress=False), str(data))
    runs = []
    for mode in ("parallel", "sequential"):
        out = d / f"{mode[:3]}"
        argv = [
            "--model",
            str(saved_model),
            "--task",
            "countdown",
            "--data",
            str(data),
            "--mode",
            mode,
            "--n",
            "2",
            "--out",
            str(out),
            "--max-new-tokens",
            "8",
            "--batch-size",
            "2",
            "--no-progress",
            "--device",
            "cpu",
        ]
        assert bm.main(argv) == 0
        runs.append(out)
    return runs[0], runs[1]


@pytest.fixture
def model_dir(saved_model, tmp_path) -> Path:
    """A fresh copy of the saved model (push writes the card into the folder)."""
    d = tmp_path / "final"
    shutil.copytree(saved_model, d)
    return d


def _section(card: str, title: str) -> str:
    return card.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _code_block(text: str, lang: str) -> str:
    return text.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


# ---------------------------------------------------------------------------
# push: folder, card, upload call


def test_push_uploads_checked_folder_and_full_card(model_dir, saved_model, eval_runs, recorder, train_config):
    par, seq = eval_runs
    # trainer leftovers that must not be published, and a missing generation config
    (model_dir / "checkpoint-2" / "accelerate_state").mkdir(parents=True)
    (model_dir / "checkpoint-2" / "accelerate_state" / "optimizer.bin").write_bytes(b"\x80\x04pickle")
    (model_dir / "checkpoint-2" / "model.safetensors").write_bytes(b"x")
    (model_dir / "optimizer.pt").write_bytes(b"\x80\x04pickle")
    (model_dir / "trainer_state.json").write_text("{}")
    (model_dir / "trainer_state.json.tmp").write_text("{}")
    (model_dir / "generation_config.json").unlink()

    res = hub.push(
        model_dir, "me/tiny-par", private=True, token=TOKEN, eval_dirs=[par, seq], commit_message="first upload"
    )

    assert recorder.tokens == [TOKEN]
    assert [n for n, _ in recorder.calls] == ["create_repo", "upload_folder"]
    [cr] = recorder.named("create_repo")
    assert cr == {"repo_id": "me/tiny-par", "private": True, "exist_ok": True, "repo_type": "model"}
    [up] = recorder.named("upload_folder")
    assert Path(up["folder_path"]) == model_dir and up["repo_id"] == "me/tiny-par" and up["repo_type"] == "model"
    assert up["commit_message"] == "first upload" and up["revision"] is None and not up["create_pr"]
    files = recorder.uploaded["files"]
    assert files == res.files
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    } <= set(files)
    assert not [
        f
        for f in files
        if f.endswith((*hub.PICKLE_SUFFIXES, ".tmp")) or "optimizer" in f or "checkpoint-" in f or "trainer_state" in f
    ], files
    gen = json.loads((model_dir / "generation_config.json").read_text())  # written from config.json + tokenizer
    assert gen["eos_token_id"] is not None
    assert res.url.endswith("/commit/abc") and res.private is True

    card = recorder.uploaded["readme"]
    assert card == (model_dir / "README.md").read_text()
    # what save_model wrote is kept
    assert card.startswith("---\n") and "# tiny-hub-test" in card and "| eval_loss | 1.5 |" in card
    assert "- optimizer steps: 5" in card
    # (b) control-token grammar with the real token ids
    grammar = _section(card, "Control-token grammar")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    for tag in CONTROL_TAGS:
        assert f"| `{tag}` | {tok.convert_tokens_to_ids(tag)} |" in grammar
    assert "<Parallel>\n<Outlines><Outline>1:" in grammar
    # (c) runner usage for the repo id
    usage = _section(card, "Usage")
    code = _code_block(usage, "python")
    assert "from parallel_reason.runner import Runner" in code and 'path = "me/tiny-par"' in code
    assert "runner = Runner(model, tok, " in code and "runner.generate([prompt]" in code
    assert "# decode fork/join threads concurrently" not in card  # the old placeholder is gone
    # (a) training recipe: the stored config and the commands that rerun it
    assert hub.read_card_config(model_dir) == json.loads(json.dumps(train_config))
    assert "learning_rate: 0.00125" in _section(card, "Training config")
    rep = _section(card, "Reproduce")
    assert "accelerate launch recipes/sft.py --config config.yaml --push_to_hub false" in rep
    assert "python -m data_gen.countdown" in rep
    order = [t for t in hub.SECTION_ORDER if f"\n## {t}\n" in card]
    assert order == [
        "Training",
        "Results",
        "Evaluation",
        "Control-token grammar",
        "Usage",
        "Notes",
        "Reproduce",
        "Training config",
    ]
    assert [card.index(f"\n## {t}\n") for t in order] == sorted(card.index(f"\n## {t}\n") for t in order)
    # (d) eval table: the values of the runs' summary.json
    ev = _section(card, "Evaluation")
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
        for line in ev.splitlines()
        if line.startswith("| ") and not line.startswith("| run ")
    }
    header = [
        c.strip() for c in next(line for line in ev.splitlines() if line.startswith("| run ")).strip("|").split("|")
    ]
    assert set(rows) == {"par", "seq"}
    for name, run in (("par", par), ("seq", seq)):
        s = json.loads((run / "summary.json").read_text())
        got = dict(zip(header, rows[name]))
        assert got["task"] == "countdown" and got["mode"] == s["mode"]
        assert got["problems"] == str(s["n_problems"]) == "2"
        assert got["accuracy"] == f"{s['accuracy']:.3f}"
        assert got["total tokens"] == f"{s['total_tokens_mean']:.1f}"
        assert got["critical path"] == f"{s['critical_path_mean']:.1f}"
        assert got["speedup (mean of ratios)"] == f"{s['speedup_mean_of_ratios']:.3f}"
        assert got["speedup (ratio of means)"] == f"{s['speedup_ratio_of_means']:.3f}"
        assert got["format valid"] == f"{s['format_valid_rate']:.3f}"
    assert dict(zip(header, rows["seq"]))["vs seq (ratio of means)"] == "baseline"
    float(dict(zip(header, rows["par"]))["vs seq (ratio of means)"])
    # benchmark commands point at the repo, not at a local path, and parse as eval.benchmark arguments
    from eval import benchmark as bm

    cmds = [line.split(": `", 1)[1].rstrip("`") for line in ev.splitlines() if line.startswith("- `")]
    assert len(cmds) == 2
    assert str(saved_model) not in card
    assert str(par.parent) not in card
    for cmd, (name, mode) in zip(cmds, (("par", "parallel"), ("seq", "sequential"))):
        args = bm.build_parser().parse_args(shlex.split(cmd)[3:])
        assert args.model == "me/tiny-par" and args.n == 2 and args.mode == mode and args.out == f"runs/eval/{name}"
        assert args.data == "test.jsonl"


def test_refresh_keeps_an_older_card_and_adds_the_missing_sections(model_dir, tiny_tokenizer):
    """A card written before the runner snippet and the reproduce commands existed (a
    placeholder Usage section, no Reproduce): its own text stays, the sections are
    replaced or inserted in place, and a second refresh changes nothing."""
    card = (model_dir / "README.md").read_text()
    usage = _section(card, "Usage")
    placeholder = "\n```python\n# decode fork/join threads concurrently with parallel_reason.runner\n```\n\n"
    old = card.replace(usage, placeholder)
    old = old.replace("## Reproduce\n" + _section(card, "Reproduce"), "")
    old = old.replace("# tiny-hub-test\n", "# tiny-hub-test\n\nHand-written note kept by the refresh.\n")
    assert "## Reproduce" not in old and placeholder in old
    new = hub.refresh_model_card(old, "me/tiny-par", (), tiny_tokenizer)
    assert "Hand-written note kept by the refresh." in new and "parallel_reason.runner\n```" not in new
    assert "from parallel_reason.runner import Runner" in _section(new, "Usage")
    assert "recipes/sft.py --config config.yaml" in _section(new, "Reproduce")
    assert new.index("## Notes") < new.index("## Reproduce") < new.index("## Training config")
    assert hub.refresh_model_card(new, "me/tiny-par", (), tiny_tokenizer) == new
    # no card at all: a fresh one (grammar and usage, no recipe to give)
    bare = hub.refresh_model_card(None, "me/tiny-par", (), tiny_tokenizer)
    assert "## Control-token grammar" in bare and 'path = "me/tiny-par"' in bare and "## Reproduce" not in bare


def test_card_usage_snippet_names_real_apis_and_its_logic_runs(model_dir, tiny_tokenizer):
    """The snippet is parsed (never executed): every import resolves, the Runner and
    generate calls bind to the real signatures and every attribute read from a rollout
    exists. Then the same steps run here on the tiny model."""
    from parallel_reason.runner import FINISH_REASONS, Rollout, Runner
    from parallel_reason.tasks import get_task

    card = hub.refresh_model_card((model_dir / "README.md").read_text(), "me/tiny-par", (), tiny_tokenizer)
    code = _code_block(_section(card, "Usage"), "python")
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(mod, alias.name), f"{node.module}.{alias.name}"
    calls = {ast.unparse(n.func): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
    runner_call, gen_call = calls["Runner"], calls["runner.generate"]
    inspect.signature(Runner).bind(
        *["x"] * len(runner_call.args), **{k.arg: ast.literal_eval(k.value) for k in runner_call.keywords}
    )
    inspect.signature(Runner.generate).bind(
        "self", ["p"], **{k.arg: ast.literal_eval(k.value) for k in gen_call.keywords}
    )
    task_name = ast.literal_eval(calls["get_task"].args[0])
    task = get_task(task_name)
    assert callable(task.prompt) and callable(task.extract_answer)
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and ast.unparse(n.value) == "r"}
    assert attrs and attrs <= set(Rollout.__dataclass_fields__) | {"speedup"}, attrs
    # the snippet's steps, on the tiny model (shorter budget)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    kw = {k.arg: ast.literal_eval(k.value) for k in runner_call.keywords} | {"max_new_tokens": 6}
    runner = Runner(model, tok, **kw)
    prompt = task.prompt([3, 5, 7, 11], 24)
    [r] = runner.generate([prompt], **{k.arg: ast.literal_eval(k.value) for k in gen_call.keywords})
    assert isinstance(r.completion, str) and r.finish_reason in FINISH_REASONS
    assert 1 <= r.critical_path <= r.total_tokens <= 6
    task.extract_answer(r.completion)


def test_revision_and_pr(model_dir, recorder):
    hub.push(model_dir, "me/tiny-par", token=TOKEN, revision="v1")
    assert recorder.named("create_branch") == [
        {"repo_id": "me/tiny-par", "branch": "v1", "exist_ok": True, "repo_type": "model"}
    ]
    assert recorder.named("upload_folder")[0]["revision"] == "v1"
    assert recorder.named("create_repo")[0]["private"] is False
    recorder.calls.clear()
    hub.push(model_dir, "me/tiny-par", token=TOKEN, create_pr=True)
    assert not recorder.named("create_branch") and recorder.named("upload_folder")[0]["create_pr"] is True


def test_peft_adapter_folder(tmp_path, tiny_tokenizer, recorder, monkeypatch):
    """An adapter folder (adapter_config.json + adapter_model.safetensors) is published as
    it is; push_trained falls back to final/adapter when no merged model was saved."""
    from peft import LoraConfig, get_peft_model

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    model = get_peft_model(make_model(tiny_tokenizer, **TINY), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    final = tmp_path / "final"
    save_model(model, tiny_tokenizer, final / "adapter", {"stage": "sft", "config": {"mode": "parallel"}})
    res = hub.push_trained(final, "me/tiny-lora")
    assert res.kind == "adapter"
    [up] = recorder.named("upload_folder")
    assert Path(up["folder_path"]) == final / "adapter"
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "README.md",
        "generation_config.json",
    } <= set(recorder.uploaded["files"])


def test_dry_run_prints_files_and_card_and_uploads_nothing(model_dir, recorder, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    (model_dir / "generation_config.json").unlink()
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    assert hub.main(["push", "--model", str(model_dir), "--repo-id", "me/tiny-par", "--private", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert recorder.calls == [] and recorder.tokens == []
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before  # nothing written
    assert "would create private repo me/tiny-par" in out
    assert "model.safetensors" in out and "generation_config.json  (to be written)" in out
    assert "from parallel_reason.runner import Runner" in out and "## Training config" in out
    assert TOKEN not in out


# ---------------------------------------------------------------------------
# errors: before any upload, naming the file and the problem


def _no_safetensors(d: Path):
    (d / "model.safetensors").unlink()


def _pickle_weights(d: Path):
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")


def _pickle_instead(d: Path):
    (d / "model.safetensors").rename(d / "pytorch_model.bin")


def _tag_missing(d: Path):
    """Replace the tokenizer by one that has every control tag but </Thread>."""
    from transformers import AddedToken

    from parallel_reason.tiny import build_tokenizer

    tok = build_tokenizer([random_trajectory(random.Random(1)) for _ in range(20)], vocab_size=280)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in CONTROL_TAGS if t != "</Thread>"])
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (d / f).unlink(missing_ok=True)
    tok.save_pretrained(d)


def _no_tokenizer(d: Path):
    (d / "tokenizer.json").unlink()


def _no_config(d: Path):
    (d / "config.json").unlink()


def _tag_outside_embeddings(d: Path):
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = 100
    (d / "config.json").write_text(json.dumps(cfg))


def _missing_shard(d: Path):
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )


@pytest.mark.parametrize(
    "breaker,message",
    [
        (_no_safetensors, r"no \*\.safetensors weights"),
        (_pickle_weights, r"pytorch_model\.bin: pickled file \(\.bin\) refused"),
        (_pickle_instead, r"pytorch_model\.bin: pickled file"),
        (_tag_missing, r"control tag '</Thread>' as \d+ tokens .*, not one: add the tags"),
        (_no_tokenizer, r"tokenizer files missing"),
        (_no_config, r"no config\.json \(a model\) or adapter_config\.json"),
        (_tag_outside_embeddings, r"control tag '<Parallel>' has token id \d+, outside the model's embeddings"),
        (
            _missing_shard,
            r"model\.safetensors\.index\.json: shard\(s\) \['model-00002-of-00002\.safetensors'\] missing",
        ),
    ],
)
def test_broken_folder_fails_before_upload(model_dir, recorder, breaker, message):
    breaker(model_dir)
    with pytest.raises(hub.PushError, match=message):
        hub.push(model_dir, "me/tiny-par", token=TOKEN)
    assert recorder.calls == []


def test_bad_arguments_fail_before_upload(model_dir, tmp_path, recorder, capsys, monkeypatch):
    with pytest.raises(hub.PushError, match="no summary.json"):
        hub.push(model_dir, "me/tiny-par", token=TOKEN, eval_dirs=[tmp_path / "nope"])
    with pytest.raises(hub.PushError, match="invalid repo id"):
        hub.push(model_dir, "me/not a repo", token=TOKEN)
    with pytest.raises(hub.PushError, match="no such directory"):
        hub.push(tmp_path / "missing", "me/tiny-par", token=TOKEN)
    # no token anywhere: a clear error, not an anonymous request
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(hub.PushError, match="no Hugging Face token"):
        hub.push(model_dir, "me/tiny-par")
    assert recorder.calls == []
    # the CLI reports errors with exit status 2
    (model_dir / "model.safetensors").unlink()
    assert hub.main(["push", "--model", str(model_dir), "--repo-id", "me/tiny-par"]) == 2
    assert "error: " in capsys.readouterr().err and recorder.calls == []


# ---------------------------------------------------------------------------
# the token


def test_token_reaches_hfapi_only(model_dir, recorder, capsys, caplog, monkeypatch):
    """Success, custom --token-env, failed upload and a refused folder: the token is
    handed to HfApi and appears in no output, log record or file of the folder."""
    caplog.set_level(logging.DEBUG)
    # a trainer run earlier in the session may have set the package logger's own level
    caplog.set_level(logging.DEBUG, logger="parallel_reason")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert hub.main(["push", "--model", str(model_dir), "--repo-id", "me/tiny-par"]) == 0
    assert recorder.tokens == [TOKEN]
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("MY_HUB_TOKEN", TOKEN[::-1])
    assert (
        hub.main(
            ["push", "--model", str(model_dir), "--repo-id", "me/tiny-par", "--token-env", "MY_HUB_TOKEN", "--private"]
        )
        == 0
    )
    assert recorder.tokens[-1] == TOKEN[::-1]
    assert hub.main(["push", "--model", str(model_dir), "--repo-id", "me/x", "--token-env", "UNSET_VAR_X"]) == 2
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    recorder.fail_upload = RuntimeError("503 Service Unavailable")
    assert hub.main(["push", "--model", str(model_dir), "--repo-id", "me/tiny-par"]) == 1
    (model_dir / "model.safetensors").unlink()
    assert hub.main(["push", "--model", str(model_dir), "--repo-id", "me/tiny-par"]) == 2
    out = capsys.readouterr()
    assert "UNSET_VAR_X" in out.err and "503 Service Unavailable" in out.err
    logs = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert "uploading" in caplog.text
    for secret in (TOKEN, TOKEN[::-1]):
        assert secret not in out.out and secret not in out.err and secret not in logs
        assert not [p for p in model_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# ---------------------------------------------------------------------------
# training configs


def test_config_fields_and_validation():
    from parallel_reason import grpo, sft

    assert sft.SFTConfig().push_to_hub is False and grpo.GRPOConfig().push_to_hub is False
    for name in ("sft/countdown_tiny", "sft/countdown_qwen", "grpo/countdown_tiny", "grpo/countdown_qwen"):
        mod = sft if name.startswith("sft") else grpo
        path = ROOT / "configs" / f"{name}.yaml"
        assert "# push_to_hub: false" in path.read_text() and "# hub_model_id:" in path.read_text()
        cfg = mod.parse_args(["--config", str(path)])
        assert cfg.push_to_hub is False and cfg.hub_model_id is None
        on = mod.parse_args(
            ["--config", str(path), "--push_to_hub", "true", "--hub_model_id", "me/m", "--hub_private", "true"]
        )
        assert on.push_to_hub is True and on.hub_model_id == "me/m" and on.hub_private is True
        with pytest.raises(ValueError, match="push_to_hub is true but hub_model_id is not set"):
            mod.parse_args(["--config", str(path), "--push_to_hub", "true"])
        with pytest.raises(ValueError, match="hub_model_id 'me/bad id' is not a valid repo id"):
            mod.parse_args(["--config", str(path), "--push_to_hub", "true", "--hub_model_id", "me/bad id"])
    with pytest.raises(ValueError, match="push_to_hub is true but hub_model_id is not set"):
        sft.SFTConfig(push_to_hub=True).validate()
    with pytest.raises(ValueError, match="push_to_hub needs save_final_model"):
        grpo.GRPOConfig(push_to_hub=True, hub_model_id="me/m", save_final_model=False).validate()
    assert sft.main(["--push_to_hub", "true"]) == 2


def test_sft_push_to_hub_pushes_final_once(tmp_path, recorder, monkeypatch, fresh_accelerate):
    from parallel_reason import sft

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    rng = random.Random(3)
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"prompt": f"Numbers: {k} 2\nTarget: 5\n", "completion": random_trajectory(rng, depth=1, max_width=2)}
            )
            + "\n"
            for k in range(4)
        )
    )
    cfg = sft.SFTConfig(
        train_data=str(data),
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=2,
        save_steps=0,
        eval_on_start=False,
        tiny_vocab_size=300,
        tiny_hidden_size=32,
        tiny_layers=1,
        tiny_heads=2,
        tiny_kv_heads=1,
        tiny_intermediate_size=64,
        disable_tqdm=True,
        log_level="warning",
        report_to=["none"],
        max_length=1024,
        push_to_hub=True,
        hub_model_id="me/sft-tiny",
        hub_private=True,
    ).validate()
    res = sft.train(cfg)
    [up] = recorder.named("upload_folder")
    assert Path(up["folder_path"]) == Path(res.final_dir) == tmp_path / "run" / "final"
    assert recorder.named("create_repo") == [
        {"repo_id": "me/sft-tiny", "private": True, "exist_ok": True, "repo_type": "model"}
    ]
    assert "model.safetensors" in recorder.uploaded["files"]
    card = recorder.uploaded["readme"]
    assert 'path = "me/sft-tiny"' in card and "hub_model_id: me/sft-tiny" in card and "| stage | sft |" in card
    # the card's config reruns the recipe (push switched off as the reproduce command does)
    cfg_path = tmp_path / "config.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(hub.read_card_config(Path(res.final_dir))))
    again = sft.parse_args(["--config", str(cfg_path), "--push_to_hub", "false"])
    assert again.max_steps == 1 and again.push_to_hub is False


def test_grpo_push_to_hub_pushes_final_once(tiny_tokenizer, tmp_path, recorder, monkeypatch, fresh_accelerate):
    from parallel_reason import grpo

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    cfg = grpo.GRPOConfig(
        num_generations=2,
        prompts_per_step=1,
        max_new_tokens=4,
        max_steps=1,
        output_dir=str(tmp_path),
        report_to=["none"],
        save_final_model=True,
        num_samples_to_log=0,
        log_level="warning",
        push_to_hub=True,
        hub_model_id="me/grpo-tiny",
    ).validate()
    tr = grpo.GRPOTrainer(
        cfg,
        model=make_model(tiny_tokenizer, **TINY),
        tokenizer=tiny_tokenizer,
        train_rows=[{"prompt": "Numbers: 1 2\nTarget: 3\n"}],
        reward_funcs=[lambda prompts, completions, **kw: [0.0] * len(completions)],
    )
    res = tr.train()
    [up] = recorder.named("upload_folder")
    assert Path(up["folder_path"]) == Path(res.final_dir) == tmp_path / "final"
    assert recorder.named("create_repo")[0]["private"] is False
    assert "| stage | grpo |" in recorder.uploaded["readme"]
    assert "recipes/grpo.py --config config.yaml" in recorder.uploaded["readme"]


def test_failed_training_push_names_the_saved_model(model_dir, recorder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    recorder.fail_upload = ConnectionError("hub unreachable")
    with pytest.raises(
        RuntimeError,
        match=r"hub unreachable.*the model is saved; retry with: python -m "
        r"parallel_reason\.hub push --model .*final --repo-id me/m --private",
    ):
        hub.push_trained(model_dir, "me/m", private=True)
    assert (model_dir / "model.safetensors").exists()


def test_failed_push_leaves_the_folder_as_it_was_and_never_echoes_the_token(model_dir, recorder, capsys, monkeypatch):
    """A server whose error body echoes the token: the message is redacted; the
    README (and a generation config written for the upload) are put back."""
    (model_dir / "generation_config.json").unlink()  # push writes one before uploading
    before = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    recorder.fail_upload = RuntimeError(
        f'401 Unauthorized: {{"error": "invalid token {TOKEN}", "header": "Authorization: Bearer {TOKEN}"}}'
    )
    assert hub.main(["push", "--model", str(model_dir), "--repo-id", "me/tiny-par"]) == 1
    err = capsys.readouterr().err
    assert "401 Unauthorized" in err and "[REDACTED]" in err and TOKEN not in err
    assert recorder.named("upload_folder")  # it got as far as the upload
    after = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    assert after == before
    with pytest.raises(RuntimeError) as ei:  # the trainers' push_to_hub path
        hub.push_trained(model_dir, "me/tiny-par")
    assert TOKEN not in str(ei.value) and "[REDACTED]" in str(ei.value)
    assert {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()} == before


def test_card_states_the_thread_header_the_model_was_trained_with():
    from parallel_reason.hub import render_model_card

    base = {"model_name": "m", "stage": "sft", "mode": "parallel", "join": "concat", "metrics": {}, "config": {}}
    outline = render_model_card({**base, "thread_header": "outline"})
    index = render_model_card({**base, "thread_header": "index"})
    assert "Thread header `outline`" in outline and "thread_header" in outline
    assert "Thread header `outline`" not in index and "The opener is `\\n<Thread>i:`" in index


def test_card_states_what_the_join_shows():
    from parallel_reason.hub import render_model_card

    base = {"model_name": "m", "stage": "sft", "mode": "parallel", "metrics": {}, "config": {}}
    cards = {j: render_model_card({**base, "join": j}) for j in ("concat", "tree", "summary")}
    assert "re-read as one linear text" in cards["concat"]
    assert "nothing re-read" in cards["tree"] and "re-read as one linear" not in cards["tree"]
    assert "opener and result" in cards["summary"] and 'join="summary"' in cards["summary"]
