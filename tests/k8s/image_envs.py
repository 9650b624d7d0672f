"""Build an image's Python environment as its Dockerfile does (same COPYs, extras, constraints) in a cached venv."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, require_tool
from tests.k8s.test_images import IMAGES, final_stage

CACHE = REPO / ".pytest_cache" / "image-envs"
# built only in the CUDA image (nvcc, --no-build-isolation): not installable on a CPU machine
CUDA_ONLY = {"flash-attn": "flash_attn"}


def _uv() -> str:
    local = Path(sys.executable).parent / "uv"
    return str(local) if local.exists() else require_tool("uv")


def _copies(image: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of the final stage's COPY instructions from the build context."""
    out = []
    for op, args in final_stage(IMAGES / image / "Dockerfile"):
        if op == "COPY" and "--from" not in args:
            *sources, dest = args.split()
            out.append((sources, dest))
    return out


def _install_commands(image: str) -> list[str]:
    """Every shell command of the final stage's RUN instructions that installs or checks Python packages."""
    commands = []
    for op, args in final_stage(IMAGES / image / "Dockerfile"):
        if op == "RUN":
            commands += [c.strip() for c in args.split("&&") if re.match(r"\s*(uv pip install|python -c)", c)]
    return commands


def _files(sources: list[str]) -> list[Path]:
    files = []
    for src in sources:
        path = REPO / src
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        else:
            files.append(path)
    return files


def cache_key(image: str) -> str:
    """Hash of the Dockerfile and of every file it copies (constraints, pyproject, the packages)."""
    digest = hashlib.sha256((IMAGES / image / "Dockerfile").read_bytes())
    for sources, _ in _copies(image):
        for path in _files(sources):
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def clean_env(venv: Path) -> dict[str, str]:
    """The environment of a process inside the image: its venv first on PATH, nothing of this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    if "PIP_FIND_LINKS" in env:  # uv ignores the local wheel folder unless told (the CPU torch wheel lives there)
        env.setdefault("UV_FIND_LINKS", env["PIP_FIND_LINKS"])
    env.pop("UV_NO_CACHE", None)
    return env


def build(image: str) -> Path:
    """The image's venv under .pytest_cache/image-envs/IMAGE-KEY, built once per key (a marker file is last)."""
    venv = CACHE / f"{image}-{cache_key(image)}"
    if (venv / ".built").exists():
        return venv
    for old in CACHE.glob(f"{image}-*"):  # other keys and a half-built one
        shutil.rmtree(old)
    context = CACHE / f"{image}-{cache_key(image)}-context"
    for sources, dest in _copies(image):
        for source in sources:
            target = context / dest.lstrip("/")
            if dest.endswith("/"):
                target = target / Path(source).name
            target.parent.mkdir(parents=True, exist_ok=True)
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(REPO / source, target)
    env = clean_env(venv)
    uv = _uv()
    subprocess.run([uv, "venv", "-q", str(venv), "--python", sys.executable], check=True, env=env, timeout=300)
    for command in _install_commands(image):
        argv = shlex.split(command)
        if argv[0] == "python":
            for module in CUDA_ONLY.values():
                argv[-1] = argv[-1].replace(f"{module}, ", "")
            python = str(venv / "bin" / "python")
            proc = subprocess.run([python, *argv[1:]], env=env, cwd=venv, capture_output=True, text=True, timeout=300)
        else:
            if any(a in CUDA_ONLY for a in argv):
                continue
            argv = [uv, *argv[1:], "--python", str(venv / "bin" / "python")]
            if "--index-url" in argv:  # the CUDA index: here the CPU wheel of the same pinned version
                i = argv.index("--index-url")
                del argv[i : i + 2]
            argv = [re.sub(r"^/(src|tmp)", lambda m: str(context / m.group(1)), a) for a in argv]
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise AssertionError(f"{image}: `{command}` failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(context)
    (venv / ".built").write_text(cache_key(image))
    return venv
