"""Progress: a bar on a terminal, one plain line per phase in a log."""
from __future__ import annotations

import io

from processor.progress import Progress, counter_of


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_under_cron_each_phase_is_one_plain_line_and_there_is_no_bar():
    log = io.StringIO()
    progress = Progress(log)
    progress("facts built for 10 projects")
    count = counter_of(progress, "durable-rules")
    for done in range(0, 11):
        count(done, 10)
    progress("durable-rules evaluated 10 candidate projects")
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert lines[0].endswith("facts built for 10 projects") and lines[0].startswith("[")


def test_on_a_terminal_the_engine_gets_a_bar_that_goes_away_when_the_phase_ends():
    screen = Terminal()
    progress = Progress(screen)
    count = counter_of(progress, "durable-rules")
    count(5, 10)
    count(10, 10)
    progress("durable-rules evaluated 10 candidate projects")
    text = screen.getvalue()
    assert "durable-rules" in text and "\r" in text  # a bar redrawn in place
    assert text.rstrip().endswith("durable-rules evaluated 10 candidate projects")


def test_a_plain_message_callback_gets_no_counter():
    assert counter_of(print, "durable-rules") is None
    assert counter_of(None, "durable-rules") is None
