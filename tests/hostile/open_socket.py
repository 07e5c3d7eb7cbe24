"""Connects to a TCP server on the host's loopback (port 48765) and to the outside world.
Gate: import of socket. Contained: a fresh network namespace has no usable interface."""
import socket


def score(layer):
    for address in (("127.0.0.1", 48765), ("1.1.1.1", 53)):
        try:
            socket.create_connection(address, timeout=2).sendall(b"pwned")
        except OSError:
            pass
    raise RuntimeError("no connection got through")
