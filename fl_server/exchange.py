"""Send one stage's messages and gather the replies, handling each as it lands.

Flower's Grid.send_and_receive pulls every 3 s, so a stage whose last reply
arrives just after a pull idles up to 3 s more (about 1.5 s per stage, 3 s per
round on average). Here the pull interval is short (a pull of nothing is one
small call to the local SuperLink), and the caller may start on each reply as
it arrives: secure aggregation checks and sums a masked vector while the
other sites are still training.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

POLL_S = 0.2


def send_and_gather(grid, messages: Iterable, timeout: float, poll: float = POLL_S,
                    on_reply: Callable | None = None) -> list:
    """Push ``messages``, then pull until every one has a reply or ``timeout``
    seconds have passed; ``on_reply(message)`` runs for each reply in arrival
    order. Returns the replies (error replies included)."""
    pending = {i for i in grid.push_messages(list(messages)) if i}
    deadline = time.monotonic() + float(timeout)
    replies = []
    while pending:
        for m in grid.pull_messages(list(pending)):
            pending.discard(m.metadata.reply_to_message_id)
            replies.append(m)
            if on_reply is not None:
                on_reply(m)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))
    return replies
