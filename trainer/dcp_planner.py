"""DCP's load planner with the non-tensor entries of a checkpoint (e.g. optimizer hyper-parameters) read by
`torch.load(weights_only=True)`: nothing from storage is unpickled. Imported only where a checkpoint is loaded,
so that starting a run does not pay for importing torch.distributed.checkpoint."""

from __future__ import annotations

import torch
from torch.distributed.checkpoint._nested_dict import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner


class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's planner, but the non-tensor entries load with weights_only=True."""

    def load_bytes(self, read_item, value) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj
