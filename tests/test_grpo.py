"""P-GRPO trainer (docs/design.md#grpo).

- Oracle: on rollouts without a ``<Parallel>`` block the loss and its gradient equal
  plain GRPO written here from the formula on linear sequences (causal forward,
  log_softmax, ratio, clip, advantages, normalisation), for every normalisation,
  with old log-probs that differ from the current ones and with KL on; and the
  trainer's multi-iteration optimisation equals the same reference stepped by hand.
- Parallel rollouts with malformed blocks, EOS inside a thread and truncation flow
  through rewards and loss; runner-written tokens carry no loss.
- Learning: a tiny model learns a reward on CPU in a few dozen steps.
- Checkpoints resume exactly; LoRA + KL via disable_adapter; the recipe runs.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_model, make_rollout

from parallel_reason import grpo as G
from parallel_reason.layout import Run, TBlock, TThread, closer_ids, opener_ids

TOL = 1e-5
LR = 0.5


@pytest.fixture(autouse=True)
def one_thread(fresh_accelerate):
    """Every test: one torch thread and a fresh accelerate state (conftest)."""
    yield


def LinRollout(prompt_ids: list, completion_ids: list, old: list):
    """A linear rollout (one sampled run) whose recorded log-probs are ``old``."""
    return make_rollout([Run(list(completion_ids), True, list(old))], prompt_ids)


def make_rollouts(tok, model, n: int, seed: int, perturb: float = 0.3):
    """Linear rollouts sampled from ``model``; their recorded ("old") log-probs are
    the model's own plus noise, so the ratio is not 1."""
    gen = torch.Generator().manual_seed(seed)
    V = len(tok)
    out = []
    for i in range(n):
        plen = 2 + i % 3
        clen = 3 + (7 * i) % 6
        prompt = torch.randint(0, V, (plen,), generator=gen).tolist()
        comp = torch.randint(0, V, (clen,), generator=gen).tolist()
        with torch.no_grad():
            lp = ref_logprobs(model, prompt, comp)
        old = (lp + perturb * torch.randn(clen, generator=gen, dtype=torch.float64)).tolist()
        out.append(LinRollout(prompt, comp, old))
    return out


def ref_logprobs(model, prompt: list, comp: list) -> torch.Tensor:
    """Plain causal forward: log p(comp[k] | prompt + comp[:k])."""
    ids = torch.tensor([prompt + comp])
    logits = model(input_ids=ids).logits[0].double()
    lsm = torch.log_softmax(logits, -1)
    tgt = torch.tensor(comp)
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(comp) - 1)
    return lsm[pos, tgt]


def reference_loss(model, rollouts, adv, *, eps_low, eps_high, norm, max_tokens=None, beta=0.0, ref_model=None):
    """GRPO from the formula, one linear sequence at a time."""
    per_rollout = []
    for r, a in zip(rollouts, adv.tolist()):
        lp = ref_logprobs(model, r.prompt_ids, r.completion_ids)
        old = torch.tensor(r.logprobs, dtype=torch.float32).double()  # the runner records float32
        ratio = torch.exp(lp - old)
        loss = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a)
        if beta:
            with torch.no_grad():
                ref = ref_logprobs(ref_model, r.prompt_ids, r.completion_ids)
            loss = loss + beta * (torch.exp(ref - lp) - (ref - lp) - 1)
        per_rollout.append(loss)
    if norm == "token":
        return torch.cat(per_rollout).sum() / sum(len(x) for x in per_rollout)
    if norm == "sequence":
        return torch.stack([x.mean() for x in per_rollout]).mean()
    if norm == "constant":
        return torch.cat(per_rollout).sum() / (len(per_rollout) * max_tokens)
    raise ValueError(norm)


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("norm", ["token", "sequence", "constant"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_oracle_loss_and_gradient(tiny_tokenizer, norm, beta):
    tok = tiny_tokenizer
    model = make_model(tok, seed=3).double()
    ref_model = make_model(tok, seed=4).double()
    rollouts = make_rollouts(tok, model, 6, seed=11)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 1.0])
    adv = G.group_advantages(rewards, 3)
    kw = dict(eps_low=0.2, eps_high=0.28, norm=norm, max_tokens=12, beta=beta, ref_model=ref_model)

    model.zero_grad()
    ref = reference_loss(model, rollouts, adv, **kw)
    ref.backward()
    g_ref = grads(model)

    graphs = [r.graph for r in rollouts]
    refs = None
    if beta:
        with torch.no_grad():
            refs = [packed for packed in _packed_single(ref_model, graphs)]
    model.zero_grad()
    loss, st = G.grpo_loss(
        model,
        graphs,
        adv,
        [g.sample_logprobs.double() for g in graphs],
        refs,
        epsilon_low=0.2,
        epsilon_high=0.28,
        beta=beta,
        normalization=norm,
        max_tokens=12,
        pad_id=tok.pad_token_id,
    )
    loss.backward()
    g_new = grads(model)

    assert abs(float(loss.detach()) - float(ref.detach())) < TOL, (float(loss), float(ref))
    assert st["clip_low"] + st["clip_high"] > 0, "the test must exercise the clip"
    assert g_ref.keys() == g_new.keys()
    worst = max(float((g_ref[k] - g_new[k]).abs().max()) for k in g_ref)
    scale = max(float(g.abs().max()) for g in g_ref.values())
    assert scale > 1e-3
    assert worst < TOL, f"max grad diff {worst:.2e}"


