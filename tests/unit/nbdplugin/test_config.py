"""The plugin's start-up parameters, all checked before anything is served."""

import pytest

from nbdplugin.config import ConfigError, PluginConfig, parse_export


def test_config_duplicate_export_name_is_refused():
    c = PluginConfig()
    c.set("export", "a=/tmp/x")
    with pytest.raises(ConfigError, match="given twice"):
        c.set("export", "a=/tmp/y")


@pytest.mark.parametrize("spec", ["noequals", "=path", "a@b=/x", "a/b=/x", "a="])
def test_config_bad_export_spec_is_refused(spec):
    with pytest.raises(ConfigError):
        parse_export(spec)


@pytest.mark.parametrize("chunk", ["3000", "2K", "32M"])
def test_config_chunk_must_be_a_power_of_two_in_range(chunk, tmp_path):
    c = PluginConfig()
    c.set("export", "a=/tmp/x")
    c.set("control", str(tmp_path / "ctl"))
    c.set("chunk", chunk)
    with pytest.raises(ConfigError, match="power of two"):
        c.validate()


def test_config_spill_keep_is_a_size_and_absent_means_keep_whole(tmp_path):
    c = PluginConfig()
    assert c.spill_keep is None
    c.set("spill-keep", "512M")
    assert c.spill_keep == 512 << 20
    with pytest.raises(ConfigError, match="spill-keep"):
        c.set("spill-keep", "lots")


def network_config(tmp_path, control: str, *params: tuple[str, str]) -> PluginConfig:
    c = PluginConfig()
    c.set("export", "a=/tmp/x")
    c.set("control", control)
    for key, value in params:
        c.set(key, value)
    return c


def test_config_control_takes_a_path_or_host_port_and_the_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert network_config(tmp_path, "s.ctl").control.path == str(tmp_path / "s.ctl")
    c = network_config(tmp_path, "[fd00::5]:7000", ("tls-certificates", "pki"))
    assert (c.control.host, c.control.port, c.tls_certificates) == ("fd00::5", 7000, str(tmp_path / "pki"))
    with pytest.raises(ConfigError, match="not a TCP port"):
        network_config(tmp_path, "h:99999")


def test_config_refuses_plaintext_tcp_off_loopback_and_on_it_unless_told(tmp_path):
    with pytest.raises(ConfigError, match="not a loopback address"):
        network_config(tmp_path, "10.0.0.5:7000", ("insecure-plaintext-tcp", "yes")).validate()
    with pytest.raises(ConfigError, match="insecure-plaintext-tcp"):
        network_config(tmp_path, "127.0.0.1:7000").validate()
    network_config(tmp_path, "127.0.0.1:7000", ("insecure-plaintext-tcp", "yes")).validate()
    network_config(tmp_path, "10.0.0.5:7000", ("tls-certificates", str(tmp_path))).validate()


def test_config_refuses_plaintext_nbd_off_loopback_even_with_a_unix_control_socket(tmp_path):
    c = network_config(tmp_path, str(tmp_path / "c.ctl"), ("nbd-port", "10809"), ("nbd-host", "0.0.0.0"),
                       ("insecure-plaintext-tcp", "yes"))
    with pytest.raises(ConfigError, match="NBD on 0.0.0.0:10809: not a loopback address"):
        c.validate()
