#!/usr/bin/env python3
"""One file's bytes over one TCP connection, for bench/netns's `links` contender.

  ring.py serve FILE IP PORT    accept one connection on IP:PORT, send FILE (sendfile), close
  ring.py fetch IP PORT BYTES   connect, read to the end; exit 0 when exactly BYTES came

Every host serves the file to the host before it in a ring while every host fetches at
once, so each downlink carries one full-rate flow and each uplink one: what the shaped
links and this machine's cores carry when all downlinks are full, with no peer-to-peer
logic at all. Timed on the receiver (its end is when the last byte arrived, not when the
sender had handed its last bytes to its socket buffer).
"""
import socket
import sys

READ_CHUNK = 1 << 20


def serve(path, ip, port):
    with socket.create_server((ip, port)) as server:
        conn, _ = server.accept()
        with conn, open(path, "rb") as fh:
            conn.sendfile(fh)


def fetch(ip, port, expected):
    got = 0
    buf = bytearray(READ_CHUNK)
    with socket.create_connection((ip, port), timeout=600) as conn:
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            got += n
    if got != expected:
        print(f"ring.py: got {got} bytes, expected {expected}", file=sys.stderr)
        return 1
    return 0


def main(argv):
    if len(argv) == 5 and argv[1] == "serve":
        serve(argv[2], argv[3], int(argv[4]))
        return 0
    if len(argv) == 5 and argv[1] == "fetch":
        return fetch(argv[2], int(argv[3]), int(argv[4]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