def _packed_single(model, graphs):
    from parallel_reason.attention import collate
    from parallel_reason.logprobs import packed_logprobs

    b = collate(graphs, pad_id=0)
    lp = packed_logprobs(model, b)
    return [lp[i, : len(g)] for i, g in enumerate(graphs)]


def test_sample_logprobs_are_the_old_logprobs(tiny_tokenizer):
    """The runner's recorded log-probs sit on the graph node of each sampled token."""
    r = LinRollout([5, 6], [7, 8, 9], [-1.0, -2.0, -3.0])
    g = r.graph
    assert g.sample_logprobs.tolist() == [0.0, 0.0, -1.0, -2.0, -3.0]
    assert g.loss_mask.tolist() == [False, False, True, True, True]


def _zero_reward(prompts, completions, **kw):
    return [0.0] * len(completions)


def _trainer(tok, model, tmp_path, rows=None, reward_funcs=(_zero_reward,), **over):
    """A trainer on ``model``; ``reward_funcs=None`` uses the configured rewards."""
    base = dict(
        num_generations=4,
        prompts_per_step=2,
        max_new_tokens=12,
        learning_rate=1e-2,
        max_steps=1,
        output_dir=str(tmp_path),
        max_grad_norm=0.0,
        epsilon_low=0.2,
        epsilon_high=0.28,
        report_to=["none"],
        save_final_model=False,
        num_samples_to_log=0,
        log_level="warning",
    )
    base.update(over)
    cfg = G.GRPOConfig(**base)
    return G.GRPOTrainer(
        cfg, model=model, tokenizer=tok, train_rows=rows or [{"prompt": "x"}], reward_funcs=reward_funcs
    )


