"""Reads API keys from the environment and the secret file in root's home, and leaks them in its error.
Gate: import of os. Contained: scrubbed environment, home hidden, nobody user; the error holds no secret."""
import os
import pwd


def score(layer):
    found = {k: v for k, v in os.environ.items() if "KEY" in k or "SECRET" in k or "TOKEN" in k}
    home = pwd.getpwuid(0).pw_dir
    for name in (".ssh/id_rsa", ".ssh/id_ed25519", ".tap_mpq_hostile_secret"):
        try:
            with open(os.path.join(home, name)) as handle:
                found[name] = handle.read()
        except OSError:
            pass
    raise RuntimeError(f"leaked {found}")
