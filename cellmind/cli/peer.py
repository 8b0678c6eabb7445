"""The `cellmind-peer` command (placeholder until its module lands)."""

import argparse


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="cellmind-peer")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
