"""Tests that drive real clients (Chromium, llama.cpp) skip on a developer's machine that lacks them,
but fail in CI (``CI=true``): ``make test`` installs them there, so a skip would hide a broken set-up."""

import os
import shutil
from pathlib import Path

import pytest


def missing(reason: str, what: str) -> None:
    """Skip (developer machine) or fail (CI) because ``what`` cannot run: ``reason``."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason}; CI must run the {what} (make test-deps installs it)")
    pytest.skip(reason)


def chromium(what: str):
    """``(playwright.sync_api, path of Debian's chromium)`` for a browser test, or :func:`missing`."""
    try:
        from playwright import sync_api
    except ImportError:
        missing("playwright is not installed", what)
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        missing("chromium is not installed", what)
    return sync_api, exe
