"""The example manifest and its sample media, shipped as package data so that an installed
`pixverse-batch demo` (pip, pipx) finds them; `manifests/make_media.py` regenerates the media."""

from pathlib import Path

EXAMPLE_MANIFEST = Path(__file__).resolve().parent / "example.yaml"
