#!/usr/bin/env python3
"""Turns transmit checksum offload off on interfaces (what `ethtool -K IF tx off` does), so that
frames a userspace forwarder copies carry complete checksums. Usage: txcsum.py IF [IF ...]"""
import ctypes
import fcntl
import socket
import struct
import sys

SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x00000017

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for ifname in sys.argv[1:]:
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, 0))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)) + b"\0" * 16
    fcntl.ioctl(s, SIOCETHTOOL, ifreq)