@pytest.mark.parametrize("norm,beta", [("token", 0.0), ("sequence", 0.05), ("constant", 0.0)])
def test_oracle_iterations_match_reference_steps(tiny_tokenizer, tmp_path, norm, beta):
    """num_iterations=2, two mini-batches of 4 rollouts, micro-batches of 2 (padding,
    gradient accumulation): four optimiser steps with the old log-probs fixed to the
    runner's for every iteration equal the reference stepped by hand (SGD, so
    parameter differences are gradient differences times the learning rate)."""
    tok = tiny_tokenizer
    model = make_model(tok, seed=5).double()
    ref_init = copy.deepcopy(model)
    rollouts = make_rollouts(tok, model, 8, seed=12, perturb=0.3)
    rewards = torch.tensor([1.0, 0.0, 0.2, 0.0, 1.0, 1.0, 0.0, 0.5])
    adv = G.group_advantages(rewards, 4, "group")

    ref_model = copy.deepcopy(model)
    opt = torch.optim.SGD(ref_model.parameters(), lr=LR)
    for _ in range(2):
        for sl in (slice(0, 4), slice(4, 8)):
            opt.zero_grad()
            loss = reference_loss(
                ref_model,
                rollouts[sl],
                adv[sl],
                eps_low=0.2,
                eps_high=0.28,
                norm=norm,
                max_tokens=12,
                beta=beta,
                ref_model=ref_init,
            )
            loss.backward()
            opt.step()

    tr = _trainer(
        tok,
        model,
        tmp_path,
        num_iterations=2,
        mini_batch_size=4,
        micro_batch_size=2,
        loss_normalization=norm,
        beta=beta,
        optim="sgd",
        learning_rate=LR,
    )
    assert tr.cfg.optimizer_steps_per_step == 4 and tr.n_micro == 2
    batch = G.RolloutBatch(rollouts=rollouts, graphs=[r.graph for r in rollouts], rewards=rewards, advantages=adv)
    stats = tr.optimize(batch)
    assert stats["clip_fraction"] > 0
    with torch.no_grad():
        worst = max(float((p - q).abs().max()) for p, q in zip(tr.unwrapped.parameters(), ref_model.parameters()))
        moved = max(float((p - q).abs().max()) for p, q in zip(ref_init.parameters(), ref_model.parameters()))
    assert moved > 1e-3
    assert worst < TOL, f"max param diff {worst:.2e}"


def test_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 3.0])
    a = G.group_advantages(r, 3)
    assert a.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, -1.0, 0.0, 1.0])
    s = G.group_advantages(r, 3, "group")
    assert s[3:].tolist() == pytest.approx([-1 / (1 + 1e-4), 0.0, 1 / (1 + 1e-4)])
    assert G.group_advantages(torch.ones(4), 2).abs().max() == 0
    with pytest.raises(ValueError, match="loss_normalization"):
        G.GRPOConfig(loss_normalization="nope").validate()
    assert G.GRPOConfig(loss_normalization="dr_grpo").validate().loss_normalization == "constant"
    with pytest.raises(ValueError, match="mini_batch_size"):
        G.GRPOConfig(num_generations=4, prompts_per_step=2, mini_batch_size=3).validate()


# ---------------------------------------------------------------------------
# Parallel rollouts: malformed blocks, EOS in a thread, truncation


NUMS, TARGET = [1, 2, 3, 4], 24
GOOD = (
    "plan\n<Parallel>\n<Outlines><Outline>1: a</Outline><Outline>2: b</Outline></Outlines>\n"
    "<Thread>1: x x x x</Thread>\n<Thread>2: y</Thread>\n</Parallel>\nAnswer: 1*2*3*4"
)


def _replayed(tok, model):
    """Six rollouts forced through the runner's replay mode, each ending differently."""
    from parallel_reason.layout import encode
    from parallel_reason.runner import Runner
    from parallel_reason.tokens import tag_token_ids

    t = tag_token_ids(tok)
    eos = tok.eos_token_id
    head = (
        [t["<Parallel>"]]
        + encode(tok, "\n")
        + [t["<Outlines>"], t["<Outline>"]]
        + encode(tok, "1: a")
        + [t["</Outline>"], t["<Outline>"]]
        + encode(tok, "2: b")
        + [t["</Outline>"], t["</Outlines>"]]
    )
    eos_in_thread = [
        Run(encode(tok, "go\n")),
        TBlock(
            head=head,
            threads=[
                TThread(opener_ids(tok, 1), [Run(encode(tok, " x") + [eos])]),
                TThread(opener_ids(tok, 2), [Run(encode(tok, " y") + [t["</Thread>"]])]),
            ],
            closer=closer_ids(tok),
        ),
    ]
    stray = encode(tok, "a ") + [t["</Thread>"]] + encode(tok, " b")
    prompt = "Numbers: 1 2 3 4\nTarget: 24\n"
    big = Runner(model, tok, max_new_tokens=200, max_width=4, max_depth=2)
    out = big.replay([prompt] * 3, [GOOD, eos_in_thread, stray])
    from parallel_reason.layout import tokenize_trajectory

    pre = tokenize_trajectory(GOOD, tok)
    inside = len(pre[0].ids) + len(pre[1].head) + 2  # budget spent two tokens into thread 1
    out += Runner(model, tok, max_new_tokens=inside).replay([prompt], [GOOD])
    out += Runner(model, tok, max_new_tokens=200, max_thread_tokens=3).replay([prompt], [GOOD])
    out += Runner(model, tok, max_new_tokens=200, max_width=1).replay([prompt], [GOOD])
    return out


