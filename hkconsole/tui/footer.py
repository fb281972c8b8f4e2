"""The footer: every key on a wide terminal, the essential ones on a narrow one."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.events import Resize
from textual.widget import Widget
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

from hkconsole.tui.keys import FOOTER_ORDER

# Actions whose keys the footer leaves to `?` help when the terminal is too narrow for
# all of them, so the keys an operator needs first (kill, filter, help, quit) always fit.
# (`output` is also what enter does.)
SECONDARY_ACTIONS = frozenset({"kill_targets", "kill_all", "choose_signal", "output"})
# The narrowest terminal on which the full footer of every view fits.
FULL_WIDTH = 120


class OperatorFooter(Footer):
    def __init__(self) -> None:
        # Compact (a key, a space, its words): 80 columns hold a view's essential keys.
        super().__init__(show_command_palette=False, compact=True)
        self._narrow: bool | None = None

    def compose(self) -> ComposeResult:
        self._narrow = self.app.size.width < FULL_WIDTH
        keys = [
            widget
            for widget in super().compose()
            if not (
                self._narrow
                and isinstance(widget, FooterKey)
                and widget.action in SECONDARY_ACTIONS
            )
        ]
        yield from sorted(keys, key=footer_place)

    async def on_resize(self, event: Resize) -> None:
        if (self.app.size.width < FULL_WIDTH) != self._narrow:
            await self.recompose()


def footer_place(widget: Widget) -> int:
    """Where a key goes in the footer (FOOTER_ORDER; others last, in their order)."""
    action = getattr(widget, "action", "").partition("(")[0]
    return FOOTER_ORDER.index(action) if action in FOOTER_ORDER else len(FOOTER_ORDER)
