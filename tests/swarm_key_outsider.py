"""Check, in a fresh process, that a DHT node without the swarm key reads and writes nothing of a keyed run.

Run as ``python tests/swarm_key_outsider.py ADDRESS KEY_FILE RUN_ID``; exits 0 when every check holds. It runs
apart from pytest because a hivemind.DHT forks its node process, and forking the test process, whose threads
read the peers' output, can deadlock the child.
"""

import sys
from pathlib import Path

import hivemind

from cellmind.swarm import manifest_key
from cellmind.swarm_key import load_swarm_key


def main(address: str, key_path: str, run_id: str) -> int:
    key = load_swarm_key(Path(key_path))
    outsider = hivemind.DHT(initial_peers=[address], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True,
                            ensure_bootstrap_success=False, client_mode=True)
    insider = hivemind.DHT(initial_peers=[address], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True,
                           client_mode=True, authorizer=key.authorizer())
    try:
        namespaced = manifest_key(key.run_namespace(run_id))
        assert insider.get(namespaced, latest=True) is not None, "the insider cannot read the manifest"
        for dht_key in (namespaced, manifest_key(run_id), f"{key.run_namespace(run_id)}_progress"):
            assert outsider.get(dht_key, latest=True) is None, f"the outsider read {dht_key}"
        outsider.store(namespaced, "poison", hivemind.utils.get_dht_time() + 60)  # lands in its own node only
        assert insider.get(namespaced, latest=True).value != "poison", "the outsider's record reached the swarm"
    finally:
        outsider.shutdown()
        insider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
