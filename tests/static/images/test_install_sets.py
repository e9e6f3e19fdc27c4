"""What each image installs, resolved from pyproject.toml and the installed packages' metadata
(no container engine): the operator's set holds no TensorFlow, and each set provides every
third-party module its side imports."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.paths import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
#: Installed with --no-deps by Dockerfile.runtime (it declares the full `tensorflow` wheel).
SEPARATE = {"tensorflow_serving"}


def _image_extras(dockerfile: str) -> set[str]:
    """The extras of the project that the Dockerfile's `pip install ... .[extra]` names."""
    text = re.sub(r"\\\n", " ", (REPO / dockerfile).read_text())
    found = re.findall(r"""pip install [^&]*?["']?\.\[([\w,-]+)\]""", text)
    assert found, f"{dockerfile}: no `pip install .[extra]` of the project"
    return {extra for group in found for extra in group.split(",")}


def _closure(extras: set[str]) -> set[str]:
    """Every distribution `pip install .[extras]` installs (canonical names), the project's own
    requirements and theirs, markers evaluated for this interpreter."""
    wanted: list[tuple[Requirement, str]] = [(Requirement(r), "") for r in PROJECT["dependencies"]]
    for extra in sorted(extras):
        wanted += [(Requirement(r), extra) for r in PROJECT["optional-dependencies"][extra]]
    seen: set[str] = set()
    while wanted:
        req, extra = wanted.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name == "deeprec-serving":
            wanted += [(Requirement(r), e) for e in req.extras
                       for r in PROJECT["optional-dependencies"][e]]
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue  # not in this venv: its own requirements cannot be read, its name still counts
        for text in requires:
            sub = Requirement(text)
            for sub_extra in ("", *req.extras):
                wanted.append((sub, sub_extra))
    return seen


def _third_party_imports(*packages: str) -> set[str]:
    modules: set[str] = set()
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    ours = {"deeprec_api", "deeprec_runtime", "deeprec_operator"}
    return {m for m in modules if m not in sys.stdlib_module_names and m not in ours}


def _provided(closure: set[str]) -> set[str]:
    """Top-level import names the distributions in `closure` provide."""
    return {module for module, dists in metadata.packages_distributions().items()
            if any(canonicalize_name(d) in closure for d in dists)}


def test_the_images_install_their_own_extra():
    assert _image_extras("Dockerfile.operator") == {"operator"}
    assert _image_extras("Dockerfile.runtime") == {"runtime"}


@pytest.mark.parametrize(("dockerfile", "side", "other"), [
    ("Dockerfile.operator", "operator", "runtime"), ("Dockerfile.runtime", "runtime", "operator")])
def test_each_image_builds_from_its_own_sources_and_the_api(dockerfile, side, other):
    copied = {part.rstrip("/") for line in (REPO / dockerfile).read_text().splitlines()
              if line.startswith("COPY ") and "--from=" not in line for part in line.split()[1:-1]}
    assert {side, "proto"} <= copied
    assert other not in copied, f"{dockerfile} copies {other}/, which its image does not need"


def test_operator_image_installs_no_tensorflow():
    closure = _closure(_image_extras("Dockerfile.operator"))
    assert {"kopf", "kubernetes", "grpcio", "protobuf"} <= closure
    heavy = {name for name in closure if name.startswith("tensorflow") or name in {"numpy", "keras"}}
    assert not heavy, f"the operator image would install {sorted(heavy)}"


@pytest.mark.parametrize(("dockerfile", "packages"), [
    ("Dockerfile.operator", ("operator/deeprec_operator", "proto/deeprec_api")),
    ("Dockerfile.runtime", ("runtime/deeprec_runtime", "proto/deeprec_api")),
])
def test_each_image_provides_what_its_side_imports(dockerfile, packages):
    provided = _provided(_closure(_image_extras(dockerfile)))
    missing = _third_party_imports(*packages) - provided - SEPARATE
    assert not missing, f"{dockerfile}: {sorted(missing)} imported but not installed by its extra"
