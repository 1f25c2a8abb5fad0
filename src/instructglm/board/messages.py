"""Errors as the page shows them, in English and Chinese.

Two kinds reach the page:

* the board's own (a bad run name, a run that is not finished, ...): a :class:`BoardError` carries an
  i18n key and its parameters, so the page writes the whole message in the chosen language
  (``err.KEY`` in :mod:`instructglm.board.i18n`, a template with ``{name}`` fields);
* the CLI's (``instructglm VERB: error: ...`` from a child process): its one line names the file,
  line or flag, so it is shown verbatim, headed by a translated explanation of its *kind* (file not
  found, bad JSON line, unknown key, out of memory, ...), found here by matching the line against the
  message shapes the CLI raises (``why.KIND`` in i18n).
"""

from __future__ import annotations

import re
from typing import Any

from instructglm.board.i18n import TEXTS
from instructglm.errors import UserError

# (kind, pattern) in order: the first match wins, so the specific shapes come before the general ones
# (a damaged checkpoint says "file not found" too, a bad JSON line names a file that exists, an unknown
# key's "did you mean" list may name gradient_checkpointing).
KINDS: list[tuple[str, re.Pattern]] = [(kind, re.compile(pattern, re.I)) for kind, pattern in [
    ("out_of_memory", r"out of (GPU )?memory|CUDA out of memory"),
    ("unknown_key", r"unknown (config )?(key|field|option|template key)|unrecognized arguments"),
    ("missing_value", r"a value is required|missing required|the following arguments are required"),
    ("bad_value", r"config key '|\(override |invalid (\w+ )?(value|choice)|^--[\w-]+ .*: expected|^--[\w-]+: must"),
    ("checkpoint", r"checkpoint|do(es)? not fit|optimizer state|trained with the tokenizer|tokenized with a "
                   r"different tokenizer|left by an interrupted run|holds the finished result of another run"),
    ("bad_json", r"invalid JSON|not valid JSON|invalid YAML|unreadable row"),
    ("not_utf8", r"not (valid )?UTF-8"),
    ("bad_record", r"cannot detect the dataset format|no records|no rows left|no pairs left|dataset is empty|"
                   r"not preference data|not a canonical|preference pairs; SFT|SFT rows; --stage|no text to train"),
    ("not_regular", r"not a regular file"),
    ("is_directory", r"is a directory"),
    ("not_a_run", r"not a finished training run|no adapter_config\.json|not a model directory|not a tokenized "
                  r"dataset|run directory not found"),
    ("not_found", r"not found|no such file|does not exist|No such file or directory"),
    ("bad_value", r"expected (int|float|bool|str|a whole number|true or false|key=value)|is not one of|must be|"
                  r"expected an? "),
    ("output", r"cannot write output|cannot create output|exists and is not|not writable|is writing to this "
               r"directory|exists \(|already holds"),
    ("model", r"cannot load|not supported|not a ChatGLM|cannot be exported|tokenizer"),
]]
CLI_ERROR = re.compile(r"^instructglm( [\w-]+)?: error: ")  # the CLI's own line (argparse's has no verb)


class BoardError(UserError):
    """A mistake the board itself reports: ``err.KEY``'s English text filled with ``params`` (str()),
    and the key and params for the page to write it in Chinese."""

    def __init__(self, key: str, **params: Any):
        self.key, self.params = key, {k: str(v) for k, v in params.items()}
        super().__init__(render(key, self.params, "en"))


def render(key: str, params: dict, lang: str) -> str:
    """``err.KEY`` in ``lang`` filled with ``params``; the ``what`` param names a ``what.*`` key."""
    texts = TEXTS[lang]
    shown = {k: texts.get("what." + v, v) if k == "what" else v for k, v in params.items()}
    return texts["err." + key].format(**shown)


def kind_of(line: str) -> str:
    """The kind of mistake a CLI error line reports (``other`` when no shape matches)."""
    text = CLI_ERROR.sub("", line)
    return next((kind for kind, pattern in KINDS if pattern.search(text)), "other")


def payload(error: Exception) -> dict:
    """The JSON the page gets for an error: the English line, and either the board's key and params or
    the kind of a CLI error."""
    if isinstance(error, BoardError):
        return {"error": str(error), "key": error.key, "params": error.params}
    return {"error": str(error), "kind": kind_of(str(error))}


def cli_error_line(output: str) -> str | None:
    """The last ``instructglm VERB: error: ...`` line of a command's output (what the CLI printed for a
    user's mistake), or None when it ended some other way (a crash, a signal)."""
    lines = output.replace("\r", "\n").splitlines()
    own = [line for line in lines if CLI_ERROR.match(line)]
    other = [line for line in lines if ": error: " in line]  # e.g. a wrapper's or a library's line
    return (own or other)[-1].strip() if own or other else None


def explained(key_or_kind: str, lang: str) -> str:
    """The explanation text of a board key or a CLI error kind (for tests and the terminal)."""
    texts = TEXTS[lang]
    return texts.get("err." + key_or_kind) or texts["why." + key_or_kind]
