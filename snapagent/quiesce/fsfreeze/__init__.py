"""fsfreeze: the quiescer (``quiescer``) and the watchdog process that freezes and always thaws
(``watchdog``, run as ``python -m snapagent.quiesce.fsfreeze.watchdog``)."""

from snapagent.quiesce.fsfreeze.quiescer import FsfreezeConfig, FsfreezeQuiescer

__all__ = ["FsfreezeConfig", "FsfreezeQuiescer"]
