"""Send one stage's messages and gather the replies, handling each as it lands
(send_and_gather), and the Stage that round loop and aggregation modes share.

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

from fl_common.flower import objects_due_by

POLL_S = 0.05  # a pull of a pending reply is one local request to the SuperLink: cheap


def send_and_gather(grid, messages: Iterable, timeout: float, poll: float = POLL_S,
                    on_reply: Callable | None = None, sent: dict | None = None) -> list:
    """Push ``messages``, then pull until every one has a reply or ``timeout``
    seconds have passed; ``on_reply(message)`` runs for each reply in arrival
    order. Returns the replies (error replies included). ``sent``, if given, is
    filled with {message id: destination node}: an error reply that Flower makes
    itself names no site, only the message it answers.

    A pull's wait for a reply's objects ends at the deadline too (objects_due_by),
    and once past it one last pull takes the replies that landed meanwhile: one
    site dying halfway through its upload must not cost the others their replies."""
    messages = list(messages)
    ids = grid.push_messages(messages)
    if sent is not None:
        sent.update({i: m.metadata.dst_node_id for i, m in zip(ids, messages) if i})
    pending = {i for i in ids if i}
    deadline = time.monotonic() + float(timeout)
    replies = []
    with objects_due_by(deadline):
        while pending:
            late = time.monotonic() >= deadline
            for m in grid.pull_messages(list(pending)):
                pending.discard(m.metadata.reply_to_message_id)
                replies.append(m)
                if on_reply is not None:
                    on_reply(m)
            if not pending or late:
                break
            time.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))
    return replies


class Stage:
    """Send-and-gather over a Grid, plus what the replies taught about who is who.

    The round loop and the aggregation modes share one Stage, so neither
    reaches into the other for the grid or the node -> site map."""

    def __init__(self, grid, poll: float = POLL_S):
        self.grid, self.poll = grid, poll
        self.node_site: dict[int, str] = {}

    def nodes(self) -> list[int]:
        return sorted(self.grid.get_node_ids())

    def wait_for_nodes(self, n: int, timeout: float, every: float = 1.0, expected: int = 0,
                       grace: float = 0.0) -> list[int]:
        """At least ``n`` connected nodes within ``timeout``; once there are, up to
        ``grace`` s more for all ``expected`` ones: sites started together connect
        seconds apart, and one that misses the start misses the plan's fingerprint
        and the first secure-aggregation setup (it is keyed in only at a later round)."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.nodes()
            if len(nodes) >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(nodes)} of the {n} required sites connected "
                                   f"within {timeout:.0f} s")
            time.sleep(every)
        until = min(time.monotonic() + grace, deadline)
        while len(nodes) < expected and time.monotonic() < until:
            time.sleep(min(every, max(until - time.monotonic(), 0.0)))
            nodes = self.nodes()
        return nodes

    def learn(self, node: int, site: str) -> None:
        self.node_site[node] = str(site)

    def site(self, node: int) -> str:
        return self.node_site.get(node, str(node))

    def gather(self, messages: list, timeout: float, on_reply: Callable | None = None,
               sent: dict | None = None) -> list:
        """One push and its pulls (the one place a bench times a stage)."""
        return send_and_gather(self.grid, messages, timeout, self.poll, on_reply, sent)

    def send(self, messages: list, timeout: float, on_reply: Callable | None = None,
             site_of: Callable | None = None) -> tuple[dict, list]:
        """One stage -> ({node: good reply}, [{node, site, error}]). ``site_of(reply)``
        names the replying site (None: not named); ``on_reply(node, reply)`` runs for
        each good reply as it lands. Every addressed node ends in exactly one of the two."""
        nodes = {m.metadata.dst_node_id for m in messages}
        ok, failed, sent = {}, [], {}

        def land(m):
            node = m.metadata.src_node_id
            if m.has_error():
                # an error the SuperLink or the Grid made answers for the addressed node
                node = node if node in nodes else sent.get(m.metadata.reply_to_message_id, node)
                failed.append({"node": node, "error": m.error.reason})
                return
            site = site_of(m) if site_of is not None else None
            if site is not None:
                self.learn(node, site)
            ok[node] = m
            if on_reply is not None:
                on_reply(node, m)

        self.gather(messages, timeout, on_reply=land, sent=sent)
        # an error answering no message of this stage explains nothing about one node:
        # it is named beside the nodes that gave no reply (never in place of their own)
        foreign = sorted({f["error"] for f in failed if f["node"] not in nodes})
        failed = [f for f in failed if f["node"] in nodes]
        answered = set(ok) | {f["node"] for f in failed}
        why = "no reply before the timeout" + (f" (unattributed errors: {'; '.join(foreign)})" if foreign else "")
        failed += [{"node": n, "error": why} for n in sorted(nodes) if n not in answered]
        for f in failed:
            f["site"] = self.site(f["node"])
        return ok, failed
