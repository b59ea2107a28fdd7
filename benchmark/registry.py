"""One registry type for tasks, models, defenses, attacks and poisoners (in the manner of timm's).

Components register by decorator with tags. The project's own `defenses` and `attacks` packages,
and any outside package, are discovered through the `rbench.plugins` entry-point group; a single
file can be loaded with `--plugin path.py`. The engine never imports a defense or attack by name.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import pkgutil
import sys
import sysconfig
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from benchmark.errors import UsageError

ENTRY_POINT_GROUP = "rbench.plugins"


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    tags: dict = field(default_factory=dict)
    source: str = ""


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **tags) -> Callable[[Any], Any]:
        def decorator(obj):
            existing = self._entries.get(name)
            module = getattr(obj, "__module__", "")
            if existing is not None and existing.source != module:
                raise UsageError(
                    f"{self.kind} '{name}' is registered twice ({existing.source} and {module}); "
                    f"rename one of them")
            self._entries[name] = Entry(name, obj, dict(tags), module)
            return obj
        return decorator

    def get(self, name: str) -> Entry:
        load_plugins()
        if name not in self._entries:
            valid = ", ".join(sorted(self._entries)) or "(none registered)"
            raise UsageError(f"unknown {self.kind} '{name}'; valid {self.kind} names: {valid}")
        return self._entries[name]

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[name] for name in self.names()]

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._entries


TASKS = Registry("task")
MODELS = Registry("model")
DEFENSES = Registry("defense")
ATTACKS = Registry("attack")
POISONERS = Registry("poisoner")

REGISTRIES = {"tasks": TASKS, "models": MODELS, "defenses": DEFENSES, "attacks": ATTACKS,
              "poisoners": POISONERS}


def register_task(name: str, *, modality: str, **tags):
    return TASKS.register(name, modality=modality, **tags)


def register_model(name: str, *, modality: str, **tags):
    return MODELS.register(name, modality=modality, **tags)


def register_defense(name: str, *, modality: str, certifies: bool = False, unit: str | None = None,
                     **tags):
    """`modality` is "text", "image" or "any"; `unit` is the certificate's radius unit."""
    return DEFENSES.register(name, modality=modality, certifies=certifies, unit=unit, **tags)


def register_attack(name: str, *, modality: str, threat: str, **tags):
    """`threat` is the perturbation family: word_sub, char, linf, l2, backdoor."""
    return ATTACKS.register(name, modality=modality, threat=threat, **tags)


def register_poisoner(name: str, **tags):
    return POISONERS.register(name, modality="text", **tags)


def _import_package_tree(module_name: str) -> None:
    """Import a plugin module and, if it is a package, every module inside it."""
    module = importlib.import_module(module_name)
    if hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, prefix=module_name + "."):
            importlib.import_module(info.name)


_loaded = False


def load_plugins() -> None:
    """Import the engine's own tasks and models, then every entry point of the plugin group."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import benchmark.data  # noqa: F401  (registers the tasks)
    import benchmark.models  # noqa: F401  (registers the architectures)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        _import_package_tree(entry_point.value)


def load_plugin_file(path: str | Path) -> str:
    """Load a single outside file that registers components (`--plugin path.py`). Returns the
    module name its components are registered under (their Entry.source)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"plugin file not found: {path}; pass the path of a .py file that "
                         f"registers components with benchmark.registry decorators")
    if path.suffix != ".py":
        raise UsageError(f"plugin file {path} is not a Python file (.py); pass the path of a .py "
                         f"file that registers components with benchmark.registry decorators")
    # One module per file: the same file loads once, two files that share a name both load.
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    module_name = f"rbench_plugin_{path.stem}_{digest}"
    if module_name in sys.modules:
        return module_name
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    load_plugins()
    try:
        spec.loader.exec_module(module)
    except UsageError:
        del sys.modules[module_name]
        raise
    except Exception as error:
        del sys.modules[module_name]
        raise UsageError(f"plugin {path} failed to load: {type(error).__name__}: {error}") from error
    return module_name


# Where installed code lives: the standard library and site-packages (of a venv too).
_INSTALLED = tuple({Path(sysconfig.get_paths()[key]).resolve()
                    for key in ("stdlib", "platstdlib", "purelib", "platlib")})


def local_source_files(path: str | Path, package: str = "") -> list[Path]:
    """The Python file at `path` and every Python file it imports, directly or through another such
    file, that is not installed (not in the standard library or site-packages): a helper module next
    to a plugin, the project's own modules. Model cache keys and plugin hashes cover all of them, so
    editing any of them (say `EPOCHS` in a plugin's helper) changes the key. `package` is the file's
    package, for its relative imports. Imports are read from the source, those inside functions
    included, so the answer does not depend on what happens to have been imported already."""
    start = Path(path).resolve()
    known = _local_source_files_seen.get((start, package))
    if known is not None and all(_digest(file) == digest for file, digest in known):
        return [file for file, _ in known]
    found: set[Path] = set()
    todo = [(start, package)]
    while todo:
        file, file_package = todo.pop()
        if file in found:
            continue
        found.add(file)
        for name in _imported_names(file, file_package):
            spec = _local_spec(name)
            if spec is not None:
                todo.append((Path(spec.origin).resolve(), spec.parent))
    _local_source_files_seen[(start, package)] = [(file, _digest(file)) for file in sorted(found)]
    return sorted(found)


# local_source_files' answers in this process, with the digest of each file it read: every cell's
# cache key asks again (finding the imports was ~80% of a small model's clean cell), and an answer
# stands while those files are unchanged (a new import means an edit to one of them).
_local_source_files_seen: dict[tuple[Path, str], list[tuple[Path, str]]] = {}


def _digest(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def source_sha256(files) -> str:
    """SHA-256 over the contents of `files` (not their paths: the same code hashes the same in any
    checkout)."""
    digests = sorted(hashlib.sha256(Path(file).read_bytes()).hexdigest() for file in files)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def plugin_sha256(path: str | Path) -> str:
    """The hash of a plugin file together with every local module it imports."""
    return source_sha256(local_source_files(path))


def _imported_names(file: Path, package: str) -> set[str]:
    """Every module name an import statement in `file` may load: `import a.b` loads a and a.b;
    `from a import b` loads a, and a.b when b is a submodule."""
    names = set()
    for node in ast.walk(ast.parse(file.read_bytes(), str(file))):
        if isinstance(node, ast.Import):
            bases, members = [alias.name for alias in node.names], []
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            except (ImportError, ValueError):  # a relative import beyond the top-level package
                continue
            bases = [base]
            members = [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
        else:
            continue
        for name in bases:
            parts = name.split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        names.update(members)
    return names


def _local_spec(name: str):
    """The spec of module `name` when it is a local (not installed) Python file, else None. An
    installed top-level package is recognised without importing it (finding a submodule's spec
    imports its parents, and some installed packages take seconds to import)."""
    try:
        top = importlib.util.find_spec(name.partition(".")[0])
        if top is None:
            return None
        # a package's folders, or a module's file ("built-in" or "frozen" for some stdlib modules)
        if not any(_is_local(path) for path in top.submodule_search_locations or [top.origin]):
            return None
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):  # not importable here, or not a module
        return None
    return spec if spec is not None and spec.origin and spec.origin.endswith(".py") \
        and _is_local(spec.origin) else None


def _is_local(path: str | None) -> bool:
    """A file or folder outside the standard library and site-packages (and not "built-in")."""
    if not path or not Path(path).is_absolute():
        return False
    resolved = Path(path).resolve()
    return not any(resolved.is_relative_to(root) for root in _INSTALLED)
