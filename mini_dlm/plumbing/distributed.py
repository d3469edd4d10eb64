"""
Data-parallel training with torch DistributedDataParallel (DDP), as launched by torchrun:

    torchrun --nproc_per_node 8 train_tiny.py ...

torchrun starts one process per GPU (or per CPU slot with --device cpu) and tells each its
place through the environment: RANK (0 .. WORLD_SIZE - 1) and LOCAL_RANK (its GPU on this
node). Every process holds the whole model and trains on its rows of each global batch; DDP
averages the gradients over the processes during backward, so all of them take the step one
process would take on the whole batch. Without torchrun this is a world of one process: no
process group, nothing changes.
"""

import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    device: torch.device  # this process's device (cuda:LOCAL_RANK under torchrun on GPUs)
    rank: int = 0
    size: int = 1
    ddp: bool = False  # launched by torchrun: a process group exists

    @property
    def master(self):
        """Rank 0 alone prints and writes checkpoints."""
        return self.rank == 0

    def wrap(self, model):
        """The model that trains: under DDP a wrapper that all-reduces the gradients in backward."""
        if not self.ddp:
            return model
        wrapped = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        wrapped.config = model.config  # loss_fn reads the model's config through the wrapper
        return wrapped

    def mean(self, x):
        """x averaged over the ranks (a tensor; every rank must call this at the same point)."""
        if not self.ddp:
            return x
        x = x.detach().clone()
        dist.all_reduce(x)  # a sum: gloo has no average
        return x / self.size

    def close(self):
        if self.ddp and dist.is_initialized():
            dist.destroy_process_group()


def setup(device):
    """device (cli.resolve_device's) -> World. Under torchrun: join the process group (nccl on
    GPUs, one GPU per process; gloo on the CPU), keep stdout for rank 0 alone, and let a Ctrl-C
    in only once (see _interrupted)."""
    if "RANK" not in os.environ:
        return World(device)
    rank, local_rank, size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                             f"use --nproc_per_node {torch.cuda.device_count()} or less")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if rank:
        sys.stdout = open(os.devnull, "w")  # progress is rank 0's to print; errors still reach stderr
    signal.signal(signal.SIGINT, _interrupted)
    return World(device, rank, size, ddp=True)


def _interrupted(signum, frame):
    """Ctrl-C under torchrun: torchrun passes the terminal's SIGINT on to its workers, so each
    gets it twice; ignore the second, or it would break off rank 0's checkpoint save."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt
