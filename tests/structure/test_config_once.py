"""Configuration is parsed once, at the entry points, and every variable is documented.

The entry points (the CLI, the functions, the Lambda handlers, the operator, the local stack)
read the environment and build typed objects that flow down; no module below them reads it. Each
variable is declared next to the code that reads it (:class:`fsd.settings.Variable`), and
docs/configuration.md is generated from those declarations (:mod:`fsd.configdoc`).
"""

from __future__ import annotations

import ast
import importlib
import re
from types import ModuleType

from paths import ROOT

SRC = ROOT / "src" / "fsd"
DOC = ROOT / "docs" / "configuration.md"
SERVER = ROOT / "template" / "fsd-python3-http" / "index.py"

ENTRY_POINTS = ("cli.py", "localstack.py", "configdoc.py", "functions/", "aws/", "k8s/")
"""What may read the environment (relative to src/fsd; a folder: every module in it)."""

ALLOWED = {
    "services.py": "starts dev servers as child processes: their environment is this one's",
    "embedded/aws.py": "starts moto_server as a child: this environment minus moto's MOTO_*",
    "embedded/s3.py": "starts weed as a child: this environment minus weed's WEED_*",
    "embedded/moto_locked.py": "a child process's own main (python -m): its keys come in its "
    "environment, never on its command line",
}
"""Modules below the entry points that touch the process environment, each with its reason."""

ENV_NAMES = {"environ", "environb", "getenv", "putenv", "unsetenv"}
VARIABLE = re.compile(r"\b(?:FSD|OPENFAAS|AWS)_[A-Z0-9_]*[A-Z0-9]\b")

UNDECLARED = {
    "FSD_STACK_DIR": "fsd.localstack's own folder for its processes' logs, set for them",
    "FSD_MOTO_ACCESS_KEY": "fsd.embedded hands moto_locked its keys (a child's own, not a setting)",
    "FSD_MOTO_SECRET_KEY": "likewise",
}
"""Names in the code that are no setting of anyone's: internal hand-overs to child processes."""


def _configdoc() -> ModuleType:
    """:mod:`fsd.configdoc`, imported by the tests that use it (the others scan source only)."""
    return importlib.import_module("fsd.configdoc")


READERS = {"get", "pop", "text", "names", "number", "integer", "seconds", "choice", "flag"}


def _modules() -> list[tuple[str, ast.Module]]:
    return [
        (path.relative_to(SRC).as_posix(), ast.parse(path.read_text()))
        for path in sorted(SRC.rglob("*.py"))
    ]


def _entry_point(module: str) -> bool:
    return any(module.startswith(e) if e.endswith("/") else module == e for e in ENTRY_POINTS)


def _env_uses(tree: ast.Module) -> list[int]:
    """Lines touching the process environment: ``os.environ``, ``os.getenv``... and names
    imported from ``os`` (``from os import environ``)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ENV_NAMES:
            if isinstance(node.value, ast.Name) and node.value.id in {"os", "posix"}:
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module in {"os", "posix"}:
            lines += [node.lineno for alias in node.names if alias.name in ENV_NAMES]
    return lines


def _strings(tree: ast.Module) -> set[str]:
    """The variable names in a module's string literals, docstrings left out."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            found.update(VARIABLE.findall(node.value))
    return found


def _lookups(tree: ast.Module) -> set[str]:
    """The variables a module looks up: a name passed to a reader (``env.get``,
    ``settings.text``, a partial of it...) or read by subscript (``env["FSD_RUN_KEY"]``)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in READERS:
                found.update(
                    a.value
                    for a in node.args
                    if isinstance(a, ast.Constant)
                    and isinstance(a.value, str)
                    and VARIABLE.fullmatch(a.value)
                )
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            key = node.slice
            if isinstance(key, ast.Constant) and VARIABLE.fullmatch(str(key.value)):
                found.add(str(key.value))
    return found


def test_configuration_doc_is_current() -> None:
    """docs/configuration.md is what the declarations say today."""
    configdoc = _configdoc()
    assert DOC.read_text() == configdoc.markdown(), f"run `{configdoc.COMMAND}`"


def test_every_variable_named_in_the_code_is_declared() -> None:
    """Nothing is read that docs/configuration.md does not list: every FSD_*, OPENFAAS_* and
    AWS_* name in src/fsd's code is a declared variable (or an internal hand-over above)."""
    configdoc = _configdoc()
    declared = configdoc.declared()
    undeclared = {
        name: module
        for module, tree in _modules()
        for name in _strings(tree)
        if name not in declared and name not in UNDECLARED
    }
    assert undeclared == {}, "declare them (fsd.settings.Variable) where they are read"
    assert not set(UNDECLARED) & declared  # an excuse for a declared name is stale


def test_each_component_declares_a_variable_once() -> None:
    configdoc = _configdoc()
    for part in configdoc.components():
        names = [v.name for v in part.variables]
        assert len(names) == len(set(names)), part.title


def test_the_function_servers_declarations_are_what_it_reads() -> None:
    """The function image's server runs without fsd: its variables are declared in
    :mod:`fsd.configdoc`, and are exactly those its code looks up."""
    configdoc = _configdoc()
    tree = ast.parse(SERVER.read_text())
    read: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[1] if name == "env_int" else node.args[0]
            receiver = getattr(getattr(func, "value", None), "id", "")
            on_env = name == "env_int" or (name == "get" and receiver == "env")
            if on_env and isinstance(first, ast.Constant):
                read.add(str(first.value))
    assert read == {v.name for v in configdoc.FUNCTION_SERVER}


def test_no_module_below_the_entry_points_reads_the_environment() -> None:
    """Only the entry points read ``os.environ``; everything below takes typed objects (or an
    environment mapping handed to it). The few exceptions say why."""
    offenders = {
        module: lines
        for module, tree in _modules()
        if (lines := _env_uses(tree)) and not _entry_point(module) and module not in ALLOWED
    }
    assert offenders == {}, "take the value as a parameter, read by an entry point"
    present = {module for module, tree in _modules() if _env_uses(tree)}
    assert set(ALLOWED) <= present, "an allowance for a module that no longer needs it"


#: variable -> the modules that look it up: one reader each (the gateway's credentials: one for
#: the functions invoking workers through it, one for the operator deploying through it)
READ_IN = {
    "FSD_RUN_KEY": {"settings.py"},
    "FSD_SECRETS_DIR": {"variables.py"},
    "FSD_WORKER_URL": {"launch/http.py", "localstack.py"},  # the stack logs what it set
    "FSD_SECRETS_ARN": {"aws/settings.py"},
    "FSD_GATEWAY_USER": {"launch/openfaas.py", "k8s/openfaas.py"},
    "FSD_GATEWAY_PASSWORD": {"launch/openfaas.py", "k8s/openfaas.py"},
    "OPENFAAS_URL": {"invoke_openfaas.py"},
    "OPENFAAS_USER": {"invoke_openfaas.py"},
    "OPENFAAS_PASSWORD": {"invoke_openfaas.py"},
    "FSD_CACHE_DIR": {"cli.py"},
    "FSD_PUSHGATEWAY": {"cli.py"},
}


def test_secrets_and_addresses_are_read_in_one_place() -> None:
    modules = _modules()
    read_in = {
        name: {module for module, tree in modules if name in _lookups(tree)} for name in READ_IN
    }
    assert read_in == READ_IN
