"""Hold many DEALER connections to a daemon until stdin closes: ``connection_flood.py ADDRESS N``.

Each socket sends one ``status`` request and reconnects on its own whenever the
daemon drops it (libzmq's default), so the flood lasts as long as this process.
Prints ``connecting N`` once every socket is set up.
"""

from __future__ import annotations

import resource
import sys

import zmq

from sessionstore import protocol


def main(address: str, count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # two descriptors per socket
    context = zmq.Context()
    context.max_sockets = count + 16
    sockets = []
    for i in range(count):
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        sock.send(protocol.encode_request(f"flood-{i}", "status"), zmq.NOBLOCK)
        sockets.append(sock)
    print(f"connecting {count}", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)
    for sock in sockets:
        sock.close()
    context.term()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
