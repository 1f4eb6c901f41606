"""Error analysis of a countdown eval run (parallel or sequential)."""

import collections
import json
import re
import sys
from fractions import Fraction

path = sys.argv[1]
S = collections.Counter()


def arith_ok(m):
    a, op, b, c = int(m[0]), m[1], int(m[2]), int(m[3])
    v = {"+": a + b, "-": a - b, "*": a * b, "/": (Fraction(a, b) if b else None)}[op]
    return v == c


for line in open(path):
    r = json.loads(line)
    t = r["completion"]
    nums = r["reference"]["nums"]
    tgt = r["reference"]["target"]
    S["n"] += 1
    S["correct"] += r["correct"]
    outl = re.findall(r"<Outline>\d+: (\d+)([-+*/])(\d+)=(\d+)", t)
    for o in outl:
        S["outline"] += 1
        S["outline_operands_from_prompt"] += int(o[0]) in nums and int(o[2]) in nums
        S["outline_arith_ok"] += arith_ok(o)
    if not outl and r["mode"] == "sequential":
        for ln in t.split("\n"):
            m = re.match(r" ?(\d+)([-+*/])(\d+)=(\d+) \[", ln)
            if m:
                o = m.groups()
                S["outline"] += 1
                S["outline_operands_from_prompt"] += int(o[0]) in nums and int(o[2]) in nums
                S["outline_arith_ok"] += arith_ok(o)
    checks = re.findall(r"(?<![\[\d])(\d+)([-+*/])(\d+)=(\d+)(?! \[)", t.split("</Outlines>")[-1])
    for c in checks:
        S["checks"] += 1
        S["checks_ok"] += arith_ok(c)
    threads = re.findall(r"<Thread>(\d+):(.*?)</Thread>", t, re.S)
    states = dict(re.findall(r"<Outline>(\d+): [^\[]*\[([\d ]+)\]", t))
    for i, body in threads:
        if i in states:
            S["threads"] += 1
            first = re.findall(r"(\d+)[-+*/](\d+)=", body.replace(states.get(i, ""), "", 0))
            st = set(int(x) for x in states[i].split())
            m = re.search(r"\] (\d+)[-+*/](\d+)=", body) or re.match(r" (\d+)[-+*/](\d+)=", body)
            if m:
                S["thread_uses_own_state"] += {int(m.group(1)), int(m.group(2))} == st or (
                    int(m.group(1)) in st and int(m.group(2)) in st
                )
    claims = re.findall(r"=> (.+?) = (\d+)", t)
    S["has_answer"] += r.get("answer") is not None
    S["claims"] += len(claims)


def rate(a, b):
    return f"{S[a] / max(S[b], 1):.3f}"


print(
    f"{path}: acc {rate('correct', 'n')} outline_operands_from_prompt {rate('outline_operands_from_prompt', 'outline')} outline_arith {rate('outline_arith_ok', 'outline')} checks_arith {rate('checks_ok', 'checks')} thread_uses_own_state {rate('thread_uses_own_state', 'threads')} (n={S['n']}, outlines={S['outline']}, checks={S['checks']})"
)