def test_malformed_eos_in_thread_and_truncation_flow(tiny_tokenizer, tmp_path, one_thread):
    tok = tiny_tokenizer
    model = make_model(tok, seed=2)
    rollouts = _replayed(tok, model)
    reasons = [r.finish_reason for r in rollouts]
    assert reasons == ["eos", "eos_in_thread", "malformed", "unclosed_thread", "max_thread_tokens", "max_threads"]

    tr = _trainer(
        tok,
        model,
        tmp_path,
        rows=[{"prompt": "p", "nums": NUMS, "target": TARGET}] * 2,
        reward_funcs=None,
        num_generations=3,
        prompts_per_step=2,
        micro_batch_size=2,
        rewards=["correctness", "acceleration", "format"],
        acceleration_factor=1.0,
        acceleration_clip=1.0,
        format_invalid=-1.0,
        format_truncated=-0.5,
        learning_rate=1e-3,
    )
    rows = [{"prompt": "p", "nums": NUMS, "target": TARGET}] * 2
    batch = tr.make_batch(rows, rollouts)
    c = batch.components
    assert c["correctness"] == [1.0, 0, 0, 0, 0, 0]
    r0 = rollouts[0]
    assert r0.critical_path < r0.total_tokens
    assert (
        c["acceleration"][0] == pytest.approx(1 - r0.critical_path / r0.total_tokens)
        and c["acceleration"][1:] == [0] * 5
    )
    assert c["format"] == [1.0, -1.0, -1.0, -0.5, -0.5, -1.0]
    assert torch.isfinite(batch.rewards).all() and torch.isfinite(batch.advantages).all()
    metrics = tr.rollout_metrics(batch)
    assert metrics["format_valid"] == pytest.approx(1 / 6) and metrics["accuracy"] == pytest.approx(1 / 6)
    assert metrics["finish/eos_in_thread"] == pytest.approx(1 / 6)

    # runner-written tokens: no loss, no recorded log-prob; graphs of unjoined blocks lay out
    from parallel_reason.tokens import tag_token_ids

    ids = tag_token_ids(tok)
    for g in batch.graphs:
        opener_nodes = (g.input_ids == ids["<Thread>"]) | (g.input_ids == ids["</Parallel>"])
        assert not g.loss_mask[opener_nodes].any()
        assert (g.sample_logprobs[~g.loss_mask] == 0).all()
        assert int(g.loss_mask.sum()) > 0

    # train/inference consistency: the runner's recorded log-probs are what the trainer recomputes
    recomputed = tr._logprobs(tr.model, batch.graphs)
    for g, lp in zip(batch.graphs, recomputed):
        assert float((g.sample_logprobs - lp)[g.loss_mask].abs().max()) < 1e-4

    # loss: finite, with finite gradients; changing log-probs off the loss mask changes nothing
    old = [g.sample_logprobs for g in batch.graphs]
    junk = [
        torch.where(g.loss_mask, g.sample_logprobs, torch.full_like(g.sample_logprobs, -50.0)) for g in batch.graphs
    ]
    loss, st = G.grpo_loss(tr.model, batch.graphs, batch.advantages, old, pad_id=tok.pad_token_id)
    loss2, _ = G.grpo_loss(tr.model, batch.graphs, batch.advantages, junk, pad_id=tok.pad_token_id)
    assert torch.isfinite(loss) and float(loss.detach()) == float(loss2.detach())
    assert st["clip_low"] + st["clip_high"] == 0 and st["ratio"] / st["tokens"] == pytest.approx(1.0, abs=1e-4)
    tr.model.zero_grad()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in tr.model.parameters() if p.grad is not None)
    tr.model.zero_grad()

    before = [p.detach().clone() for p in tr.model.parameters()]
    out = tr.optimize(batch)
    assert all(math.isfinite(v) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


# ---------------------------------------------------------------------------
# Learning, resume, LoRA, recipe


def digit_reward(tok):
    digits = {tok.convert_tokens_to_ids(str(d)) for d in range(10)}

    def digits_fraction(prompts, completions, rollouts, **kw):
        out = []
        for r in rollouts:
            sampled = [t for t, m in zip(r.completion_ids, r.loss_mask) if m]
            out.append(sum(t in digits for t in sampled) / max(len(sampled), 1))
        return out

    return digits_fraction


def test_learns_a_reward(tiny_tokenizer, tmp_path, one_thread):
    """Reward = share of sampled tokens that are digits (3% of the vocabulary): the mean
    reward rises from ~0.05 to ~1 within 25 steps of parallel-mode rollouts."""
    tok = tiny_tokenizer
    rows = [{"prompt": f"Numbers: {i} 2\nTarget: 3\n"} for i in range(8)]
    tr = _trainer(
        tok,
        make_model(tok, seed=0),
        tmp_path,
        rows=rows,
        reward_funcs=[digit_reward(tok)],
        num_generations=8,
        prompts_per_step=2,
        max_new_tokens=8,
        learning_rate=1e-2,
        max_steps=25,
        max_grad_norm=1.0,
        seed=0,
        num_samples_to_log=2,
    )
    result = tr.train()
    r = result.series("reward")
    assert len(r) == 25
    first, last = sum(r[:5]) / 5, sum(r[-5:]) / 5
    assert first < 0.15 and last > 0.6 and last - first > 0.5, r
    logged = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(logged) == 25 and "rewards/digits_fraction" in logged[-1] and "clip_fraction" in logged[-1]
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 50


def _resume_run(tok, out, **over):
    rows = [{"prompt": f"Numbers: {i} 2\nTarget: 3\n"} for i in range(5)]
    return _trainer(
        tok,
        make_model(tok, seed=0),
        out,
        rows=rows,
        reward_funcs=[digit_reward(tok)],
        num_generations=4,
        prompts_per_step=2,
        max_new_tokens=6,
        learning_rate=5e-3,
        max_steps=4,
        save_steps=2,
        save_total_limit=3,
        lr_scheduler_type="linear",
        beta=0.02,
        seed=3,
        num_iterations=2,
        **over,
    )


def test_exact_resume(tiny_tokenizer, tmp_path, one_thread):
    tok = tiny_tokenizer
    a = _resume_run(tok, tmp_path / "a")
    ra = a.train()
    assert (tmp_path / "a" / "checkpoint-2" / "trainer_state.json").exists()
    b = _resume_run(tok, tmp_path / "b", resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert b.global_step == 2
    rb = b.train()
    assert [e["reward"] for e in rb.log_history if e["step"] > 2] == ra.series("reward")[2:]
    assert [e["loss"] for e in rb.log_history if e["step"] > 2] == ra.series("loss")[2:]
    for p, q in zip(a.unwrapped.parameters(), b.unwrapped.parameters()):
        assert torch.equal(p, q)
    assert b.scheduler.get_last_lr() == a.scheduler.get_last_lr()
    # "auto" picks the latest complete checkpoint; a run refuses to overwrite checkpoints silently
    c = _resume_run(tok, tmp_path / "a", resume_from_checkpoint="auto")
    assert c.global_step == 4
    with pytest.raises(ValueError, match="already holds checkpoints"):
        _resume_run(tok, tmp_path / "a")


def test_lora_kl_to_base_and_final_model(tiny_tokenizer, tmp_path, one_thread):
    tok = tiny_tokenizer
    rows = [{"prompt": f"Numbers: {i} 2\nTarget: 3\n"} for i in range(4)]
    model = make_model(tok, seed=0)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    tr = _trainer(
        tok,
        model,
        tmp_path,
        rows=rows,
        reward_funcs=[digit_reward(tok)],
        use_peft=True,
        beta=0.1,
        lora_r=4,
        lora_alpha=8,
        learning_rate=5e-2,
        max_steps=3,
        save_final_model=True,
        max_new_tokens=6,
    )
    assert tr.ref_mode == "disable_adapter" and tr.ref_model is None
    res = tr.train()
    kl = res.series("kl")
    assert kl[0] == 0.0 and kl[-1] > 0  # LoRA starts as the identity: policy == base at step 1
    for n, p in tr.unwrapped.get_base_model().named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n.replace(".base_layer", "")]), n
    final = tmp_path / "final"
    assert (final / "adapter" / "adapter_config.json").exists() and (final / "config.json").exists()
    card = (final / "README.md").read_text()
    assert "grpo" in card and "P-GRPO" in card


