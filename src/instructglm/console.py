"""What a run shows on the terminal: our log lines and progress bars, not the libraries' chatter.

:func:`setup` is called once, by :func:`instructglm.cli.main`. Unless ``--verbose`` is given, the
libraries InstructGLM drives log errors only and keep their progress bars to themselves (a
"Loading weights" bar on every model load), and deprecation warnings we cannot act on are
filtered. Our own ``tqdm`` bars (tokenize, train, generate) and log lines are untouched.

The libraries read their settings from the environment when first imported, which for the CLI is
after this runs; those already imported (a caller that imported them before ``main``) are told
directly. The environment also reaches the processes ``train --nproc`` starts.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Environment settings the libraries read at import; a value the user set is kept.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # also transformers' own bars ("Loading weights")
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}
# Libraries that log through the standard logging module: warnings and errors only, or errors only.
WARNING_LOGGERS = ("httpx", "urllib3", "filelock", "accelerate", "peft")
ERROR_LOGGERS = ("transformers", "datasets", "huggingface_hub")
# DeepSpeed's logger writes to stdout and resets its level when imported, so its records are filtered
# instead: "Setting accelerator to CPU" on every CPU run is not for our users.
FILTERED_LOGGERS = ("DeepSpeed",)
# Deprecations raised inside the libraries by their own calls; nothing a user can change.
KNOWN_WARNINGS = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _not_the_cpu_notice(record: logging.LogRecord) -> bool:
    return "Setting accelerator to CPU" not in record.getMessage()


def drop_deepspeed_cpu_notice() -> None:
    """Drop DeepSpeed's "Setting accelerator to CPU" line, also when ``train()`` is called from Python
    without :func:`setup`: accelerate imports DeepSpeed whenever it is installed (e.g. to unwrap a
    model), and on a CPU-only machine that import prints this line from DeepSpeed's own logger,
    which has its own handler and resets its level (a filter survives that)."""
    logger = logging.getLogger("DeepSpeed")
    if _not_the_cpu_notice not in logger.filters:
        logger.addFilter(_not_the_cpu_notice)


def setup(quiet: bool = False, verbose: bool = False) -> None:
    """Our log format and level; the libraries quiet unless ``verbose``."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in WARNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ERROR_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in FILTERED_LOGGERS:
        logger = logging.getLogger(name)
        if _errors_only not in logger.filters:
            logger.addFilter(_errors_only)
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    _quiet_imported()


def _quiet_imported() -> None:
    """Tell libraries imported before :func:`setup` what the environment would have told them."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
