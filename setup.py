"""Build hook for heatcache's compiled hot paths.

Everything is declared in pyproject.toml; this file only lists the C extensions. Each stage may
keep one next to its pure-Python reference: ``<package>/_<name>.c`` becomes ``<package>._<name>``.
The Python code stays the reference the compiled path is tested against.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
PACKAGES = ("heatcache", "sniffer", "streams", "fetcher", "dns_redirect", "replay")

extensions = [
    Extension(f"{pkg}.{src.stem}", [str(src.relative_to(ROOT))], extra_compile_args=["-O2", "-std=c11"])
    for pkg in PACKAGES
    for src in sorted((ROOT / pkg).glob("_*.c"))
]

setup(ext_modules=extensions)
