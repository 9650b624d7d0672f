"""Plain nn.Modules: no I/O, no torch.distributed; parallelism is applied from outside (trainer/parallelize.py)."""
