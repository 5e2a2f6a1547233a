from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Node


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fuzz-cases", type=int, default=200,
                     help="cases of tests/e2e/test_fuzz.py (each runs standalone and via ferryd)")


@pytest.fixture(scope="session")
def fuzz_cases(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--fuzz-cases"))


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("ferry's tests create network namespaces: run them as root")


@pytest.fixture
def node() -> Iterator[Node]:
    """A fresh simulated node (node netns + uplink to an ext netns + temp dirs), removed
    after the test whatever its outcome."""
    with Node.create() as n:
        yield n
