"""The contract kit's own page (docs/howto/contract-kit.md) runs as written, and names every sub-check."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelmill.store import MemoryKV
from modelmill.testing import KV_CHECKS, ONLINE_CHECKS, PUBLISHER_CHECKS, SOURCE_CHECKS, check_kv
from tests.tutorials.runner import blocks, free_port, run_page

PAGE = Path(__file__).resolve().parent.parent / "docs" / "howto" / "contract-kit.md"


def test_the_page_names_every_sub_check() -> None:
    text = PAGE.read_text()
    for table, name in ((KV_CHECKS, "KV_CHECKS"), (ONLINE_CHECKS, "ONLINE_CHECKS"),
                        (SOURCE_CHECKS, "SOURCE_CHECKS"), (PUBLISHER_CHECKS, "PUBLISHER_CHECKS")):
        line = re.search(rf"^- `{name}`: (.*?)(?=^- |^\S)", text, flags=re.M | re.S)
        assert line is not None, f"the page does not list {name}"
        assert re.findall(r"`(\w+)`", line[1]) == list(table), f"the page's {name} differ from the code's"


def test_the_failure_the_page_shows_is_the_one_raised() -> None:
    (shown,) = [b.body.strip() for b in blocks(PAGE) if b.lang == "text"]

    class Forgetful(MemoryKV):
        def mget(self, keys):  # type: ignore[no-untyped-def]
            return [None for _ in keys]

    with pytest.raises(AssertionError) as info:
        check_kv(Forgetful)
    assert f"AssertionError: {info.value}" == shown


@pytest.mark.slow
def test_the_page_runs_as_written(tmp_path: Path) -> None:
    done = run_page(PAGE, tmp_path, port=free_port(), timeout=300)
    assert done.returncode == 0, done.stdout[-6000:]
    passed = [int(n) for n in re.findall(r"^(\d+) passed", done.stdout, flags=re.M)]
    assert passed == [2 + len(KV_CHECKS), 2, 2], done.stdout[-3000:]
