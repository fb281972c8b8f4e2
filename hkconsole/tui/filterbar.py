"""The `/` filter box: shown while a filter is typed or set, hidden when cleared."""

from __future__ import annotations

from textual import on
from textual.message import Message
from textual.widgets import Input


class FilterBar(Input):
    class Filtered(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class Done(Message):
        """Enter: the filter stays, the keys go back to the table."""

    def __init__(self) -> None:
        super().__init__(placeholder="filter: jobid, user, host, state…", id="filter")
        self.text = ""

    def on_mount(self) -> None:
        self.display = False

    def open(self) -> None:
        self.display = True
        self.focus()

    @property
    def is_clear(self) -> bool:
        return not self.text and not self.display

    def clear_filter(self) -> None:
        with self.prevent(Input.Changed):
            self.value = ""
        self.text = ""
        self.display = False

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        event.stop()
        text = event.value.strip()
        if text != self.text:
            self.text = text
            self.post_message(self.Filtered(text))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Done())
