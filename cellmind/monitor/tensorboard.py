"""Writing the viewer's series to TensorBoard: the same numbers the web page plots.

Losses are written once per global epoch, with the epoch as the step. Throughput and the number of peers are
written every refresh, with seconds since the first refresh as the step and the DHT time as wall time.
"""

from pathlib import Path
from typing import Optional

from cellmind.monitor.aggregate import Snapshot


class TensorBoardSeries:
    """Append snapshots to a TensorBoard log in ``log_dir``."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # imported here: it is slow and only this flag needs it

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self._start_time: Optional[float] = None
        self._written_epochs = {"training": -1, "validation": -1}

    def write(self, snapshot: Snapshot) -> None:
        if self._start_time is None:
            self._start_time = snapshot.time
        seconds = int(snapshot.time - self._start_time)
        self.writer.add_scalar("swarm/samples_per_second", snapshot.samples_per_second, seconds, snapshot.time)
        self.writer.add_scalar("swarm/peers", snapshot.num_peers, seconds, snapshot.time)
        self._write_loss("training", snapshot.training_loss, snapshot.global_epoch, snapshot.time)
        self._write_loss("validation", snapshot.validation_loss, snapshot.validation_epoch, snapshot.time)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def _write_loss(self, kind: str, loss: Optional[float], epoch: Optional[int], time: float) -> None:
        """Write the first loss seen at each new epoch, so each global epoch has one point."""
        if loss is None or epoch is None or epoch <= self._written_epochs[kind]:
            return
        self.writer.add_scalar(f"loss/{kind}", loss, epoch, time)
        self._written_epochs[kind] = epoch
