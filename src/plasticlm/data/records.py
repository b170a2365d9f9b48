"""The records every data module passes around: a document, and the log of what was skipped."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("plasticlm.data")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    cites: tuple[str, ...] = ()
    """Ids of the documents this one cites (linked-articles graphs)."""
    translation: str | None = None
    """The German side of an English-German pair (``text`` holds the English)."""
    group: str | None = None
    """A name shared by the pieces of one source (say, a long page cut into documents): their
    split is drawn from it rather than from each piece's text, so no source straddles two splits."""


@dataclass
class SkipLog:
    """Counts of skipped inputs by reason, with the first few places for each, all logged."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def skip(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(where)
            # The first few of each reason are warnings; the rest would flood a log (see summary()).
            log.warning("skipped %s: %s", where, reason)
        else:
            log.debug("skipped %s: %s", where, reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self) -> dict:
        return {r: {"count": n, "examples": self.examples.get(r, [])} for r, n in sorted(self.counts.items())}

    def summary(self) -> str:
        if not self.counts:
            return "nothing skipped"
        return "skipped " + ", ".join(f"{n} ({r}; e.g. {self.examples[r][0]})" for r, n in sorted(self.counts.items()))
