"""The footer: every key on a wide terminal, the essential ones on a narrow one."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.events import Resize
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

# Actions whose keys the footer leaves to `?` help when the terminal is too narrow for
# all of them, so the keys an operator needs first (kill, filter, help, quit) always fit.
SECONDARY_ACTIONS = frozenset({"kill_targets", "kill_all", "choose_signal"})
# The narrowest terminal on which the full footer of either view fits.
FULL_WIDTH = 116


class OperatorFooter(Footer):
    def __init__(self) -> None:
        # Compact (a key, a space, its words): 80 columns hold a view's essential keys.
        super().__init__(show_command_palette=False, compact=True)
        self._narrow: bool | None = None

    def compose(self) -> ComposeResult:
        self._narrow = self.app.size.width < FULL_WIDTH
        shown = 0
        for widget in super().compose():
            if (
                self._narrow
                and isinstance(widget, FooterKey)
                and widget.action in SECONDARY_ACTIONS
            ):
                continue
            shown += 1
            yield widget
        self.styles.grid_size_columns = max(shown, 1)

    async def on_resize(self, event: Resize) -> None:
        if (self.app.size.width < FULL_WIDTH) != self._narrow:
            await self.recompose()
