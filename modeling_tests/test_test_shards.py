"""JET_NEMOTRON_TEST_SHARD (conftest.py): n processes split a test file between them, each test in exactly one."""

from types import SimpleNamespace

import pytest

from conftest import pytest_collection_modifyitems as shard_hook


def run_hook(items: list, shard: str, monkeypatch) -> tuple[list, list]:
    """(kept, deselected) of the conftest hook on `items` under JET_NEMOTRON_TEST_SHARD=`shard`."""
    monkeypatch.setenv("JET_NEMOTRON_TEST_SHARD", shard)
    deselected = []
    config = SimpleNamespace(hook=SimpleNamespace(pytest_deselected=lambda items: deselected.extend(items)))
    kept = list(items)
    shard_hook(config, kept)
    return kept, deselected


def test_two_shards_split_the_tests_into_disjoint_halves_that_cover_them(monkeypatch):
    items = [f"test_{k}" for k in range(7)]
    (first, out0), (second, out1) = (run_hook(items, f"{i}/2", monkeypatch) for i in range(2))
    assert first == items[0::2] and second == items[1::2]  # collection order: parametrised neighbours part
    assert sorted(first + second) == sorted(items) and not set(first) & set(second)
    assert sorted(first + out0) == sorted(items) and out1 == first  # what a shard leaves is reported deselected


def test_without_the_variable_every_test_stays(monkeypatch):
    monkeypatch.delenv("JET_NEMOTRON_TEST_SHARD", raising=False)
    items = ["a", "b", "c"]
    shard_hook(SimpleNamespace(hook=None), items)
    assert items == ["a", "b", "c"]


@pytest.mark.parametrize("bad", ["2/2", "1", "a/b", "-1/2", "0/0"])
def test_a_malformed_shard_is_refused_by_name(bad, monkeypatch):
    with pytest.raises(pytest.UsageError, match=f"JET_NEMOTRON_TEST_SHARD={bad!r}"):
        run_hook(["a", "b"], bad, monkeypatch)
