"""Report training progress to the local Vigil agent (standard library only).

Usage::

    from vigil import Progress
    p = Progress()                      # reads VIGIL_PROGRESS_URL and VIGIL_JOB
    p.start(rank=0, world_size=8, card=0)
    p.step(120, "begin"); ...; p.step(120, "collective"); ...; p.step(120, "end", tokens=65536)
    p.checkpoint(100, "/ckpt/step-100")
    p.end()

Every call is best effort: it never raises and gives up after a short timeout,
so training never blocks or fails because of Vigil. Without
VIGIL_PROGRESS_URL every call does nothing.
"""

import json
import os
import urllib.request


class Progress:
    def __init__(self, url=None, job=None, rank=None, timeout=0.5):
        self.url = (url or os.environ.get("VIGIL_PROGRESS_URL", "")).rstrip("/")
        self.job = job or os.environ.get("VIGIL_JOB", "")
        self.rank = rank
        self.timeout = timeout

    def _post(self, record):
        if not self.url or not self.job:
            return False
        record.setdefault("job", self.job)
        record.setdefault("rank", self.rank)
        body = json.dumps(record).encode()
        req = urllib.request.Request(self.url + "/v1/progress", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status == 202
        except Exception:
            return False

    def start(self, rank, world_size, card=None, local_rank=None):
        self.rank = rank
        rec = {"type": "start", "rank": rank, "world_size": world_size, "pid": os.getpid()}
        if card is not None:
            rec["card"] = card
        if local_rank is not None:
            rec["local_rank"] = local_rank
        return self._post(rec)

    def step(self, step, phase="end", samples=None, tokens=None):
        rec = {"type": "step", "step": step, "phase": phase}
        if samples is not None:
            rec["samples"] = samples
        if tokens is not None:
            rec["tokens"] = tokens
        return self._post(rec)

    def checkpoint(self, step, path, nbytes=None, sha256=None):
        rec = {"type": "checkpoint", "step": step, "path": path}
        if nbytes is not None:
            rec["bytes"] = nbytes
        if sha256 is not None:
            rec["sha256"] = sha256
        return self._post(rec)

    def end(self, status="ok"):
        return self._post({"type": "end", "status": status})
