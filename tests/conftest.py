"""Shared pytest configuration."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: pure-Python tests, no root or external binaries needed")
    config.addinivalue_line("markers", "integration: tests that run external binaries or need root")
