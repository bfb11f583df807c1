"""The demo refuses a taken port and cleans up on SIGTERM as on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from plugin.demo import ensure_port_free, sigterm_as_interrupt, stop_servers


def test_a_taken_port_is_refused_with_a_way_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"port {port} is already in use.*--port"):
            ensure_port_free(port)
    ensure_port_free(port)  # free again once the other server is gone


def test_sigterm_becomes_keyboard_interrupt_only_inside_the_block() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler in this thread right after the call
    assert signal.getsignal(signal.SIGTERM) == before


class _ServerSignalledWhileStopping:
    """Stands in for a demo server; a second SIGTERM and a Ctrl-C arrive while it stops."""

    def __init__(self) -> None:
        self.stopped = False

    def stop(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        self.stopped = True


def test_a_second_signal_during_shutdown_does_not_leave_a_server_running() -> None:
    backend, label_studio = _ServerSignalledWhileStopping(), _ServerSignalledWhileStopping()
    with sigterm_as_interrupt():
        stop_servers(backend, label_studio)
        handler = signal.getsignal(signal.SIGTERM)
    assert backend.stopped
    assert label_studio.stopped
    assert handler not in (signal.SIG_IGN, signal.SIG_DFL)  # the demo's SIGTERM handling is back after shutdown
