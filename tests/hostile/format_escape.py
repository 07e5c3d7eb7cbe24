"""Reads attributes through str.format's field syntax ("{0.__class__}"), which no AST attribute
node shows. Gate: string constant containing '__'. Contained: reading a class name is harmless."""


def score(layer):
    raise RuntimeError("{0.__class__.__mro__}".format(layer))
