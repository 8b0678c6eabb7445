"""Peak memory of ``cellmind generate`` with the 23M model, with and without the KV cache.

    python bench/memory.py

The seeded, untrained 23M-parameter model is saved as a checkpoint of the benchmark corpus's run (memory does
not depend on the weights' values), and ``cellmind generate`` continues a Korean prompt by 256 tokens from it,
as a user runs it. Its process is sampled every 50 ms: RSS and PSS (there is one process, so they nearly agree).
The training peers' memory is measured by ``bench/joining.py``, which runs a swarm of the same model.
"""

import argparse
import sys

from common import WORK_DIR, Processes, TreeSampler, cellmind_command, print_machine, print_table
from corpus import ensure_corpus, write_config, write_initial_checkpoint

OUT_DIR = WORK_DIR / "memory"
MIB = 1 << 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()
    print_machine("Peak memory of cellmind generate (23M model)", threads="1")
    paths = ensure_corpus()
    config = write_config(OUT_DIR / "config.json", paths)
    checkpoint = write_initial_checkpoint(OUT_DIR / "checkpoints", config, paths)
    rows = []
    with Processes() as processes:
        for name, extra in (("cellmind generate", []), ("cellmind generate --no-cache", ["--no-cache"])):
            command = cellmind_command("generate", "--config", str(config), "--checkpoint", str(checkpoint),
                                       "--prompt", "오늘 날씨 어때?", "--max-new-tokens", str(args.new_tokens),
                                       "--temperature", "0.8", "--seed", "0", *extra)
            process = processes.start(command, OUT_DIR / f"generate{'-'.join(extra)}.log")
            sampler = TreeSampler(process, period=0.05, memory=True)
            process.wait(timeout=1800)
            sampler.stop()
            if process.returncode != 0:
                raise RuntimeError(f"{name} failed; see {process.log_path}")
            rows.append([name, sampler.peak_rss / MIB, sampler.peak_pss / MIB])
    size = checkpoint.stat().st_size / MIB
    print(f"checkpoint {checkpoint}: {size:.0f} MiB (fp32 model, no optimizer state); {args.new_tokens} new tokens")
    print_table(["command", "peak RSS (MiB)", "peak PSS (MiB)"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
