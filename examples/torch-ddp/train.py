"""A small PyTorch DDP training job instrumented for Vigil.

Run under torchrun (CPU, gloo backend), directly or supervised by a
vigil-agent::

    torchrun --standalone --nproc-per-node 2 examples/torch-ddp/train.py --steps 200

What it shows:

* progress through the standard-library helper ``integrations/python/vigil.py``:
  ``start``, ``step`` begin/end, the ``collective`` phase from a DDP
  communication hook, ``checkpoint`` and ``end``;
* atomic checkpoints: rank 0 writes ``state.pt`` and a ``SHA256SUMS``
  manifest into a temporary directory, fsyncs them and renames the directory
  to ``step-N``; a half-written checkpoint is never visible under its final
  name. Every rank reports the checkpoint after a barrier, so Vigil counts it
  complete once all ranks have;
* resuming from ``VIGIL_RESUME_FROM`` (set by the agent when a recovery
  restarts the job), after checking the manifest.

The data are synthetic and a function of the step number, so a resumed run
ends with the same weights as an uninterrupted one.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "integrations", "python"))
from vigil import Progress  # noqa: E402

STATE = "state.pt"
MANIFEST = "SHA256SUMS"


def parse_args():
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--steps", type=int, default=int(os.environ.get("STEPS", "200")))
    a.add_argument("--checkpoint-dir", default=os.environ.get("CHECKPOINT_DIR", "checkpoints"))
    a.add_argument("--checkpoint-every", type=int, default=int(os.environ.get("CHECKPOINT_EVERY", "20")))
    a.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    a.add_argument("--step-s", type=float, default=float(os.environ.get("STEP_S", "0.05")),
                   help="extra sleep per step, to make a run long enough to watch")
    a.add_argument("--result", default=os.environ.get("RESULT_FILE", ""),
                   help="rank 0 writes the final step and weights here as JSON")
    return a.parse_args()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(root, step, model, opt):
    """Rank 0 only. Returns the final directory and the state file's size."""
    final = os.path.join(root, "step-%d" % step)
    tmp = os.path.join(root, ".step-%d.tmp-%d" % (step, os.getpid()))
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    state_path = os.path.join(tmp, STATE)
    with open(state_path, "wb") as f:
        torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict()}, f)
        f.flush()
        os.fsync(f.fileno())
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        f.write("%s  %s\n" % (sha256_file(state_path), STATE))
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    if os.path.exists(final):  # a step saved before a crash and redone
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)
    return final, os.path.getsize(os.path.join(final, STATE))


def load_checkpoint(path, model, opt):
    """Checks the manifest, then loads. Returns the checkpoint's step."""
    with open(os.path.join(path, MANIFEST)) as f:
        for line in f:
            if not line.strip():
                continue
            want, name = line.split(None, 1)
            got = sha256_file(os.path.join(path, name.strip()))
            if got != want:
                raise RuntimeError("checkpoint %s: %s does not match its SHA256SUMS" % (path, name.strip()))
    with open(os.path.join(path, STATE), "rb") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])


def batch_for(step, rank, size, dim):
    """Synthetic regression data, a function of (step, rank) only."""
    g = torch.Generator().manual_seed(step * 1000 + rank)
    x = torch.randn(size, dim, generator=g)
    w = torch.arange(1, dim + 1, dtype=torch.float32) / dim
    y = x @ w + 0.01 * torch.randn(size, generator=g)
    return x, y.unsqueeze(1)


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.manual_seed(0)

    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)

    progress = Progress(rank=rank)
    progress.start(rank=rank, world_size=world, local_rank=local_rank)
    # The collective phase comes from the DDP communication hook: reported
    # when the step's first gradient bucket is ready, before its all-reduce.
    progress.register_collective_hook(ddp)

    step = 0
    resume = os.environ.get("VIGIL_RESUME_FROM", "")
    if resume:
        step = load_checkpoint(resume, model, opt)
        if rank == 0:
            print("resumed from %s at step %d" % (resume, step), flush=True)
    restarts = os.environ.get("VIGIL_RESTART_COUNT", os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    os.makedirs(args.checkpoint_dir, exist_ok=True)

    loss_fn = nn.MSELoss()
    while step < args.steps:
        step += 1
        progress.step(step, "begin")
        x, y = batch_for(step, rank, args.batch, 16)
        opt.zero_grad()
        loss = loss_fn(ddp(x), y)
        loss.backward()  # the comm hook reports "collective" here
        opt.step()
        if args.step_s > 0:
            time.sleep(args.step_s)
        progress.step(step, "end", samples=args.batch)
        if rank == 0 and (step % 10 == 0 or step == 1):
            print("step %d loss %.6f restarts %s" % (step, loss.item(), restarts), flush=True)

        if step % args.checkpoint_every == 0 or step == args.steps:
            path, nbytes = None, None
            if rank == 0:
                path, nbytes = save_checkpoint(args.checkpoint_dir, step, model, opt)
                print("saved checkpoint %s" % path, flush=True)
            # Everyone learns the path, and nobody reports before rank 0 has
            # renamed the directory into place.
            box = [path]
            dist.broadcast_object_list(box, src=0)
            progress.checkpoint(step, os.path.abspath(box[0]), nbytes=nbytes)

    if rank == 0 and args.result:
        weights = [p.detach().flatten().tolist() for p in model.parameters()]
        with open(args.result, "w") as f:
            json.dump({"step": step, "weights": weights}, f)
    progress.end()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
