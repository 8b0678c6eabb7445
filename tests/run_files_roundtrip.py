"""Serve a large tokenizer file from one DHT node and download it through another, in a fresh process.

Run as ``python tests/run_files_roundtrip.py TOKENIZER_FILE``; exits 0 when the downloaded bytes are the file's.
It runs apart from pytest because a hivemind.DHT forks its node process, and forking the test process, whose
threads read other peers' output, can deadlock the child.
"""

import sys
from functools import partial
from pathlib import Path

import hivemind

from cellmind.config import Config
from cellmind.run_files import _download, handler_name, portable_config, serve_run_files


def main(tokenizer_path: str) -> int:
    server = hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    client = hivemind.DHT(initial_peers=[str(maddr) for maddr in server.get_visible_maddrs()],
                          host_maddrs=["/ip4/127.0.0.1/tcp/0"], client_mode=True, start=True)
    try:
        serve_run_files(server, "roundtrip", Config(), Path(tokenizer_path), member_check=None)
        download = partial(_download, peer_id=server.peer_id.to_base58(), name=handler_name("roundtrip"))
        files = client.run_coroutine(download, return_future=True).result(timeout=60)
        assert files.tokenizer == Path(tokenizer_path).read_bytes(), "the downloaded tokenizer differs"
        assert files.config == portable_config(Config()), "the downloaded config differs"
    finally:
        client.shutdown()
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
