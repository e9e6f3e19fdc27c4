"""Dockerfiles are checked here since no image is built in CI: sources, user, entrypoints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.support.paths import REPO

DOCKERFILES = ["Dockerfile.operator", "Dockerfile.runtime"]


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages(instructions):
    stages: list[list[tuple[str, str]]] = []
    for word, rest in instructions:
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest))
    return stages


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copy_source_exists(name):
    for word, rest in _instructions(REPO / name):
        if word != "COPY" or "--from=" in rest:
            continue
        parts = [p for p in rest.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"{name}: COPY source {source} does not exist"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_multi_stage_pinned_base_and_non_root_user(name):
    instructions = _instructions(REPO / name)
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    stages = _stages(instructions)
    assert len(stages) >= 2, "build the wheel in one stage, install it into a clean one"
    for stage in stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.match(r"^python:\d+\.\d+\.\d+-slim", image), (
            f"{name}: base {image} not a pinned slim python"
        )
    final = stages[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, f"{name}: the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"{name}: USER {users[-1]} must be numeric and non-root"
    assert not any(word == "HEALTHCHECK" for word, _ in final)
    # No compilers or package-manager installs in the image that ships.
    assert not any(word == "RUN" and re.search(r"apt-get|gcc|build-essential|pip install", rest)
                   for word, rest in final)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_entrypoint_is_an_installed_console_script(name):
    entry = [rest for word, rest in _instructions(REPO / name) if word == "ENTRYPOINT"][-1]
    script = json.loads(entry)[0]
    scripts = {ep.name: ep for ep in metadata.distribution("deeprec-serving").entry_points
               if ep.group == "console_scripts"}
    assert script in scripts, f"{name}: ENTRYPOINT {script} is not a console script of deeprec-serving"
    assert callable(scripts[script].load())


def _build_steps(name: str):
    """The first stage's RUN commands, each with its working directory and the sources COPY put
    there so far (source path in the repo, destination path in the image)."""
    workdir, copied, steps = "/", [], []
    for word, rest in _stages(_instructions(REPO / name))[0]:
        if word == "WORKDIR":
            workdir = os.path.join(workdir, rest)
        elif word == "COPY" and "--from=" not in rest:
            parts = [p for p in rest.split() if not p.startswith("--")]
            for source in parts[:-1]:
                dest = os.path.join(workdir, parts[-1])
                if parts[-1].endswith("/") and not source.endswith("/"):
                    dest = os.path.join(dest, os.path.basename(source))
                copied.append((source, dest))
        elif word == "RUN":
            steps.append((rest, workdir, list(copied)))
    return steps


def _materialize(root: Path, copied) -> None:
    for source, dest in copied:
        target = root / dest.lstrip("/")
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / source, target)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_python_m_in_the_build_is_not_shadowed_by_the_sources(name, tmp_path):
    """`python -m ...` puts its working directory first on sys.path, so a folder of the build
    context that is an importable package named like a standard-library module (an `operator/`
    with an `__init__.py`) replaces that module and the build stops. Each RUN that calls
    `python -m` is replayed in a copy of its working directory; `-S` keeps site-packages from
    importing the real module first, as a plain Debian or official-image Python does not."""
    runs = [step for step in _build_steps(name) if re.search(r"\bpython3?\s+(-\S+\s+)*-m\s", step[0])]
    assert runs, f"{name}: no `python -m` in the build stage; update this test"
    for index, (command, workdir, copied) in enumerate(runs):
        root = tmp_path / f"root{index}"
        _materialize(root, copied)
        cwd = root / workdir.lstrip("/")
        cwd.mkdir(parents=True, exist_ok=True)
        shadowing = sorted(
            entry.name for entry in cwd.iterdir()
            if entry.name.removesuffix(".py") in sys.stdlib_module_names
            and ((entry / "__init__.py").exists() or entry.suffix == ".py"))
        assert not shadowing, f"{name}: `{command[:50]}` runs in {workdir}: {shadowing} shadow the stdlib"
        target = str(tmp_path / f"venv{index}")
        venv = subprocess.run([sys.executable, "-S", "-m", "venv", "--without-pip", target], cwd=cwd,
                              capture_output=True, text=True, timeout=120)
        assert venv.returncode == 0, f"{name}: python -m venv in {workdir} fails:\n{venv.stderr[-2000:]}"
