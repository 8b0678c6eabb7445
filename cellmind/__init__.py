"""CellMind: train a mini-GPT together on the devices you already own, over a Hivemind swarm."""

import os

__version__ = "0.1.0"

# Hivemind sets torch's sharing strategy from this variable when it is imported, by default to "file_system". That
# strategy names each shared tensor in /dev/shm and keeps a torch_shm_manager process to delete the files, which
# costs a peer about 70 MiB. When that process dies together with the peer (a closed terminal sends SIGHUP to the
# whole process group), the files outlive both and hold their memory until the next reboot. With
# "file_descriptor" the kernel frees a shared tensor once its last process closes it. A user may still choose the
# other strategy through the variable.
os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")
