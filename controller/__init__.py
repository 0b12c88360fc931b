"""tzero controller: sessions, copying, the backup stream, restore."""

__version__ = "0.1.0"
