"""What the hostile proxies in tests/hostile/ try to create or steal (shared by the sandbox tests)."""
import os
import pwd
from pathlib import Path

import torch

CANARY = "tap_mpq_hostile_canary"
CANARIES = [Path("/tmp", CANARY), Path("/var/tmp", CANARY), Path("/dev/shm", CANARY),
            Path(pwd.getpwuid(0).pw_dir, CANARY), Path(torch.__file__).parent.parent / CANARY]
"""Outside any scratch dir: none of these may exist after a hostile proxy ran."""
SECRET = "sk-hostile-test-secret-4242"
SECRET_FILE = Path(pwd.getpwuid(os.getuid()).pw_dir, ".tap_mpq_hostile_secret")
ALIVE = "def score(layer):\n    raise ValueError('alive at depth %d' % layer.depth)\n"
"""A proxy whose error shows that a slot still serves requests (and costs no fitness)."""
