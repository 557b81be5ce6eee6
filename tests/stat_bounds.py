"""Statistical bounds shared by the randomised tests: a 5-sigma band around the exact
expected value, so a correct implementation fails a check with probability < 1e-5."""
import math


def within(value, expected, sigma, n_sigma=5.0):
    assert abs(value - expected) <= n_sigma * sigma, (value, expected, sigma)


def binomial_sigma(p, n):
    return math.sqrt(p * (1 - p) / n)