def test_recipe_runs_sequential_baseline(tiny_tokenizer, tmp_path, one_thread):
    """recipes/grpo.py with the tiny config, a saved tiny model and countdown prompts;
    --parallel false: the runner never forks, the acceleration reward is 0."""
    import importlib.util
    import json
    from pathlib import Path

    from parallel_reason.tasks.countdown import prompt

    tok = tiny_tokenizer
    model = make_model(tok, seed=0)
    mdir = tmp_path / "model"
    model.save_pretrained(mdir)
    tok.save_pretrained(mdir)
    data = tmp_path / "prompts.jsonl"
    probs = [([1, 2, 3, 4], 24), ([2, 3, 5, 7], 17), ([1, 1, 2, 9], 20)]
    data.write_text(
        "".join(
            json.dumps({"prompt": prompt(n, t), "nums": n, "target": t, "task": "countdown"}) + "\n" for n, t in probs
        )
    )
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("grpo_recipe", root / "recipes" / "grpo.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tmp_path / "run"
    rc = recipe.main(
        [
            "--config",
            str(root / "configs/grpo/countdown_tiny.yaml"),
            "--model_name_or_path",
            str(mdir),
            "--train_data",
            str(data),
            "--eval_data",
            str(data),
            "--generate_data",
            "none",
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--num_generations",
            "2",
            "--prompts_per_step",
            "2",
            "--micro_batch_size",
            "2",
            "--max_new_tokens",
            "8",
            "--eval_steps",
            "0",
            "--save_steps",
            "1",
            "--parallel",
            "false",
            "--log_level",
            "warning",
            "--report_to",
            "tensorboard",
        ]
    )
    assert rc == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if "reward" in line]
    assert [line["step"] for line in train] == [1, 2]
    assert all(
        line["rewards/acceleration"] == 0 and line["blocks_per_rollout"] == 0 and line["speedup"] == 1 for line in train
    )
    assert "eval/accuracy" in lines[0] and "eval/accuracy" in lines[-1]
    assert (out / "checkpoint-2" / "accelerate_state").is_dir() and (out / "final" / "README.md").exists()
    assert "Sequential GRPO baseline" in (out / "final" / "README.md").read_text()
    assert list((out / "logs").rglob("events.out.tfevents*")), "tensorboard wrote nothing"
    assert recipe.main(["--config", str(root / "configs/grpo/countdown_tiny.yaml"), "--bogus", "1"]) == 2


