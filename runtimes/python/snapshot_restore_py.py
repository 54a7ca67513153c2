"""Runtime hooks for snapshots, with the interface of AWS Lambda SnapStart's ``snapshot_restore_py``.

Code written for SnapStart runs unchanged: ``register_before_snapshot`` and ``register_after_restore``
work as plain calls (``register_before_snapshot(fn, *args, **kwargs)``) and as decorators. The
platform runs the before-snapshot callables in the reverse order of their registration once the
function's initialisation has finished in its template, and the after-restore callables in the order
of their registration in each instance forked from it, before its first invocation. Without a
snapshot (the ``snapshot`` setting ``off``, or a version whose snapshot was refused) neither runs, as
on Lambda without SnapStart.

This file sits in the runtime's directory, after the function's own code and layers on ``sys.path``:
a function that vendors the published package gets its copy, and the platform reads the hooks from
whichever module was imported. Standard library only.
"""

_before_snapshot = []
_after_restore = []


def register_before_snapshot(func, *args, **kwargs):
    """Run ``func(*args, **kwargs)`` before the snapshot is taken; returns ``func`` (a decorator too)."""
    _before_snapshot.append((func, args, kwargs))
    return func


def register_after_restore(func, *args, **kwargs):
    """Run ``func(*args, **kwargs)`` in each instance restored from the snapshot; returns ``func``."""
    _after_restore.append((func, args, kwargs))
    return func


def get_before_snapshot():
    """The registered before-snapshot callables, as ``(func, args, kwargs)``, in registration order."""
    return _before_snapshot


def get_after_restore():
    """The registered after-restore callables, as ``(func, args, kwargs)``, in registration order."""
    return _after_restore
