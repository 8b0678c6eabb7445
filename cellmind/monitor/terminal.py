"""The terminal view: a summary of the swarm and a table of peers, redrawn in place by ``rich.live``.

Only plain characters and rich's box drawing are used, so the view works over SSH and in any UTF-8 terminal.
"""

from typing import Optional

from rich.console import Group
from rich.table import Table
from rich.text import Text

from cellmind.i18n import _
from cellmind.monitor.aggregate import Snapshot


def format_duration(seconds: Optional[float]) -> str:
    """Return ``seconds`` as ``42s``, ``3m05s`` or ``2h07m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_number(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_loss(value: Optional[float]) -> str:
    """Return four significant digits, so that small losses late in training still differ."""
    return "-" if value is None else f"{value:.4g}"


def render(snapshot: Snapshot) -> Group:
    """Build the whole view of ``snapshot``."""
    return Group(_summary(snapshot), _peer_table(snapshot), _footer(snapshot))


def _summary(snapshot: Snapshot) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    target = "?" if snapshot.target_batch_size is None else str(snapshot.target_batch_size)
    table.add_row(_("Run"), snapshot.run_id)
    table.add_row(_("Global epoch"), str(snapshot.global_epoch))
    table.add_row(
        _("Samples toward next step"),
        "{samples} / {target}".format(samples=snapshot.samples_accumulated, target=target),
    )
    table.add_row(_("Next global step in"), format_duration(snapshot.eta_seconds))
    table.add_row(_("Swarm samples/s"), format_number(snapshot.samples_per_second, 1))
    table.add_row(_("Training loss"), format_loss(snapshot.training_loss))
    if snapshot.validation_loss is not None:
        table.add_row(
            _("Validation loss"),
            _("{loss} (global epoch {epoch})").format(
                loss=format_loss(snapshot.validation_loss), epoch=snapshot.validation_epoch
            ),
        )
    return table


def _peer_table(snapshot: Snapshot) -> Table:
    table = Table(title=_("Peers: {count}").format(count=snapshot.num_peers), title_justify="left", expand=False)
    for header, justify in (
        (_("Peer ID"), "left"),
        (_("Name"), "left"),
        (_("Device"), "left"),
        (_("Local epoch"), "right"),
        (_("Samples/s"), "right"),
        (_("Loss"), "right"),
        (_("Last report"), "right"),
        (_("Client mode"), "center"),
    ):
        table.add_column(header, justify=justify)
    for row in snapshot.peers:
        table.add_row(
            row.short_id,
            Text(row.name),  # Text, so that a peer's name cannot inject rich markup
            Text(row.device),
            str(row.local_epoch),
            format_number(row.samples_per_second, 1),
            format_loss(row.loss),
            _("{duration} ago").format(duration=format_duration(row.age)),
            _("yes") if row.client_mode else _("no"),
        )
    return table


def _footer(snapshot: Snapshot) -> Text:
    rejected = snapshot.rejected
    if rejected.malformed == 0 and rejected.forged == 0:
        return Text("")
    return Text(
        _("Ignored records: {malformed} malformed, {forged} with an invalid signature").format(
            malformed=rejected.malformed, forged=rejected.forged
        ),
        style="yellow",
    )
