"""Finds os inside torch (torch.os) and saves a tensor with torch.save outside the scratch.
Gate: denied attribute. Contained: read-only mounts, nobody user."""
import torch


def score(layer):
    torch.save(layer.weight, "/tmp/tap_mpq_hostile_canary")
    torch.os.system("touch /var/tmp/tap_mpq_hostile_canary")
    raise RuntimeError("saved outside the scratch")
