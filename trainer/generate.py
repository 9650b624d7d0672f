"""Sample text from a trained LLM run: `astrobio-train generate --run RUN_DIR --prompt TEXT`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def generate(model: nn.Module, ids: list[int], max_new_tokens: int, *, temperature: float = 0.8,
             top_k: int | None = 50, eos_id: int | None = None, seed: int | None = None,
             max_len: int | None = None) -> list[int]:
    """Autoregressive sampling (temperature 0 = greedy), cropping the context to max_len tokens."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    out = list(ids)
    for _ in range(max_new_tokens):
        context = torch.tensor([out[-max_len:] if max_len else out], device=device)
        logits = model(context)[0, -1].float()
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        out.append(nxt)
        if eos_id is not None and nxt == eos_id:
            break
    return out


def generate_text(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int, **kw: Any) -> str:
    """Prompt plus sampled continuation, decoded; stops at the tokenizer's end-of-text token."""
    from datajobs.tokens import EOS

    was_training = model.training
    model.eval()
    max_len = _max_len(model)
    ids = generate(model, tokenizer.encode(prompt).ids, max_new_tokens, eos_id=tokenizer.token_to_id(EOS),
                   max_len=max_len, **kw)
    model.train(was_training)
    return tokenizer.decode(ids)


def _max_len(model: nn.Module) -> int | None:
    for module in model.modules():
        args = getattr(module, "args", None)
        if args is not None and hasattr(args, "max_seq_len"):
            return args.max_seq_len
    return None


def load_run(run_dir: Path, device: torch.device) -> tuple[nn.Module, Any]:
    """The run's model (best/ weights, else the newest checkpoint) and tokenizer, pinned to its dataset version."""
    from datajobs.errors import ConfigError
    from datajobs.store import Store
    from trainer import components
    from trainer.checkpoint import load_weights
    from trainer.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    if cfg.component != "llm":
        raise ConfigError(f"{run_dir} trained component {cfg.component!r}; generate needs an llm run")
    states = sorted((run_dir / "checkpoints").glob("step-*/trainer_state.json"))
    lineage = json.loads(states[-1].read_text()).get("lineage", {}) if states else {}
    pinned = lineage.get(cfg.data.dataset)
    if pinned:
        cfg.data.dataset = pinned  # the version the run trained on, not today's latest
    component = components.get("llm")(cfg)
    data = component.build_data(Store(cfg.data.root))
    model = component.build_model(data)
    best = run_dir / "best" / "model.safetensors"
    if best.is_file():
        load_weights(model, best)
    elif states:
        _load_checkpoint_model(model, states[-1].parent)
    else:
        raise ConfigError(f"{run_dir} has neither best/model.safetensors nor a checkpoint")
    return model.to(device).eval(), component.tokenizer


def _load_checkpoint_model(model: nn.Module, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from trainer.checkpoint import WeightsOnlyLoadPlanner

    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=str(path), planner=WeightsOnlyLoadPlanner(), no_dist=True)
    set_model_state_dict(model, state["model"])


def add_generate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="sample text from a trained llm run",
                              description="Load <run>/best/model.safetensors (or the newest checkpoint) and "
                              "sample continuations of each --prompt.")
    p.add_argument("--run", required=True, type=Path, help="run folder (<logging.run_dir>/<run_name>)")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_run(args.run, device)
    for prompt in args.prompt:
        text = generate_text(model, tokenizer, prompt, args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, seed=args.seed)
        print(text)
        print("---")
    return 0
