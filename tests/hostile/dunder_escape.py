"""Reaches os.system through object.__subclasses__ without importing anything.
Gate: dunder attribute. Contained: whatever it runs, runs as nobody, without network, on read-only mounts."""


def score(layer):
    for cls in ().__class__.__base__.__subclasses__():
        if cls.__name__ == "_wrap_close":
            system = cls.__init__.__globals__["system"]
            system("touch /tmp/tap_mpq_hostile_canary /var/tmp/tap_mpq_hostile_canary")
    raise RuntimeError("escaped through __subclasses__")
