"""Publish/subscribe for lifecycle events, on the thread that makes them.

Example: metrics subscribe to `manager.updates` and count loads; the native fast path subscribes to
`manager.prepare` and `manager.serving` to build and publish a version's plan. A subscriber that
raises is logged and skipped: an observer never stops a swap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

E = TypeVar("E")


class Topic(Generic[E]):
    """Subscribers of one kind of event, called in subscription order."""

    def __init__(self, name: str):
        self.name = name
        #: The subscribers; a plain list, so `topic.subscribers.append(fn)` subscribes too.
        self.subscribers: list[Callable[[E], object]] = []

    def subscribe(self, subscriber: Callable[[E], object]) -> Callable[[], None]:
        """Adds `subscriber`; returns the function that removes it."""
        self.subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self.subscribers:
                self.subscribers.remove(subscriber)

        return unsubscribe

    def publish(self, event: E) -> None:
        for subscriber in list(self.subscribers):
            try:
                subscriber(event)
            except Exception:  # an observer must not break the lifecycle
                log.exception("%s subscriber %r failed", self.name, subscriber)
