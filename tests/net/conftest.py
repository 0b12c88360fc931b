"""Fixtures for a consistency group across hosts: namespaces (netns.py), one CA with a server
certificate per host (as `tzero certs --ca` issues them), subsystems inside the hosts.

Needs root and iproute2: without them these tests skip, unless TZERO_REQUIRE_VM=1 (CI,
`make test`) makes that a failure."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import netns  # noqa: E402


@pytest.fixture
def topology():
    missing = netns.available()
    if missing:
        if os.environ.get("TZERO_REQUIRE_VM") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    topo = netns.Topology()
    try:
        yield topo.create()
    finally:
        topo.destroy()


@pytest.fixture(scope="session")
def net_pki(tmp_path_factory):
    """{"ca": the controller's directory (CA, client certificate), "a"/"b": each host's (CA certificate,
    its own server certificate)}."""
    from controller.net.certs import make_directory

    root = tmp_path_factory.mktemp("net-pki")
    dirs = {"ca": str(root / "ca")}
    make_directory(dirs["ca"], [], client=True)
    for i, name in enumerate("ab"):
        dirs[name] = str(root / name)
        make_directory(dirs[name], [f"10.77.{i + 1}.2"], client=False, ca_dir=dirs["ca"])
    return dirs
