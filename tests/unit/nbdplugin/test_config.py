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
