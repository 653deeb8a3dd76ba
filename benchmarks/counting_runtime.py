"""``python benchmarks/counting_runtime.py local ...``: ``python -m refresh local`` whose function app counts
its storage requests (a ``raw_request_hook`` on every client the App builds: ``<port> <method>``) and,
apart, the local runtime's own (lake watcher, blob trigger bindings, queue pollers: ``runtime <port>
<method>``, listings marked ``list``). The counts are written as JSON to ``$COUNT_FILE`` every 0.2 s.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COUNTS: dict[str, int] = {}
LOCK = threading.Lock()


def _count(request, prefix: str) -> None:
    http = request.http_request
    port = http.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[-1]
    key = f"{prefix}{port} {http.method}"
    if prefix and "comp=list" in http.url:
        key += " list"
    with LOCK:
        COUNTS[key] = COUNTS.get(key, 0) + 1


def hook(request) -> None:
    """The function app's requests: ``<port> <method>``."""
    _count(request, "")


def runtime_hook(request) -> None:
    """The local runtime's own requests (lake watcher, blob bindings, queue pollers): ``runtime <port> <method>``."""
    _count(request, "runtime ")


def dump(path: Path) -> None:
    while True:
        with LOCK:
            text = json.dumps(COUNTS)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        time.sleep(0.2)


def main() -> int:
    from refresh.core import context

    original = context.App.__init__

    def counted(self, *args, **kwargs) -> None:
        kwargs["client_kwargs"] = {**(kwargs.get("client_kwargs") or {}), "raw_request_hook": hook}
        original(self, *args, **kwargs)

    context.App.__init__ = counted
    from refresh.dev.local import host

    host.QUICK_RETRY["raw_request_hook"] = runtime_hook  # every client of the runtime gets these options
    threading.Thread(target=dump, args=(Path(os.environ["COUNT_FILE"]),), daemon=True).start()
    from refresh.__main__ import main as refresh_main

    return refresh_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
