"""The layers point one way: each package imports only the packages below it. Read from
the source with ast, so a new import that breaks a layer fails here, not in review."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = {"common", "backupformat", "nbdplugin", "controller", "testkit", "vm", "bench"}

# package -> the project packages (or modules) it may import besides itself; NAME= means the
# package NAME itself and nothing inside it
ALLOWED = {
    "common": set(),
    "backupformat": set(),
    "nbdplugin": {"common"},
    # nbdplugin itself only to find the plugin files nbdkit runs; config, device and changestate
    # to check `tzero serve`'s arguments before nbdkit starts (changestate: that no other
    # subsystem holds a device's change map, which would otherwise be an nbdkit traceback)
    "controller": {"common", "backupformat", "nbdplugin=", "nbdplugin.config", "nbdplugin.device",
                   "nbdplugin.changestate"},
    "testkit": {"common", "backupformat", "controller"},
}
# the backup plugin serves backups: the stream format, and common for objects in a store (s3://);
# never the controller or the live plugin
MODULE_ALLOWED = {"nbdplugin/backup_plugin.py": {"backupformat", "common"}}


def project_imports(path: Path) -> set[str]:
    """The project modules PATH imports, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PROJECT}
    return found


def allowed(name: str, rules: set[str]) -> bool:
    return any(name == r[:-1] if r.endswith("=") else name == r or name.startswith(r + ".") for r in rules)


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layers_package_imports_only_the_layers_below_it(package):
    wrong = []
    for path in sources(package):
        rel = str(path.relative_to(REPO))
        rules = MODULE_ALLOWED.get(rel, ALLOWED[package] | {package})
        for name in project_imports(path):
            top_module = ".".join(name.split(".")[:2])
            if not (allowed(name, rules) or allowed(top_module, rules)):
                wrong.append(f"{rel} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_layers_the_command_line_is_the_top_of_the_controller():
    """controller/backup, restore and nbd are used by the commands, never the other way round."""
    for package in ("controller/backup", "controller/restore", "controller/nbd"):
        for path in sources(package):
            assert not any(n.startswith("controller.cli") for n in project_imports(path)), path


def test_layers_runtime_packages_never_import_the_testkit():
    for package in ("common", "backupformat", "nbdplugin", "controller"):
        for path in sources(package):
            assert not any(n.startswith("testkit") for n in project_imports(path)), path
