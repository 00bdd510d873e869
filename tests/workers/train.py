"""A small synchronous 'training' worker for the real-process tests.

Each rank computes acc += step * step for steps 1..STEPS. Ranks meet at a
file-system barrier each step (the step's collective), so one stopped or dead
rank blocks the others, as in real synchronous training. Every 10 steps each
rank writes a checkpoint; on start it resumes from VIGIL_RESUME_FROM. The
final result equals that of an uninterrupted run.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "integrations", "python"))
from vigil import Progress  # noqa: E402

rank = int(os.environ["RANK"])
world = int(os.environ["WORLD"])
out = os.environ["OUT_DIR"]
steps = int(os.environ.get("STEPS", "80"))
step_s = float(os.environ.get("STEP_S", "0.05"))
restart = os.environ.get("VIGIL_RESTART_COUNT", "0")
resume = os.environ.get("VIGIL_RESUME_FROM", "")

with open(os.path.join(out, f"pid-rank{rank}"), "w") as f:
    f.write(str(os.getpid()))

state = {"step": 0, "acc": 0}
if resume:
    with open(os.path.join(resume, f"rank{rank}.json")) as f:
        state = json.load(f)

p = Progress(rank=rank)
p.start(rank=rank, world_size=world, card=0)
barrier = os.path.join(out, "barrier", restart)
os.makedirs(barrier, exist_ok=True)

for s in range(state["step"] + 1, steps + 1):
    p.step(s, "begin")
    time.sleep(step_s)  # compute
    p.step(s, "collective")
    open(os.path.join(barrier, f"{s}-{rank}"), "w").close()
    while not all(os.path.exists(os.path.join(barrier, f"{s}-{r}")) for r in range(world)):
        time.sleep(0.005)
    state["acc"] += s * s
    state["step"] = s
    p.step(s, "end", samples=1)
    if s % 10 == 0:
        d = os.path.join(out, "ckpt", f"step-{s}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"rank{rank}.json.tmp"), "w") as f:
            json.dump(state, f)
        os.replace(os.path.join(d, f"rank{rank}.json.tmp"), os.path.join(d, f"rank{rank}.json"))
        p.checkpoint(s, d)

# Written aside and renamed, so a reader never sees a half-written result.
result = os.path.join(out, f"result-rank{rank}.json")
with open(result + ".tmp", "w") as f:
    json.dump({"acc": state["acc"], "restart": restart}, f)
os.replace(result + ".tmp", result)
p.end()
