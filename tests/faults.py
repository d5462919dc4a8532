"""A TCP forwarder in front of a real service (PostgreSQL, Redis) that a test can cut:
the service is then away for the processes that reach it through the forwarder, as
after a network partition, while the test still reaches it directly. It can also slow
every answer down (``delay_s``), as a loaded database would."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class Proxy:
    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.cut_off = False
        self.delay_s = 0.0
        """Added before each chunk the service sends back."""
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.cut_off:
                    client.close()
                    upstream.close()
                    return
                self.sockets += [client, upstream]
            for a, b, slowed in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(a, b, slowed), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slowed: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if slowed and self.delay_s:
                    time.sleep(self.delay_s)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Refuse new connections and reset the open ones: the service is away, as if
        it had crashed or been restarted elsewhere."""
        with self.lock:
            self.cut_off = True
            self.listener.close()
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    s.close()
