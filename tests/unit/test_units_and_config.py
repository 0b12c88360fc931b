import pytest

from controller.errors import UsageError
from controller.units import parse_size
from nbdplugin.config import ConfigError, PluginConfig, parse_export


@pytest.mark.parametrize("text, value", [("4096", 4096), ("64K", 65536), ("256m", 256 << 20), ("1GiB", 1 << 30), ("2G", 2 << 30)])
def test_units_parse_size_accepts_binary_suffixes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "K", "1.5G", "-1", "12Q", "lots"])
def test_units_parse_size_refuses_non_sizes(text):
    with pytest.raises(UsageError):
        parse_size(text)


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
