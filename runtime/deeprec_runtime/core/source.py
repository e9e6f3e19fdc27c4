"""The Source contract: which versions exist, newest first.

Example: model/source.py lists the sub-folders of checkpoint_dir on a store; each poll the manager
asks it for the whole list (not what changed), so a source keeps no state about loading.
"""

from __future__ import annotations

from typing import Protocol

from deeprec_runtime.core.versions import BadVersion, VersionInfo


class Source(Protocol):
    def scan(self) -> tuple[list[VersionInfo], list[BadVersion]]:
        """Every servable version, newest first, and the folders that cannot be served."""
