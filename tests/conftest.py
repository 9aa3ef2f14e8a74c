"""Shared pytest configuration."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: pure-Python tests, no root or external binaries needed")
    # "integration" is registered in pyproject.toml.