# ---------------------------------------------------------------------------
# multi-process (slow)


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(tiny_tokenizer, tmp_path):
    """DDP over gloo: 2 processes x 1 prompt == 1 process x 2 prompts (same prompts,
    same rollout seeds by global position, loss normalised by global counts)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from parallel_reason.tasks.countdown import prompt

    root = Path(__file__).resolve().parents[1]
    tok = tiny_tokenizer
    mdir = tmp_path / "model"
    make_model(tok, seed=0).save_pretrained(mdir)
    tok.save_pretrained(mdir)
    data = tmp_path / "prompts.jsonl"
    probs = [([1, 2, 3, 4], 24), ([2, 3, 5, 7], 17), ([1, 1, 2, 9], 20), ([3, 3, 4, 8], 12)]
    data.write_text("".join(json.dumps({"prompt": prompt(n, t), "nums": n, "target": t}) + "\n" for n, t in probs))
    common = dict(
        config=root / "configs/grpo/countdown_tiny.yaml",
        model_name_or_path=mdir,
        train_data=data,
        eval_data="none",
        generate_data="none",
        max_steps=3,
        num_generations=4,
        max_new_tokens=8,
        micro_batch_size=2,
        learning_rate=1e-2,
        rewards="[format]",
        reward_weights="[1.0]",
        format_invalid=-1.0,
        format_truncated=0.0,
        save_steps=0,
        log_level="warning",
    )

    def args(**kw):
        out = []
        for k, v in {**common, **kw}.items():
            out += [f"--{k}", str(v)]
        return out

    env = dict(
        os.environ,
        WANDB_MODE="offline",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(root),
    )
    two = tmp_path / "two"
    # torchrun: `accelerate launch --cpu --num_processes 2` starts a single process
    # without an MPI hostfile; torchrun's env (RANK, WORLD_SIZE, ...) gives accelerate MULTI_CPU (gloo)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(29500 + os.getpid() % 1000),
            str(root / "recipes" / "grpo.py"),
            *args(output_dir=two, prompts_per_step=1),
        ],
        cwd=root,
        env={**env, "ACCELERATE_USE_CPU": "true"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    one = tmp_path / "one"
    r = subprocess.run(
        [sys.executable, str(root / "recipes" / "grpo.py"), *args(output_dir=one, prompts_per_step=2)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    a = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in a] == [e["step"] for e in b] == [1, 2, 3]
    assert any(e["reward_std"] > 0 for e in b), "the test needs reward variance"
    for x, y in zip(a, b):
        for k in ("reward", "total_tokens", "loss", "clip_fraction", "entropy"):
            assert abs(x[k] - y[k]) < 1e-4, (x["step"], k, x[k], y[k])
    wa, wb = load_file(two / "final" / "model.safetensors"), load_file(one / "final" / "model.safetensors")
    # Adam divides by sqrt(v): on coordinates whose gradient is ~0, the all-reduce's
    # different float32 summation order (~1e-8) moves the update direction, so weights
    # agree to ~1e-3 of the step size (lr 1e-2 x 3 steps), not to float eps.
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4
    st = json.loads((two / "trainer_state.json").read_text())
    assert st["num_processes"] == 2


def test_summary_join_rollouts_train_what_was_sampled(tiny_tokenizer, tmp_path, one_thread):
    """P-GRPO with ``join: summary``: the runner samples with it (a tag-happy model
    writes results), the trainer recomputes the sampled log-probs on the same summary
    graphs, and an optimizer step runs."""
    from parallel_reason.tokens import tag_token_ids

    tok = tiny_tokenizer
    model = make_model(tok, seed=6)
    bias = torch.zeros(model.lm_head.out_features)
    bias[list(tag_token_ids(tok).values())] = 5.0  # tags (<Result> included) sampled often
    hook = model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        tr = _trainer(
            tok,
            model,
            tmp_path,
            join="summary",
            num_generations=4,
            prompts_per_step=4,
            max_new_tokens=80,
            micro_batch_size=4,
            constrained=True,  # grammar-constrained sampling: tags only where they fit
        )
        rows = [{"prompt": f"Numbers: {k} 2\nTarget: 5\n"} for k in range(4)]
        rollouts = tr.generate(rows, 4, 1.0, seed=3)
        batch = tr.make_batch(rows, rollouts)
        assert all(g.join == "summary" for g in batch.graphs)
        assert any(it.result for r in rollouts for it in _runs(r.items))  # some thread sampled a result
        for g, lp in zip(batch.graphs, tr._logprobs(tr.model, batch.graphs)):
            assert float((g.sample_logprobs - lp)[g.loss_mask].abs().max()) < 1e-4
        out = tr.optimize(batch)
        assert all(math.isfinite(v) for v in out.values())
    finally:
        hook.remove()


def _runs(items):
    from parallel_reason.layout import TBlock

    for it in items:
        if isinstance(it, TBlock):
            for t in it.threads:
                yield from _runs(t.body)
        else:
            yield it
