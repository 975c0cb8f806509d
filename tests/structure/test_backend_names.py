"""No backend named in generic code (issue 19): a transport or a platform is its own module plus
one registry line, so the code between them never spells one out.

The scan reads every module of ``src/fsd`` (its AST: string constants but docstrings, names,
attributes, definitions, arguments, keywords, imports) for a backend's name (:data:`NAMES`).
Allowed are the backends' own modules (:func:`backend_modules`: what a registry names, its
``<module>_*`` helpers, and the few listed in :data:`BACKEND_MODULES` with their reason), the
registry tables themselves (an assignment to one of :data:`REGISTRY_TABLES`), what is generic
in context (:data:`GENERIC`, each with its reason). An allowed entry that no longer occurs is a
failure too, so the list only shrinks. ``PYTHONPATH=tests python
tests/structure/test_backend_names.py`` prints the current hits, by module.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from paths import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "fsd"

#: A backend's name as it shows in code: the transports (and the servers and SDKs that are
#: theirs) and the platforms, OpenFaaS's gateway included (not Prometheus' Pushgateway).
NAMES = re.compile(
    r"(?i)(nats|openfaas|lambda_?launcher|\blambda\b|lambda_|sqs|sns|knative|seaweed|moto|minio"
    r"|(^|_|\b)s3(_|\b|$)|boto|(?<!push)gateway)"
)

#: Module-level names whose assigned table is a registry: one line per backend.
REGISTRY_TABLES = frozenset({"PLATFORMS", "STORES", "TRANSPORTS"})

#: Registries: module -> its table(s), each ``name -> "module[:object]"``.
REGISTRIES = (
    ("fsd.channels", "TRANSPORTS"),
    ("fsd.launch", "PLATFORMS"),
    ("fsd.k8s.platforms", "PLATFORMS"),
    ("fsd.invoke", "PLATFORMS"),
    ("fsd.stores", "STORES"),
)

#: Backend modules no registry names, with their reason.
BACKEND_MODULES: Mapping[str, str] = {
    "fsd/aws/": "Lambda's entry points (its handlers), as functions/ is the image's",
    "fsd/channels/aws.py": "the AWS SDK client the sqs and sns transports share",
    "fsd/s3client.py": "the S3 client and settings the s3 transport and the s3 store share",
    "fsd/embedded/nats.py": "the nats transport's embedded dev server",
    "fsd/embedded/s3.py": "the s3 transport's (and the model store's) embedded dev server",
    "fsd/embedded/aws.py": "the sqs and sns transports' embedded dev server (moto)",
    "fsd/embedded/moto_locked.py": "moto's server, locked: the aws embedded server's",
}

#: Generic in context: (module, text) -> why it is not a backend's name there.
GENERIC: Mapping[tuple[str, str], str] = {
    ("fsd/cli.py", "gateway"): "Prometheus' Pushgateway (FSD_PUSHGATEWAY), not OpenFaaS's",
    ("fsd/observe.py", "gateway"): "Prometheus' Pushgateway, not OpenFaaS's",
    ("fsd/observe.py", "push_to_gateway"): "prometheus_client's Pushgateway call",
}

ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        *GENERIC,
    }
)
"""Every (module, text) that may stay, for now."""


def _module_path(module: str) -> Path:
    path = PACKAGE.parent / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def backend_modules() -> set[str]:
    """Paths (relative to ``src``) of every backend's own modules: each registry's entries,
    their ``<module>_*`` siblings (a platform's helpers: ``k8s/openfaas_gateway.py``) and
    :data:`BACKEND_MODULES`."""
    found: set[str] = set()
    for registry, table in REGISTRIES:
        entries = getattr(importlib.import_module(registry), table)
        for target in entries.values():
            path = _module_path(target.partition(":")[0])
            found.add(path.relative_to(SRC).as_posix())
            for sibling in path.parent.glob(f"{path.stem}_*.py"):
                found.add(sibling.relative_to(SRC).as_posix())
    for prefix in BACKEND_MODULES:
        for path in PACKAGE.parent.glob(f"{prefix}**/*.py" if prefix.endswith("/") else prefix):
            found.add(path.relative_to(SRC).as_posix())
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of docstring constants (a module's, class's, function's, or an attribute's)."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }


def _registry_nodes(tree: ast.Module) -> set[int]:
    """ids of every node inside a registry table's assignment."""
    inside: set[int] = set()
    for stmt in tree.body:
        targets: list[ast.expr] = []
        if isinstance(stmt, ast.Assign):
            targets = stmt.targets
        elif isinstance(stmt, ast.AnnAssign):
            targets = [stmt.target]
        if any(isinstance(t, ast.Name) and t.id in REGISTRY_TABLES for t in targets):
            inside.update(id(node) for node in ast.walk(stmt))
    return inside


def _texts(tree: ast.Module) -> Iterator[tuple[int, str]]:
    skip = _docstrings(tree) | _registry_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            text = node.name
        elif isinstance(node, ast.arg | ast.keyword):
            text = node.arg
        elif isinstance(node, ast.alias):
            text = node.name
        if text:
            yield getattr(node, "lineno", 0), text


def hits() -> dict[tuple[str, str], list[int]]:
    """(module, text) -> lines, for every backend name outside the backends' modules."""
    own = backend_modules()
    found: dict[tuple[str, str], list[int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(SRC).as_posix()
        if where in own:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, text in _texts(tree):
            if NAMES.search(text):
                found.setdefault((where, text[:60]), []).append(line)
    return found


def test_no_backend_name_in_generic_code() -> None:
    """Every hit is allowed, with its reason; every allowed entry still occurs."""
    found = hits()
    new = {key: lines for key, lines in found.items() if key not in ALLOWED}
    gone = [key for key in ALLOWED if key not in found]
    shown = "\n".join(f"  {m}:{lines[0]}: {t!r}" for (m, t), lines in sorted(new.items()))
    assert not new, f"backend names in generic code (move them, or allow with a reason):\n{shown}"
    assert not gone, f"allowed but gone (remove from ALLOWED): {gone}"


def test_backend_modules_are_registered_or_listed() -> None:
    """The backends' modules the scan skips exist: a renamed module is not silently skipped,
    and the allowed ones stay few."""
    own = backend_modules()
    for prefix in BACKEND_MODULES:
        assert any(m.startswith(prefix) for m in own), prefix
    assert {"fsd/k8s/openfaas.py", "fsd/k8s/knative.py", "fsd/invoke_openfaas.py"} <= own
    assert all(not m.startswith("fsd/k8s/platforms") for m in own)  # a registry is scanned


def test_operator_platforms_are_independent_modules() -> None:
    """pyproject's import contract lists every operator platform (fsd.k8s.platforms.PLATFORMS),
    so no platform imports another."""
    import tomllib

    from fsd.k8s import platforms

    config = tomllib.loads((SRC.parent / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    modules = {v.partition(":")[0] for v in platforms.PLATFORMS.values()}
    assert any(c["type"] == "independence" and set(c["modules"]) == modules for c in contracts), (
        modules
    )


if __name__ == "__main__":  # the current hits not GENERIC, by module
    grouped: dict[str, list[str]] = {}
    for (module, text), lines in sorted(hits().items()):
        if (module, text) not in GENERIC:
            grouped.setdefault(module, []).append(f"        {text!r},  # line {lines[0]}")
    for module, texts in grouped.items():
        print(f"    {module!r}: (", *texts, "    ),", sep="\n")
    sys.exit(0)
