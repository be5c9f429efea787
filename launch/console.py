"""What the launch scripts print: progress bars, result lines and warnings, not library INFO logs.

``--verbose`` (or absl's own ``--verbosity=0``) brings back INFO logging (orbax's checkpoint
messages, JAX's backend search, advjax's own INFO lines).
"""

from __future__ import annotations

import logging as py_logging

from absl import flags, logging

_VERBOSE = flags.DEFINE_boolean("verbose", False, "Show INFO logs (orbax, JAX, advjax).")


def configure() -> None:
    """Call at the start of ``main``: WARNING and above only, unless asked for more."""
    if _VERBOSE.value:
        level = logging.INFO
    elif flags.FLAGS["verbosity"].present:
        return  # the user chose a verbosity with absl's flag
    else:
        level = logging.WARNING
    logging.set_verbosity(level)
    py_logging.getLogger().setLevel(
        py_logging.INFO if level == logging.INFO else py_logging.WARNING
    )
