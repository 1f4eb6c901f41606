import json
import re
import sys

sys.path.insert(0, ".")
from collections import Counter

from parallel_reason.tasks import countdown as task

for path in sys.argv[1:]:
    S = Counter()
    for line in open(path):
        r = json.loads(line)
        t = r["completion"]
        nums = r["reference"]["nums"]
        tgt = r["reference"]["target"]
        S["n"] += 1
        outl = re.findall(r"<Outline>\d+: (\d+)([-+*/])(\d+)=(\d+)", t)
        good = False
        moves = set()
        for a, op, b, c in outl:
            a, b, c = int(a), int(b), int(c)
            rest = list(nums)
            try:
                rest.remove(a)
                rest.remove(b)
            except ValueError:
                continue
            v = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b and a % b == 0 else None}[op]
            if v != c or v is None:
                continue
            moves.add((a, op, b))
            if tgt in task.reachable(rest + [v]):
                good = True
        S["good_outline"] += good
        S["distinct_moves"] += len(moves)
    print(path, {k: round(v / S["n"], 3) for k, v in S.items() if k != "n"})
