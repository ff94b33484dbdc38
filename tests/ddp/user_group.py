"""A user's DDP script (run by tests/test_distributed_extract.py under torchrun): it sets the process group up
itself and calls reprscope on rank 0 alone, as a training script's periodic check would. That call must not wait
for the other ranks."""
import sys

import torch.distributed as dist

import reprscope

dist.init_process_group("gloo")
if dist.get_rank() == 0:
    table = reprscope.analyze(sys.argv[1], analyzers=["spectrum", "vicreg"], progress=False)
    assert len(table) > 0
dist.barrier()
dist.destroy_process_group()
