import numpy as np
import pytest

from plasticlm.eval.oracles import oracle_losses


def test_unigram_and_counting_by_hand():
    """Rows [1, 1, 2] and [3] over 4 ids, add-0.5: pooled counts (0, 2, 1, 1) give the unigram
    (0.5, 2.5, 1.5, 1.5) / 6; counting starts each row from nothing (1/4 for any id)."""
    out = oracle_losses([np.array([1, 1, 2]), np.array([3])], vocab=4, alpha=0.5)
    p = np.array([0.5, 2.5, 1.5, 1.5]) / 6
    assert np.allclose(out["global unigram"][0], -np.log(p[[1, 1, 2]]))
    assert np.allclose(out["global unigram"][1], -np.log(p[[3]]))
    assert np.allclose(out["counting"][0], -np.log([0.5 / 2, 1.5 / 3, 0.5 / 4]))
    assert out["counting"][1] == pytest.approx([np.log(4)])
