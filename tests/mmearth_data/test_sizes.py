import pytest

from mmearth_data.errors import MMEarthError
from mmearth_data.sizes import parse_size


@pytest.mark.parametrize("text,value", [("500", 500), ("1k", 1000), ("100k", 100_000), ("1.2M", 1_200_000),
                                        ("1.5m", 1_500_000), (7, 7)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["0", "-5", "abc", "1.5", "1.2345k", "", "10 tiles"])
def test_parse_size_rejects(text):
    with pytest.raises(MMEarthError, match="size"):
        parse_size(text)
