import math

import numpy as np

from neat_studio.scoring.active import disagreement, most_uncertain, uncertainty


def test_uncertainty_margin_between_top_two():
    u = uncertainty([[0.1, 2.0, 1.5], [3.0, -1.0], [5.0], [1.0, 1.0, 0.0]])
    assert u[0] == 0.5 and u[1] == 4.0 and math.isnan(u[2]) and u[3] == 0.0
    assert most_uncertain([[0.1, 2.0, 1.5], [3.0, -1.0], [5.0], [1.0, 1.0, 0.0]], k=3) == [3, 0, 1]


def test_disagreement_kendall_tau_distance():
    h = [["a"], ["b"], ["c"], ["d"]]
    assert disagreement(h, h) == 0.0
    assert disagreement([["d"], ["c"], ["b"], ["a"]], h) == 1.0
    # one adjacent swap out of 6 pairs
    assert disagreement([["b"], ["a"], ["c"], ["d"]], h) == 1 / 6
    # tie in the scorer ranking where the human is strict: half a discordance
    assert disagreement([["a", "b"], ["c"], ["d"]], h) == 0.5 / 6
    # both tie the same pair: no penalty
    assert disagreement([["a", "b"], ["c"]], [["b", "a"], ["c"]]) == 0.0
    # only common items count; fewer than two -> nan
    assert disagreement([["a"], ["x"], ["b"]], [["b"], ["a"], ["y"]]) == 1.0
    assert math.isnan(disagreement([["a"]], [["a"], ["b"]]))


def test_disagreement_symmetric_and_rejects_duplicates():
    rng = np.random.default_rng(0)
    items = list(range(8))
    for _ in range(20):
        a = [[int(x)] for x in rng.permutation(items)]
        b = [[int(x)] for x in rng.permutation(items)]
        assert disagreement(a, b) == disagreement(b, a)
    try:
        disagreement([[1], [1]], [[1]])
    except ValueError:
        pass
    else:
        raise AssertionError("duplicate item accepted")
