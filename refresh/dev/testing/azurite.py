"""Start and stop the project's pinned Azurite (``package.json``) on free loopback ports.

Used by the tests, the benchmarks and ``python -m refresh local``. In-memory, no telemetry.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from refresh.core.settings import APP_ROOT

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteError(RuntimeError):
    """Azurite could not be found or did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def azurite_binary(root: Path = APP_ROOT) -> Path:
    """The pinned Azurite installed by ``npm ci`` in the project root."""
    path = root / "node_modules" / ".bin" / "azurite"
    if not path.exists():
        raise AzuriteError(f"{path} not found: run 'npm ci' in {root} to install the pinned Azurite")
    return path


@dataclass
class Azurite:
    """A running Azurite with blob, queue and table services on their own free ports."""

    blob_port: int = 0
    queue_port: int = 0
    table_port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{ACCOUNT};"
        )

    @property
    def blob_url(self) -> str:
        return f"http://127.0.0.1:{self.blob_port}"

    def deltalake_options(self) -> dict[str, str]:
        """Storage options for ``deltalake`` (with AZURITE_BLOB_STORAGE_URL set by :meth:`start`)."""
        return {"account_name": ACCOUNT, "use_emulator": "true", "allow_http": "true"}

    def start(self, timeout: float = 30.0) -> Azurite:
        binary = azurite_binary()
        node = shutil.which("node")
        if node is None:
            raise AzuriteError("node is not on PATH; Azurite needs Node.js")
        for attempt in range(3):
            self.blob_port, self.queue_port, self.table_port = free_port(), free_port(), free_port()
            if len({self.blob_port, self.queue_port, self.table_port}) < 3:
                continue
            args = [
                str(binary), "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry",
                "--silent", "--loose",
                "--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port),
                "--queueHost", "127.0.0.1", "--queuePort", str(self.queue_port),
                "--tableHost", "127.0.0.1", "--tablePort", str(self.table_port),
            ]
            self.process = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ready(timeout):
                os.environ["AZURITE_BLOB_STORAGE_URL"] = self.blob_url
                return self
            self.stop()
            if attempt == 2:
                break
        raise AzuriteError("Azurite did not start listening on its ports")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pending = {self.blob_port, self.queue_port, self.table_port}
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            for port in list(pending):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        pending.discard(port)
                except OSError:
                    pass
            if not pending:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
