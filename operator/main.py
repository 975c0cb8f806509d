"""Entry point for ``kopf run``: registers the fsd operator's handlers (src/fsd/k8s).

    kopf run --standalone --all-namespaces operator/main.py

This is a script kopf imports by path, not a package (there is no Python package ``operator``:
that name belongs to the standard library). ``python -m fsd.k8s`` does the same without kopf's CLI.
"""

from __future__ import annotations

import kopf

from fsd.k8s.handlers import register

register(kopf.get_default_registry())
