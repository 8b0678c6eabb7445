"""A tiny training peer for the monitor tests: a real DHT node, ``hivemind.Optimizer`` and ``MetricsPublisher``.

It trains a linear regression (a few parameters, little CPU) so that the monitor tests can run three peers and a
viewer on two cores. It publishes metrics with a short period and expiration, so a killed peer vanishes within
seconds, and writes its multiaddr to ``--address-file`` once its DHT node is up.

    python tests/monitor_peer.py --run-id test --name alpha --address-file /tmp/alpha.addr
    python tests/monitor_peer.py --run-id test --name beta --initial-peers $(cat /tmp/alpha.addr)
"""

import argparse
import os
import signal
import threading
import time
import zlib
from functools import partial
from pathlib import Path

import hivemind
import torch

from cellmind.metrics import MetricsPublisher
from cellmind.swarm import SwarmSettings, shutdown_dht, start_dht

BATCH_SIZE = 4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--initial-peers", nargs="*", default=[])
    parser.add_argument("--address-file", type=Path)
    parser.add_argument("--target-batch-size", type=int, default=24)
    parser.add_argument("--period", type=float, default=0.5, help="seconds between metrics records")
    parser.add_argument("--expiration", type=float, default=3.0, help="seconds a metrics record lives")
    parser.add_argument("--step-delay", type=float, default=0.1, help="seconds of sleep after each micro-step")
    parser.add_argument("--client-mode", action="store_true")
    return parser.parse_args()


def write_address(path: Path, address: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(address)
    os.replace(temporary, path)


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)  # every peer starts from the same parameters, as CellMind peers do
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    dht = start_dht(
        SwarmSettings(
            run_id=args.run_id,
            initial_peers=tuple(args.initial_peers),
            host_maddrs=("/ip4/127.0.0.1/tcp/0",),
            client_mode=args.client_mode,
        )
    )
    model = torch.nn.Linear(8, 1)
    optimizer = hivemind.Optimizer(
        dht=dht,
        run_id=args.run_id,
        params=model.parameters(),
        optimizer=partial(torch.optim.SGD, lr=0.05),
        batch_size_per_step=BATCH_SIZE,
        target_batch_size=args.target_batch_size,
        matchmaking_time=1.0,
        averaging_timeout=5.0,
        averager_opts=dict(request_timeout=0.5),  # below matchmaking_time, as Hivemind recommends
        tracker_opts=dict(metadata_expiration=2 * args.expiration),
        verbose=False,
    )
    publisher = MetricsPublisher(
        dht, args.run_id, name=args.name, device="cpu", client_mode=args.client_mode,
        period=args.period, expiration=args.expiration, target_batch_size=args.target_batch_size,
    )
    if args.address_file is not None:
        write_address(args.address_file, str(dht.get_visible_maddrs()[0]))

    generator = torch.Generator().manual_seed(zlib.crc32(args.name.encode()))
    true_weights = torch.linspace(-1, 1, 8)
    started, samples = time.monotonic(), 0
    try:
        while not stop.is_set():
            inputs = torch.randn(BATCH_SIZE, 8, generator=generator)
            loss = torch.nn.functional.mse_loss(model(inputs).squeeze(-1), inputs @ true_weights)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            samples += BATCH_SIZE
            publisher.report(
                local_epoch=optimizer.local_epoch,
                samples_per_second=samples / (time.monotonic() - started),
                loss=loss.item(),
                tokens_processed=samples * 8,
            )
            if optimizer.local_epoch % 2 == 0:
                publisher.report_validation(global_epoch=optimizer.local_epoch, loss=loss.item() * 1.1)
            time.sleep(args.step_delay)
    finally:
        publisher.shutdown()
        optimizer.shutdown()
        shutdown_dht(dht)


if __name__ == "__main__":
    main()
