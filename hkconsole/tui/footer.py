"""The footer: every key on a wide terminal, the essential ones on a narrow one.

One widget drawing one line, not Textual's Footer (a widget per key, all mounted and
styled anew at each focus change: ~70 ms of every view switch at 10,000 units).
A key is clicked as it is pressed.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.style import Style
from rich.text import Text
from textual import events
from textual.screen import Screen
from textual.strip import Strip
from textual.widget import Widget

from hkconsole.tui.keys import FOOTER_ORDER

# Actions whose keys the footer leaves to `?` help when the terminal is too narrow for
# all of them, so the keys an operator needs first (kill, filter, help, quit) always fit.
# (`output` is also what enter does.)
SECONDARY_ACTIONS = frozenset({"kill_targets", "kill_all", "choose_signal", "output"})
# The narrowest terminal on which the full footer of every view fits.
FULL_WIDTH = 120


@dataclass(frozen=True)
class FooterKey:
    key: str  # as shown (`space`, `/`)
    press: str  # the key's name, for a click to press it (`space`, `slash`)
    description: str
    action: str
    enabled: bool  # False: greyed out, it waits for the service


class OperatorFooter(Widget):
    COMPONENT_CLASSES = frozenset({"footer--key", "footer--description", "footer--disabled"})

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[FooterKey] = []

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self.bindings_changed)
        self.bindings_changed(self.screen)

    def bindings_changed(self, screen: Screen[object]) -> None:
        if screen is not self.screen:
            return
        narrow = self.app.size.width < FULL_WIDTH
        shown: dict[str, FooterKey] = {}
        for _, binding, enabled, _ in screen.active_bindings.values():
            # One entry per action (`1`, `2` and `3` each have theirs: their parameter).
            if not binding.show or binding.action in shown:
                continue
            if narrow and binding.action.partition("(")[0] in SECONDARY_ACTIONS:
                continue
            key = self.app.get_key_display(binding)
            press = binding.key.split(",")[0].strip()
            shown[binding.action] = FooterKey(
                key, press, binding.description, binding.action, enabled
            )
        keys = sorted(shown.values(), key=footer_place)
        if keys != self.keys:
            self.keys = keys
            self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        self.bindings_changed(self.screen)

    def render_line(self, y: int) -> Strip:
        # Drawn as segments: Textual's own path for a rendered Text drops the styles
        # that carry a click.
        if y:
            return Strip.blank(self.size.width, self.rich_style)
        segments = self.line().render(self.app.console)
        return Strip(segments).crop_extend(0, self.size.width, self.rich_style)

    def line(self) -> Text:
        key_style = self.get_component_rich_style("footer--key")
        words_style = self.get_component_rich_style("footer--description")
        dim = self.get_component_rich_style("footer--disabled")
        # Compact, as `k Kill  / Filter`: 80 columns hold a view's essential keys.
        line = Text(no_wrap=True, overflow="ellipsis")
        for index, key in enumerate(self.keys):
            if index:
                line.append(" ", words_style)
            click = Style.from_meta({"@click": f"app.simulate_key({key.press!r})"})
            off = dim if not key.enabled else Style.null()
            line.append(key.key, key_style + off + click)
            line.append(f" {key.description}", words_style + off + click)
        return line


def footer_place(key: FooterKey) -> int:
    """Where a key goes in the footer (FOOTER_ORDER; others last, in their order)."""
    action = key.action.partition("(")[0]
    return FOOTER_ORDER.index(action) if action in FOOTER_ORDER else len(FOOTER_ORDER)
