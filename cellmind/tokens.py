"""Placeholder and special tokens shared by the cleaning rules, the tokenizer and the dataset.

Placeholders stand for what cleaning removes from text (names, links, photos ...). The tokenizer makes each of them
a single user-defined piece. Cleaning lowercases user text before it inserts them, so a placeholder typed by a user
(``<NAME>``) becomes ``<name>`` and is never read as the real one. Special tokens are SentencePiece control
symbols: ``encode()`` never produces them from text, so typing ``<|endoftext|>`` cannot end a record early.
"""

NAME = "<NAME>"
URL = "<URL>"
EMAIL = "<EMAIL>"
PHONE = "<PHONE>"
PHOTO = "<PHOTO>"
MOVIE = "<MOVIE>"
EMOJI = "<EMOJI>"

PLACEHOLDERS = (NAME, URL, EMAIL, PHONE, PHOTO, MOVIE, EMOJI)

START = "<|start|>"
END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"

SPECIAL_TOKENS = (START, END_OF_TEXT, PAD)
