"""report.html for tests: a run that gives the page something to show, and a reader of the page.

`mixed_run` runs the report tests' manifest (four failures, three results) against the
simulator under a key of its own; `Page.parse` takes the page apart with the
stdlib's HTML parser: cards, every link, the style and the script.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline.simulator import serve
from tests.harness import fast_sim, run_once
from tests.test_reports import mixed_project

KEY = "sk-page-7f3a9c2e5b1d4f8a6c0e"  # the run's API key: never on the page
LINK_ATTRIBUTES = frozenset({"src", "href", "data-result", "data-source", "poster"})


async def mixed_run(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """The mixed manifest run once: 3 done, 4 failed. Returns the output folder and
    report.json. (No suspect here: which result the simulator's `garbled_results` spoils
    is not certain when a status call is retried; tests make theirs by hand.)"""
    manifest = mixed_project(tmp_path)
    out = tmp_path / "out"
    config = fast_sim(moderated_filenames=frozenset({"bad.wav"}), api_keys=frozenset({KEY}))
    async with serve(config) as sim:
        await run_once(sim, manifest, out, api_key=KEY)
    return out, json.loads((out / "report.json").read_text(encoding="utf-8"))


@dataclass
class Card:
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.attrs["data-id"]

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


@dataclass
class Page:
    cards: list[Card] = field(default_factory=list)
    links: list[tuple[str, str, str]] = field(default_factory=list)  # (tag, attribute, value)
    ids: set[str] = field(default_factory=set)
    style: str = ""
    script: str = ""
    imgs: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Page:
        reader = _Reader()
        reader.feed(text)
        reader.close()
        return reader.page

    def card(self, job_id: str) -> Card:
        (found,) = [c for c in self.cards if c.id == job_id]
        return found

    def local_targets(self, out: Path) -> list[Path]:
        """The file behind every link that is not an in-page anchor; raises on any link
        with a scheme or a host (the page must need no network)."""
        targets = []
        for tag, name, value in self.links:
            url = urlsplit(value)
            assert not url.scheme, (tag, name, value)
            assert not url.netloc, (tag, name, value)
            if value.startswith("#"):
                assert value[1:] in self.ids, value
                continue
            targets.append(out / unquote(url.path))
        return targets


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._card: Card | None = None
        self._depth = 0  # open <article> elements inside the current card
        self._raw: str | None = None  # "style" or "script" while inside one

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if "id" in values:
            self.page.ids.add(values["id"])
        for name, value in values.items():
            if name in LINK_ATTRIBUTES:
                self.page.links.append((tag, name, value))
        if tag == "img":
            self.page.imgs.append(values)
        if tag in ("style", "script"):
            self._raw = tag
        if tag == "article":
            if self._card is None and "card" in values.get("class", "").split():
                self._card = Card(values)
                self.page.cards.append(self._card)
            self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._raw = None
        if tag == "article":
            self._depth -= 1
            if self._depth == 0:
                self._card = None

    def handle_data(self, data: str) -> None:
        if self._raw == "style":
            self.page.style += data
        elif self._raw == "script":
            self.page.script += data
        elif self._card is not None:
            self._card.text.append(data)
