"""CellMind: train a mini-GPT together on the devices you already own, over a Hivemind swarm."""

__version__ = "0.1.0"
