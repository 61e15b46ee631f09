"""Errors the CLI reports as one message (exit 2) instead of a traceback.

A request error (bad spec, input, output, query, weights) is a ``pipeline.errors.UserError`` or
an ``OSError``. The registry's errors come from ``blocks``, which does not depend on
``pipeline``; they are checked by type too, from ``sys.modules`` so that checking an error never
imports ``blocks`` (and torch) for a command that did not load it: an error of a module that was
never imported cannot have been raised.
"""

from __future__ import annotations

import sys

from pipeline.errors import UserError

# (module, class) of request errors defined outside ``UserError``'s tree: ``blocks`` does not
# depend on ``pipeline``.
_OTHER_USER_ERRORS = (
    ("blocks.registry", "UnknownBlockError"),
    ("blocks.registry", "UnsafeCheckpointError"),
    ("blocks.registry", "WeightsMismatchError"),
)


def is_user_error(err: BaseException) -> bool:
    """True for errors caused by the request (bad spec, input, output, query), not by a bug."""
    if isinstance(err, (UserError, OSError)):
        return True
    return any(
        isinstance(err, getattr(sys.modules[module], name))
        for module, name in _OTHER_USER_ERRORS
        if module in sys.modules
    )
