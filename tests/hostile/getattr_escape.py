"""Builds dunder names at run time to get past an attribute check: getattr with a computed name.
Gate: getattr needs a literal name. Contained: as dunder_escape."""


def score(layer):
    under = "_" * 2
    klass = getattr((), under + "class" + under)
    base = getattr(klass, under + "base" + under)
    subclasses = getattr(base, under + "subclasses" + under)()
    raise RuntimeError(f"found {len(subclasses)} classes")
