"""``cellmind monitor``: reading the run's DHT records, aggregating them, and showing them.

- :mod:`cellmind.monitor.aggregate` turns records into a :class:`~cellmind.monitor.aggregate.Snapshot` (no network);
- :mod:`cellmind.monitor.validation` counts the records the viewer's DHT node rejects;
- :mod:`cellmind.monitor.reader` is the viewer's client-mode DHT node;
- :mod:`cellmind.monitor.history` and :mod:`cellmind.monitor.tensorboard` keep the series;
- :mod:`cellmind.monitor.terminal` and :mod:`cellmind.monitor.web` show them;
- :mod:`cellmind.monitor.viewer` is the refresh loop that ties them together.
"""
