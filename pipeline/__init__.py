"""pixverse-batch: lip-sync videos in bulk through the PixVerse API, resumably."""

__version__ = "0.1.0"
