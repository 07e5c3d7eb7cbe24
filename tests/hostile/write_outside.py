"""Writes files outside its scratch dir (host /tmp, /var/tmp, /dev/shm, root's home, the venv).
Gate: import of os. Contained: read-only mounts / private tmpfs / nobody user; nothing appears."""
import os
import pwd

import torch

NAME = "tap_mpq_hostile_canary"


def score(layer):
    site_packages = os.path.dirname(os.path.dirname(torch.__file__))
    wrote = []
    for folder in ("/tmp", "/var/tmp", "/dev/shm", pwd.getpwuid(0).pw_dir, site_packages):
        try:
            with open(os.path.join(folder, NAME), "w") as handle:
                handle.write("pwned")
            wrote.append(folder)
        except OSError:
            pass
    raise RuntimeError(f"wrote into {wrote}")
