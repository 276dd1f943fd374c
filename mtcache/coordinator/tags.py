"""Tags: invalidating every entry that carries a tag, on every host, without a key scan (issue 13).

``set``, ``add``, ``set_many`` and ``get_or_compute`` take ``tags=``; ``invalidate_tags(*tags)``
stamps each tag with the hybrid clock and raises the tag's stamp in Redis (``<prefix>tag:<tag>``,
never lowered, kept without expiry). An entry whose stamp is older than the stamp of one of its
tags is dead on every tier:

- the invalidating host drops the L1 entries that carry the tag at once (an index tag -> keys),
  which moves their versions: near copies and the mirror follow, at no cost on the read path;
- other hosts drop theirs when the stream entry (op ``tag``) arrives, within the propagation
  bound; a host whose reader lost the stream drops its whole L1 as for any write, and forgets
  the tag stamps it knew;
- a record read from Redis is checked against its tags' stamps (known from the stream, or read
  from Redis the first time this coordinator meets the tag), which covers hosts that were offline
  and new coordinators;
- a computation whose lease began before one of its tags was invalidated is not stored.

Cost: one small Redis write and one stream entry per invalidated tag; no key scan anywhere.
"""

from __future__ import annotations

__all__ = ["MAX_KNOWN_TAGS", "TagIndex", "TagStamps"]

#: Tag stamps kept in memory; past this the map is emptied and refilled from Redis as tags are met.
MAX_KNOWN_TAGS = 100_000


class TagIndex:
    """Which L1 keys carry which tags."""

    def __init__(self) -> None:
        self._by_tag: dict[str, set[str]] = {}
        self._by_key: dict[str, tuple[str, ...]] = {}

    def set(self, key: str, tags: tuple[str, ...]) -> None:
        """``key`` now carries ``tags`` (replacing what it carried)."""
        self.discard(key)
        if tags:
            self._by_key[key] = tags
            for tag in tags:
                self._by_tag.setdefault(tag, set()).add(key)

    def discard(self, key: str) -> None:
        """``key`` left L1."""
        for tag in self._by_key.pop(key, ()):
            keys = self._by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tag[tag]

    def keys_of(self, tag: str) -> list[str]:
        """The keys that carry ``tag``."""
        return list(self._by_tag.get(tag, ()))

    def tags_of(self, key: str) -> tuple[str, ...]:
        """The tags ``key`` carries."""
        return self._by_key.get(key, ())

    def clear(self) -> None:
        """L1 was emptied."""
        self._by_tag.clear()
        self._by_key.clear()


class TagStamps:
    """The invalidation stamp of each tag this coordinator knows (0: never invalidated)."""

    def __init__(self) -> None:
        self._known: dict[str, int] = {}

    def raise_to(self, tag: str, stamp: int) -> bool:
        """``tag`` was invalidated at ``stamp``; True if that is newer than what was known."""
        if stamp <= self._known.get(tag, -1):
            return False
        if len(self._known) >= MAX_KNOWN_TAGS and tag not in self._known:
            self._known.clear()
        self._known[tag] = stamp
        return True

    def unknown(self, tags: tuple[str, ...]) -> list[str]:
        """Those of ``tags`` whose stamp must be read from Redis first."""
        return [tag for tag in tags if tag not in self._known]

    def dead(self, tags: tuple[str, ...], stamp: int) -> bool:
        """Whether an entry written at ``stamp`` with ``tags`` was invalidated since (an unknown
        tag counts as never invalidated: read it first, see :meth:`unknown`)."""
        known = self._known
        return any(known.get(tag, 0) > stamp for tag in tags)

    def forget(self) -> None:
        """The stream was lost: what was known may be behind; read tags again as they are met."""
        self._known.clear()
