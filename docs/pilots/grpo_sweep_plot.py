"""Summarise `grpo_sweep.sh` pilots: greedy accuracy and speedup on the 500 test problems
at every saved step, per-step rollout metrics, and how many test problems flipped
between right and wrong against the SFT model.

    python docs/pilots/grpo_sweep_plot.py DEMO_DIR PILOTS_DIR NAME [NAME ...]

Writes docs/pilots/grpo_sweep.json and docs/pilots/grpo_sweep.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def rows(path: Path) -> dict:
    return {r["id"]: r for r in map(json.loads, path.open())}


def main(demo: str, pilots: str, names: list[str]) -> None:
    sft_dir = Path(demo) / "eval" / "sft_parallel"
    sft = json.loads((sft_dir / "summary.json").read_text())
    sft_rows = rows(sft_dir / "results.jsonl")
    out: dict = {"sft": {"accuracy": sft["accuracy"], "speedup": sft["speedup_mean_of_ratios"]}, "pilots": {}}
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
    for name in names:
        d = Path(pilots) / name
        keys = ("step", "reward", "accuracy", "speedup", "fork_rate", "entropy")
        steps = [{k: m[k] for k in keys} for m in map(json.loads, (d / "grpo" / "metrics.jsonl").open())]
        evals = []
        for s in sorted(
            (p for p in d.glob("eval_checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.rsplit("-", 1)[1])
        ):
            summ = json.loads((s / "summary.json").read_text())
            got = rows(s / "results.jsonl")
            fixed = sum(1 for k, r in sft_rows.items() if not r["correct"] and got[k]["correct"])
            broken = sum(1 for k, r in sft_rows.items() if r["correct"] and not got[k]["correct"])
            evals.append(
                {
                    "step": int(s.name.rsplit("-", 1)[1]),
                    "accuracy": summ["accuracy"],
                    "speedup": summ["speedup_mean_of_ratios"],
                    "fixed": fixed,
                    "broken": broken,
                }
            )
        out["pilots"][name] = {"evals": evals, "steps": steps}
        xs = [0] + [e["step"] for e in evals]
        ax[0].plot(xs, [sft["accuracy"]] + [e["accuracy"] for e in evals], marker="o", label=name)
        ax[1].plot(xs, [sft["speedup_mean_of_ratios"]] + [e["speedup"] for e in evals], marker="o", label=name)
        ax[2].plot([s["step"] for s in steps], [s["fork_rate"] for s in steps], label=name)
    ax[0].set_title("greedy accuracy, 500 test problems")
    ax[1].set_title("greedy speedup (mean of ratios)")
    ax[2].set_title("rollouts that fork (T 0.7 samples)")
    for a in ax:
        a.set_xlabel("P-GRPO step")
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "grpo_sweep.png", dpi=90)
    (HERE / "grpo_sweep.json").write_text(json.dumps(out, indent=1) + "\n")
    for name, p in out["pilots"].items():
        print(name, [(e["step"], round(e["accuracy"], 3), e["fixed"], e["broken"]) for e in p["evals"]])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
