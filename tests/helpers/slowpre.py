#!/usr/bin/env python3
"""``slowpre.py MARKER SECONDS``: create MARKER (every earlier quiescer now holds its lock), then
sleep SECONDS — but exit as soon as the parent (the agent) is gone, leaving nothing behind."""

import os
import sys
import time

marker, seconds = sys.argv[1], float(sys.argv[2])
parent = os.getppid()
with open(marker, "w") as f:
    f.write(f"{os.getpid()} {time.time():.6f}\n")
end = time.monotonic() + seconds
while time.monotonic() < end and os.getppid() == parent:
    time.sleep(0.02)
