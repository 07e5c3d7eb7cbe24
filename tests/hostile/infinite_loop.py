"""Never returns. Gate: passes. Contained: wall-clock timeout, then the process group is killed."""


def score(layer):
    n = 0
    while True:
        n += 1
