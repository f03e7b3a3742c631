"""Network audit for end-to-end tests (docs/security.md §3): a test that puts this folder on ``PYTHONPATH`` and names
a file in ``$LMM_NET_AUDIT`` gets one line there per name lookup or connection the process (and every process it
starts) attempts — Python's audit hooks see them all, whichever library makes them. Nothing is blocked: the test
reads the file and judges. Python imports ``sitecustomize`` by itself at start-up."""

import os
import sys

_LOG = os.environ.get("LMM_NET_AUDIT")
_EVENTS = {"socket.connect": 1, "socket.getaddrinfo": 0, "socket.sendto": 2, "socket.gethostbyname": 0}


def _audit(event, args):
    where = _EVENTS.get(event)
    if where is None:
        return
    try:
        with open(_LOG, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\t{event}\t{args[where]!r}\n")
    except Exception:  # an audit must never change what it watches
        pass


if _LOG:
    sys.addaudithook(_audit)
