"""Reading KakaoTalk exports (Windows PC, Android, iOS TXT and CSV), plain text and JSON Lines into one table.

``read_exports`` reads every input before anything else happens, and raises InputFormatError on the first file
that is empty, binary or unreadable. Each file's format is chosen from its content (see ``detect``). Every parser
returns the same table: timestamp, sender, text, kind (message or system), one row per record.
"""

from cellmind.exports.reader import read_export, read_exports
from cellmind.exports.table import ChatExport

__all__ = ["ChatExport", "read_export", "read_exports"]
