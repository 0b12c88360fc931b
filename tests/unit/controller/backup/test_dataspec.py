"""--dataset NAME=SPEC: what parses, and the one-line refusals of what does not."""

import pytest

from controller.backup.dataspec import DatasetSpec, parse_dataset
from controller.errors import UsageError


@pytest.mark.parametrize("arg, expected", [
    ("a=disk1", DatasetSpec("a", "disk1", "export", ("disk1",))),
    ("a=disk1:1M-3M", DatasetSpec("a", "disk1:1M-3M", "range", ("disk1",), start=1 << 20, length=2 << 20)),
    ("a=disk1:512+4K", DatasetSpec("a", "disk1:512+4K", "range", ("disk1",), start=512, length=4096)),
    ("root=disk-1:p2", DatasetSpec("root", "disk-1:p2", "partition", ("disk-1",), partition=2)),
    ("v=concat:x,y,z", DatasetSpec("v", "concat:x,y,z", "concat", ("x", "y", "z"))),
    ("v=stripe:64K:x,y", DatasetSpec("v", "stripe:64K:x,y", "stripe", ("x", "y"), chunk=64 << 10)),
])
def test_dataspec_valid_spec_parses(arg, expected):
    assert parse_dataset(arg) == expected


@pytest.mark.parametrize("arg, fragment", [
    ("disk1", "expected NAME=SPEC"),
    ("a=", "expected NAME=SPEC"),
    ("a/b=disk1", "must not be"),
    ("a=disk1:100-4096", "not a multiple of 512"),
    ("a=disk1:0+1000", "not a multiple of 512"),
    ("a=disk1:4K-4K", "not after its start"),
    ("a=disk1:8K-4K", "not after its start"),
    ("a=disk1:0+0", "empty"),
    ("a=disk1:lots", "not START-END"),
    ("a=disk1:p0", "not START-END"),
    ("a=disk1:1x-2M", "not a size"),
    ("a=concat:x", "at least 2 exports"),
    ("a=concat:x,x", "names an export twice"),
    ("a=stripe:64K:x", "at least 2 exports"),
    ("a=stripe:0:x,y", "must not be 0"),
    ("a=stripe:1000:x,y", "not a multiple of 512"),
    ("a=stripe:x,y", "expected stripe:CHUNK"),
    ("a=concat:x,,y", "not an export name"),
])
def test_dataspec_malformed_spec_is_a_usage_error_naming_the_argument(arg, fragment):
    with pytest.raises(UsageError) as e:
        parse_dataset(arg)
    assert fragment in e.value.message and e.value.exit_code == 2
    assert "\n" not in e.value.message
