"""What every command shares: the progress on stderr (steps, and a bar for counted work)."""

from __future__ import annotations

import io

from rich.console import Console

from koschei.cli.common import RichProgress, split_names


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=100, color_system=None), out


def test_a_counted_phase_gets_a_bar_with_its_detail_and_it_is_cleared_after():
    console, out = terminal()
    with RichProgress(console) as progress:
        progress.step("candidate 1")
        progress.advance(5, "best ×0.970 of the defaults' time")
        progress.advance(5, "best ×0.950 of the defaults' time")
        progress._bar.refresh()
        drawn = out.getvalue()
    assert "· candidate 1" in drawn
    assert "2/5" in drawn and "best ×0.950 of the defaults' time" in drawn
    assert progress._bar is None  # cleared: the result prints below nothing
    progress.advance(3)  # a new bar for the next counted phase
    assert progress._bar is not None
    progress.close()


def test_work_without_a_total_draws_no_bar():
    console, _ = terminal()
    progress = RichProgress(console)
    progress.advance()
    assert progress._bar is None


def test_split_names_takes_repeats_and_commas():
    assert split_names(["a,b", " c ", ",", "d,"]) == ["a", "b", "c", "d"]
    assert split_names(None) == []
