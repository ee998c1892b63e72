"""Every module's ``__all__`` names only what exists, and every public module has one."""

from __future__ import annotations

import importlib
import pkgutil

import dynamic_asgs


def modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(dynamic_asgs.__path__, "dynamic_asgs.")]


def test_all_lists_only_existing_names() -> None:
    for name in modules():
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            assert module.__file__ and module.__file__.endswith("__init__.py"), f"{name} lacks __all__"
            continue
        missing = [n for n in exported if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names missing {missing}"
        assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
