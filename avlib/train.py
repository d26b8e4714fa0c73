"""`python -m avlib.train -f params/<run>.yaml`: notebooks/03_train.ipynb as a script, alone or
under torchrun (one process per GPU, or gloo on the CPU):

    torchrun --nproc_per_node N -m avlib.train -f params/<run>.yaml

It takes from the file every parameter 03_train declares (avlib.stages.parameters), with the
same defaults and checks as the notebook, so both train the same model from the same file.
Run 01 and 02 first; rank 0 writes the files.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from avlib.core.params import load_params
from avlib.stages.parameters import stage_values
from avlib.stages.train import train_stage


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", "--params", required=True, help="a params/*.yaml file")
    args = parser.parse_args(argv)
    params = stage_values("03_train", load_params(args.params))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        use_nccl = torch.cuda.is_available() and params["device"] != "cpu"
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    try:
        train_stage(**params, progress=rank == 0, log=print if rank == 0 else (lambda *a: None))
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
