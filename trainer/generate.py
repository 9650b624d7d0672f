"""Sample text from a trained LLM: `astrobio-train generate -m BUNDLE_OR_RUN --prompt TEXT`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datajobs.errors import ConfigError
from trainer.bundle import load_bundle


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


def load_llm(path: Path, device: torch.device) -> tuple[nn.Module, Any]:
    """Model and tokenizer of an llm bundle or run folder (through the one loader, trainer.bundle)."""
    bundle = load_bundle(path, device)
    if bundle.component.name != "llm":
        raise ConfigError(f"{path} holds component {bundle.component.name!r}; generate needs an llm model")
    return bundle.model, bundle.component.tokenizer


def add_generate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="sample text from a trained llm bundle or run",
                              description="Load an llm bundle (a run's best/, or an export) and sample "
                              "continuations of each --prompt; a run still training uses its newest weights.")
    p.add_argument("-m", "--model", "--run", dest="model", required=True, type=Path,
                   help="bundle folder or run folder (<logging.run_dir>/<run_name>)")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_llm(args.model, device)
    for prompt in args.prompt:
        text = generate_text(model, tokenizer, prompt, args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, seed=args.seed)
        print(text)
        print("---")
    return 0
