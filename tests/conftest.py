from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Node

E2E_DIR = Path(__file__).parent / "e2e"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fuzz-cases", type=int, default=200,
                     help="cases of tests/e2e/test_fuzz.py (each runs standalone and via ferryd)")


@pytest.fixture(scope="session")
def fuzz_cases(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--fuzz-cases"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is end to end (root, network namespaces, the installed
    binaries): marked `e2e`, and skipped with the reason when not root, so that the unit
    tests run anywhere (`python -m pytest tests/unit`)."""
    skip = pytest.mark.skip(reason="end-to-end test: needs root (network namespaces, bpffs)")
    for item in items:
        if E2E_DIR in item.path.parents:
            item.add_marker(pytest.mark.e2e)
            if os.geteuid() != 0:
                item.add_marker(skip)


@pytest.fixture
def node() -> Iterator[Node]:
    """A fresh simulated node (node netns + uplink to an ext netns + temp dirs), removed
    after the test whatever its outcome."""
    with Node.create() as n:
        yield n
