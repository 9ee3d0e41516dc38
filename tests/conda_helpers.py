"""Functions the conda tests run remotely, in a conda environment that has neither pytest nor
rattler (importable through the code mirror)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def conda_info() -> dict[str, object]:
    """What the job's environment holds."""
    import mrtestpkg  # type: ignore[import-not-found]

    prefix = Path(sys.prefix)
    return {
        "prefix": str(prefix),
        "mrtestpkg": mrtestpkg.__version__,
        "mrtestpkg_file": mrtestpkg.__file__,
        "data": (prefix / "share" / "mrhello" / "data.txt").read_text(),
        "conda_prefix": os.environ.get("CONDA_PREFIX"),
        "records": sorted(p.name for p in (prefix / "conda-meta").glob("*.json")),
    }
