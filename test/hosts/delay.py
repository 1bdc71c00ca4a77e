#!/usr/bin/env python3
"""A delayed link for multi-host tests (the kernel has no netem): forwards Ethernet frames between
two interfaces with AF_PACKET raw sockets, holding each frame DELAY ms in each direction.
Usage: delay.py IF_A IF_B DELAY_MS"""
import heapq
import select
import socket
import sys
import time

a, b, delay = sys.argv[1], sys.argv[2], float(sys.argv[3]) / 1000.0
ETH_P_ALL = 3
PACKET_OUTGOING = 4


def raw(ifname):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


sa, sb = raw(a), raw(b)
other = {sa: sb, sb: sa}
queue = []
seq = 0
print("ready", flush=True)
while True:
    now = time.monotonic()
    while queue and queue[0][0] <= now:
        _, _, out, frame = heapq.heappop(queue)
        try:
            out.send(frame)
        except OSError:
            pass
    timeout = max(0.0, queue[0][0] - now) if queue else 1.0
    ready, _, _ = select.select([sa, sb], [], [], timeout)
    for s in ready:
        while True:
            try:
                frame, addr = s.recvfrom(65535)
            except BlockingIOError:
                break
            if addr[2] == PACKET_OUTGOING:
                continue
            seq += 1
            heapq.heappush(queue, (time.monotonic() + delay, seq, other[s], frame))
