"""Running Python in a subprocess where some top-level packages cannot be imported (as if not installed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Sequence


def run_python_without(blocked: Sequence[str], script: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``script`` with ``blocked`` packages refused by an import hook placed before every other finder;
    the script fails (and so does this call, ``check=True``) if anything imports one of them."""
    prelude = textwrap.dedent(f"""
        import importlib.abc, sys

        class _Blocked(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {sorted(set(blocked))!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked in this test)")
                return None

        sys.meta_path.insert(0, _Blocked())
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], check=True,
                          capture_output=True, text=True, **kwargs)
