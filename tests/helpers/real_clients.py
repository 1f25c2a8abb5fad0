"""Tests that drive real clients (Chromium, llama.cpp) skip on a developer's machine that lacks them,
but fail in CI (``CI=true``): ``make test`` installs them there, so a skip would hide a broken set-up."""

import os

import pytest


def missing(reason: str, what: str) -> None:
    """Skip (developer machine) or fail (CI) because ``what`` cannot run: ``reason``."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason}; CI must run the {what} (make test-deps installs it)")
    pytest.skip(reason)
