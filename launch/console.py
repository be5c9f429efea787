"""What the launch scripts print: progress bars, result lines, warnings and one error style.

``--verbose`` (or absl's own ``--verbosity=0``) brings back INFO logging (orbax's checkpoint
messages, JAX's backend search, advjax's own INFO lines) and full tracebacks.

Errors: ``console.run(main)`` replaces ``absl.app.run``. A bad flag, a bad config override or an
error raised by the job ends the process with one paragraph on stderr naming the bad value (and
what to do), exit status 2 for the command line (flags, config overrides) and 1 for the job; with
``--verbose`` the traceback follows. The process exits at once, without waiting for background
threads (a failed checkpoint write must never leave a job hanging).
"""

from __future__ import annotations

import logging as py_logging
import os
import re
import sys
import textwrap
import traceback
from collections.abc import Callable

from absl import app, flags, logging

_VERBOSE = flags.DEFINE_boolean("verbose", False, "Show INFO logs and tracebacks.")

USAGE_ERROR = 2
JOB_ERROR = 1


def configure() -> None:
    """Call at the start of ``main``: WARNING and above only, unless asked for more."""
    if _VERBOSE.value:
        level = logging.INFO
    elif flags.FLAGS["verbosity"].present:
        return  # the user chose a verbosity with absl's flag
    else:
        level = logging.WARNING
    logging.set_verbosity(level)
    root = py_logging.getLogger()
    root.setLevel(py_logging.INFO if level == logging.INFO else py_logging.WARNING)
    if level != logging.INFO:
        for handler in {*root.handlers, logging.get_absl_handler()}:
            handler.addFilter(_without_orbax_logs)


def _without_orbax_logs(record: py_logging.LogRecord) -> bool:
    """Orbax logs its internal failures (a checkpoint that cannot be parsed, a failed write) at
    ERROR level; advjax reports each as a one-line ``CheckpointError`` or warning instead."""
    return "/orbax/" not in record.pathname.replace("\\", "/")


def describe(err: BaseException) -> str:
    """One paragraph for ``err``: its own message, not a dump of its causes.

    Errors raised inside a jitted computation (``advjax.validation``'s value checks) arrive as
    ``JaxRuntimeError`` with the original error on the last line; that line is what is shown.
    """
    text = str(err)
    if "Traceback (most recent call last)" in text or type(err).__name__ in _WRAPPERS:
        found = re.findall(r"^\s*(\w+(?:Error|Exception)): (.+)$", text, flags=re.M)
        if found:
            return f"{found[-1][0]}: {found[-1][1].strip()}"
    if isinstance(err, KeyError) and err.args:  # KeyError quotes its message
        text = str(err.args[0])
    text = " ".join(text.split())
    if len(text) > 800:
        text = text[:800] + " [...]"
    return f"{type(err).__name__}: {text}"


_WRAPPERS = ("JaxRuntimeError", "XlaRuntimeError")


def _config_typo(err: BaseException) -> str | None:
    """ml_collections reports an unknown field as KeyError("'name'\\nDid you mean ...?")."""
    while err is not None:
        if isinstance(err, KeyError) and err.args and "\n" in str(err.args[0]):
            name, _, suggestion = str(err.args[0]).partition("\n")
            return f"unknown config field {name}. {suggestion}"
        err = err.__cause__ or err.__context__
    return None


def _exit(message: str, status: int, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    text = f"error: {message}"
    print(textwrap.fill(text, 100, break_long_words=False, break_on_hyphens=False), file=sys.stderr)
    if not verbose:
        print("(run again with --verbose for the traceback)", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    py_logging.shutdown()
    os._exit(status)  # noqa: SLF001 - do not wait for library threads on the way out


def _verbose_requested(argv: list[str]) -> bool:
    return any(a in ("--verbose", "--verbose=true", "--verbose=True") for a in argv)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        message = str(err)
        if "Traceback (most recent call last)" in message:  # a config file that raised
            flag = message.split(": Error", 1)[0]
            message = f"{flag}: {describe(err)}"
        _exit(f"{message} (see --helpfull)", USAGE_ERROR, _verbose_requested(argv))
    except Exception as err:  # noqa: BLE001 - config overrides raise AttributeError/KeyError/...
        message = _config_typo(err) or describe(err)
        _exit(f"bad command line: {message}", USAGE_ERROR, _verbose_requested(argv))
    raise AssertionError("unreachable")


def run(main: Callable[[list[str]], None]) -> None:
    """``absl.app.run(main)`` with the error style of this module."""

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except (app.UsageError, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - every job error gets the one style
            _exit(describe(err), JOB_ERROR, _VERBOSE.value)

    app.run(guarded, flags_parser=_parse_flags)
