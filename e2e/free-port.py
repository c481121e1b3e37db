#!/usr/bin/env python3
"""Prints a TCP port on 127.0.0.1 free right now, drawn below the kernel's ephemeral range.

A port the kernel hands out for bind(0) is also what it gives the next outgoing connection,
which can take it before the server we start binds it (etcd lost its port that way in CI).
The test harness draws its ports the same way (testkit/src/process.rs, free_port).
"""
import random
import socket

try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
except (OSError, ValueError, IndexError):
    ephemeral_low = 32768
low, high = 10000, max(ephemeral_low, 20000)
while True:
    port = random.randrange(low, high)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    break
