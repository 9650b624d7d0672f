"""Container images, short of building them (no Docker daemon here): users, entrypoints, context, pins, torch-free."""

from __future__ import annotations

import fnmatch
import importlib.metadata as md
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.conftest import REPO
from tests.k8s.chart import objects, pod_specs, render

IMAGES = REPO / "images"
KINDS = {"trainer": "PyTorchJob", "datajobs": "CronJob"}
TORCH_STACK = re.compile(r"^(torch|triton|nvidia-.*|deepspeed|flash-attn|bitsandbytes|torch-geometric)$")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    start = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[start:]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics: the last matching pattern wins, `!` re-includes, a dir covers its files."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.replace("**/", "")) for p in prefixes):
            result = not negate
    return result


@pytest.mark.parametrize("image", sorted(KINDS))
def test_image_runs_as_the_charts_non_root_user(image: str) -> None:
    users = [args for op, args in final_stage(IMAGES / image / "Dockerfile") if op == "USER"]
    uid, gid = (int(x) for x in users[-1].split(":"))
    values = render()
    pod = pod_specs(objects(values, KINDS[image])[0])[0]
    assert uid > 0 and (uid, gid) == (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"])


@pytest.mark.parametrize("image", sorted(KINDS))
def test_entrypoint_is_the_charts_command(image: str) -> None:
    steps = dict(final_stage(IMAGES / image / "Dockerfile"))
    container = pod_specs(objects(render(), KINDS[image])[0])[0]["containers"][0]
    assert json.loads(steps["ENTRYPOINT"]) == container["command"]


@pytest.mark.parametrize("image", sorted(KINDS))
def test_build_context_sends_what_the_dockerfile_copies(image: str) -> None:
    patterns = [
        line.strip()
        for line in (IMAGES / image / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [
        args.split()[:-1]
        for op, args in instructions(IMAGES / image / "Dockerfile")
        if op == "COPY" and "--from" not in args
    ]
    sources = [src for srcs in copies for src in srcs]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), src
        assert not ignored(src.rstrip("/"), patterns), f"{src} is copied but ignored"
    for unwanted in (".venv/bin/python", ".tools/bin/helm", "tests/conftest.py", ".git/HEAD", "runs/x", "data/x"):
        assert ignored(unwanted, patterns), unwanted
    assert ignored("datajobs/__pycache__/x.pyc", patterns)


@pytest.mark.parametrize("image", sorted(KINDS))
def test_dependencies_are_pinned(image: str) -> None:
    pins = {}
    for line in (IMAGES / image / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins[requirement.name] = spec.version
    if image == "trainer":
        torch_spec = next(Requirement(r) for r in md.requires("astrobio-train") if r.startswith("torch"))
        assert pins["torch"] in SpecifierSet(str(torch_spec.specifier))
        assert f"torch=={pins['torch']}" in (REPO / "Makefile").read_text()
        assert {"flash-attn", "deepspeed", "bitsandbytes", "torch-geometric"} <= set(pins)
    else:
        assert not any(TORCH_STACK.match(name) for name in pins)


def closure(requirement: str) -> set[str]:
    """Names of every distribution REQUIREMENT pulls in, from the installed metadata (markers evaluated)."""
    seen: set[str] = set()
    todo = [(Requirement(requirement), set(Requirement(requirement).extras))]
    while todo:
        req, extras = todo.pop()
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in seen and not extras:
            continue
        seen.add(name)
        for line in md.requires(req.name) or []:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append((dep, set(dep.extras)))
    return seen


def test_datajobs_image_dependencies_resolve_without_torch() -> None:
    (install,) = [
        args for op, args in instructions(IMAGES / "datajobs" / "Dockerfile") if op == "RUN" and '"/src[' in args
    ]
    extras = re.search(r'"/src\[([^\]]*)\]"', install).group(1)
    names = closure(f"astrobio-train[{extras}]")
    assert {"pyarrow", "s3fs", "pydantic", "prometheus-client"} <= names
    assert not {n for n in names if TORCH_STACK.match(n)}, "the datajobs image would install torch"
    assert "torch" in closure("astrobio-train[train]"), "the closure walk finds torch where it is"


def test_datajobs_package_imports_without_torch(tmp_path: Path) -> None:
    """Every datajobs module imports, and the CLI runs, with torch made unimportable."""
    code = (
        "import pkgutil, sys, importlib; sys.modules['torch'] = None; import datajobs;"
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(datajobs.__path__, 'datajobs.')];"
        "from datajobs.cli import main; sys.exit(main(['list', '--root', sys.argv[1]]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
