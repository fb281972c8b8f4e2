"""Modal screens: every destructive action is confirmed in one of these."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, RichLog, Static
from textual.widgets.option_list import Option

from hkconsole.tui.cells import visible_lines
from hkservice.text import visible

SIGNALS = ("TERM", "INT", "HUP", "KILL", "USR1", "USR2")


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no, defaulting to no."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, title: str, body: str, danger: bool = True) -> None:
        super().__init__(classes="danger" if danger else "")
        self.title_text = title
        self.body_text = body

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text(visible(self.title_text), style="bold"), id="dialog-title")
            yield Static(Text(visible_lines(self.body_text)), id="dialog-body")
            with Horizontal(id="dialog-buttons"):
                yield Button("No (n)", id="no", variant="primary")
                yield Button("Yes (y)", id="yes", variant="error")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class PromptScreen(ModalScreen[str | None]):
    """One line of input, checked as it is typed; Enter accepts only valid input."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="prompt.cancel")]

    def __init__(
        self,
        title: str,
        placeholder: str,
        validate: Callable[[str], str | None],
        danger: bool = False,
        hint: str = "enter: accept · esc: cancel",
    ) -> None:
        super().__init__(classes="danger" if danger else "")
        self.hint = hint
        self.title_text = title
        self.placeholder = placeholder
        self.check = validate

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text(visible(self.title_text), style="bold"), id="dialog-title")
            yield Input(placeholder=self.placeholder, id="prompt-input")
            yield Static("", id="prompt-error")
            yield Static(Text(self.hint), classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Changed)
    def changed(self, event: Input.Changed) -> None:
        problem = self.check(event.value) if event.value else None
        self.query_one("#prompt-error", Static).update(Text(problem or ""))
        self.query_one(Input).set_class(bool(problem), "invalid")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        problem = self.check(event.value)
        if problem:
            self.query_one("#prompt-error", Static).update(Text(problem))
            self.app.bell()
            return
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SignalScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="signal.cancel")]

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text("Signal for kills", style="bold"), id="dialog-title")
            yield OptionList(*[Option(f"SIG{name}", id=name) for name in SIGNALS])

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = SIGNALS.index(self.current) if self.current in SIGNALS else 0
        options.focus()

    @on(OptionList.OptionSelected)
    def selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class OutputScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,o", "close", "Close", id="output.close")]

    def __init__(
        self, title: str, lines: list[tuple[str, str]], kept_on_nodes: str | None = None
    ) -> None:
        super().__init__()
        self.title_text = title
        self.lines = lines
        # Node agents keep the output on the nodes: where, said in full (wrapped), since
        # no lines alone would read as commands that wrote nothing.
        self.kept_on_nodes = kept_on_nodes

    def compose(self) -> ComposeResult:
        with Vertical(id="output-dialog"):
            yield Label(Text(visible(self.title_text), style="bold"), id="dialog-title")
            if self.kept_on_nodes is not None:
                yield Static(Text(visible(self.kept_on_nodes)), id="output-kept")
            yield RichLog(id="output-log", wrap=False, markup=False, highlight=False)
            yield Static(Text("esc, q or o closes · ↑ ↓ pgup pgdn scroll"), classes="dialog-hint")

    def on_mount(self) -> None:
        log = self.query_one(RichLog)
        for prefix, text in self.lines:
            style = "red" if prefix.endswith("err") else ""
            log.write(Text.assemble((prefix, "dim"), " ", (visible(text), style)))
        if not self.lines and self.kept_on_nodes is None:
            log.write(Text("(no output)", style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)
