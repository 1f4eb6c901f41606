import json
import re
import sys

sys.path.insert(0, ".")
from parallel_reason.tasks import countdown as task

for path in sys.argv[1:]:
    n = ok = thread_ok = 0
    for line in open(path):
        r = json.loads(line)
        n += 1
        ok += r["correct"]
        nums, t = r["reference"]["nums"], r["reference"]["target"]
        threads = re.findall(r"<Thread>\d+:(.*?)</Thread>", r["completion"], re.S)
        good = any(task.verify(m, nums, t).ok for th in threads for m in re.findall(r"=> (.+?) = \d+", th))
        thread_ok += good or r["correct"]
    print(path, f"acc {ok / n:.3f}  some thread has a verified answer (or final correct): {thread_ok / n:.3f}")
