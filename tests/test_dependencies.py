"""The tested set (constraints.txt) pins every dependency, inside the ranges pyproject.toml declares."""
from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (NAME==VERSION)"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def test_every_dependency_is_pinned_inside_its_range():
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but constraints.txt does not pin it"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}")


def test_known_break_is_capped():
    # bioimageio.spec 0.5.12 cannot write a package under pydantic 2.14 (docs/install.md)
    caps = [r for r in _requirements() if canonicalize_name(r.name) == "pydantic"]
    assert caps and all(not r.specifier.contains("2.14.0") for r in caps)


def test_installed_versions_are_the_tested_set():
    """Where the suite runs with the constraints (CI), what is installed is what was pinned."""
    import os
    from importlib.metadata import PackageNotFoundError, version

    import pytest

    if os.environ.get("CELLCLASS_EXPECT_PINNED") != "1":
        pytest.skip("installed without constraints.txt; .ci/run sets CELLCLASS_EXPECT_PINNED=1")
    pins = _pins()
    differ = []
    for req in _requirements():
        name = canonicalize_name(req.name)
        try:
            have = Version(version(req.name))
        except PackageNotFoundError:
            continue
        if have != pins[name]:
            differ.append(f"{req.name} {have} (pinned {pins[name]})")
    assert not differ, "installed versions differ from constraints.txt: " + ", ".join(differ)
