"""LVM drivers: classic copy-on-write snapshots (``lvm``) and thin snapshots (``lvm-thin``).

Volumes are written ``vg/lv`` and must be mounted; each snapshot is mounted read-only at a private
temporary place, exported with tar, unmounted and removed. See docs/lvm.md.
"""

from .classic import LvmDriver
from .thin import LvmThinDriver

__all__ = ["LvmDriver", "LvmThinDriver"]
