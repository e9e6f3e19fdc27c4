"""Dockerfiles are checked here since no image is built in CI: sources, user, entrypoints."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
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
