"""The exit statuses of every `fedvox` command: the one place they are defined
(the CLI's --help epilog, `fedvox runs`, `fedvox site status` and the service
files' restart rules all read them from here; README's table repeats them).

A service manager restarts on FAILED (the server resumes the run, a site
rejoins) but not on USAGE (a config fix is needed) nor INTERRUPTED (someone
stopped it on purpose: `fedvox runs stop`, Ctrl-C, SIGTERM)."""
from __future__ import annotations

import textwrap

OK = 0            # done (a run completed; a status query found what it looked for)
FAILED = 1        # the run or command failed: a federated run that did not complete, a process that died
USAGE = 2         # bad usage or bad input: one line on stderr naming the file or flag
NOT_RUNNING = 3   # `runs stop|log --follow` / `site status`: nothing is running there
REFUSED = 4       # `fedvox check|plan --strict`: the harmonisation check raised a flag
INTERRUPTED = 130  # stopped on purpose: Ctrl-C, SIGTERM, `fedvox runs stop`

TABLE = (
    (OK, "done"),
    (FAILED, "the run or command failed (a federated run that did not complete, a process that died)"),
    (USAGE, "bad usage or bad input, incl. a refused bundle or checkpoint (one line on stderr naming "
            "the file or flag; --debug shows the traceback)"),
    (NOT_RUNNING, "not running: `runs stop` / `runs log --follow` of a run no server is running, "
                  "`site status` of a site that is not up"),
    (REFUSED, "refused by the harmonisation check: `fedvox check|plan --strict` found a flag"),
    (INTERRUPTED, "interrupted on purpose (Ctrl-C, SIGTERM, `fedvox runs stop`)"),
)

HELP = "exit status:\n" + "\n".join(
    textwrap.fill(what, 92, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7) for code, what in TABLE)
