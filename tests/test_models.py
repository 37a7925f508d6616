"""The models have the original's shapes, PyTorch's initialisation and BatchNorm, and losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mnist_jax.models import BatchNorm1d, Dropout, count_params, dropout_bits
from mnist_jax.models import cross_entropy, softmax_mse
from mnist_jax.stages import STAGES


@pytest.mark.parametrize(
    "stage, expected",
    [("linear_mse", 7_850), ("linear_ce", 7_850), ("mlp", 203_530), ("mlp_dropout", 203_530), ("mlp_bn", 204_042)],
)
def test_trainable_parameter_counts(stage, expected):
    assert count_params(nnx.eval_shape(lambda: STAGES[stage].build(nnx.Rngs(0)))) == expected


def test_linear_layers_are_initialised_like_torch_nn_linear():
    model = STAGES["mlp"].build(nnx.Rngs(0))
    for layer, fan_in in ((model.hidden, 784), (model.output, 256)):
        bound = 1 / math.sqrt(fan_in)
        for w in (layer.kernel[...], layer.bias[...]):
            assert float(jnp.abs(w).max()) <= bound
        # uniform on [-b, b]: standard deviation b / sqrt(3)
        assert float(layer.kernel[...].std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)


def test_batchnorm_keeps_pytorch_running_statistics():
    x = jax.random.normal(jax.random.key(0), (16, 4)) * 3 + 1
    bn = BatchNorm1d(4)
    y = bn(x, train=True)
    xs = np.asarray(x, np.float64)
    # normalised with the biased batch variance ...
    expected = (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-5)
    np.testing.assert_allclose(y, expected, atol=1e-5)
    # ... running statistics: momentum 0.1 and the unbiased variance
    np.testing.assert_allclose(bn.mean[...], 0.1 * xs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * xs.var(0, ddof=1), rtol=1e-5)
    # eval mode uses the running statistics and leaves them alone
    y_eval = bn(x, train=False)
    np.testing.assert_allclose(y_eval, (xs - bn.mean[...]) / np.sqrt(bn.var[...] + 1e-5), atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], 0.1 * xs.mean(0), rtol=1e-5)


def test_dropout_is_active_only_in_training():
    model = STAGES["mlp_dropout"].build(nnx.Rngs(0))
    x = jnp.ones((8, 784))
    eval_out = model(x, train=False)
    np.testing.assert_array_equal(eval_out, model(x))
    a = model(x, train=True, dropout_key=jax.random.key(1))
    b = model(x, train=True, dropout_key=jax.random.key(2))
    assert not np.allclose(a, eval_out) and not np.allclose(a, b)
    with pytest.raises(TypeError, match="MLP: train=True with dropout draws its masks from a dropout_key"):
        model(x, train=True)


@pytest.mark.parametrize("rate, bits, units", [(0.5, 1, 256), (0.25, 2, 256), (0.125, 4, 100), (0.3, 32, 256)])
def test_dropout_drops_each_unit_at_the_exact_rate_independently_of_its_word_neighbours(rate, bits, units):
    """Units packed into one random word (32 // bits of them) are dropped at `rate`, each
    column alike, neighbours independently; the kept ones are scaled by 1 / (1 - rate)."""
    assert dropout_bits(rate) == bits
    rows, keep = 8192, 1 - rate
    out = np.asarray(jax.jit(Dropout(bits))(jnp.ones((rows, units)), jax.random.key(0), jnp.float32(rate)))
    kept = out != 0
    assert np.all(out[kept] == np.float32(1 / keep))
    sigma = math.sqrt(keep * rate / kept.size)
    assert abs(kept.mean() - keep) < 5 * sigma
    assert np.all(np.abs(kept.mean(0) - keep) < 5 * math.sqrt(keep * rate / rows))
    both = kept[:, 0::2] & kept[:, 1::2]  # disjoint pairs of neighbours, each pair in one word
    assert abs(both.mean() - keep**2) < 5 * math.sqrt(keep**2 * (1 - keep**2) / both.size)


def test_softmax_mse_matches_a_hand_computed_value():
    logits = jnp.array([[0.0, math.log(3.0)] + [-jnp.inf] * 8])  # softmax = (1/4, 3/4, 0, ...)
    # target class 1: errors (1/4)^2 + (1/4)^2 over 10 outputs
    assert float(softmax_mse(logits, jnp.array([1]))) == pytest.approx((1 / 16 + 1 / 16) / 10)
    # batch of two, averaged over 2 x 10 elements
    both = softmax_mse(jnp.concatenate([logits, logits]), jnp.array([1, 0]))
    assert float(both) == pytest.approx(((1 / 16 + 1 / 16) + (9 / 16 + 9 / 16)) / 20)


def test_cross_entropy_matches_a_hand_computed_value():
    logits = jnp.array([[0.0, math.log(3.0)] + [-1e9] * 8, [2.0] * 10])
    # -log(3/4) for the first example, -log(1/10) for the second, averaged
    expected = (-math.log(0.75) + math.log(10)) / 2
    assert float(cross_entropy(logits, jnp.array([1, 4]))) == pytest.approx(expected, rel=1e-6)


def test_dropout_keeps_and_scales_units_as_nnx_dropout_does():
    """The standard piece `models.Dropout` stands in for (docs/performance.md says why)."""
    x = jnp.ones((8192, 256))
    ours = np.asarray(jax.jit(Dropout(1))(x, jax.random.key(0), 0.5))
    standard = np.asarray(jax.jit(lambda x, key: nnx.Dropout(0.5)(x, deterministic=False, rngs=key))(x, jax.random.key(0)))
    for out in (ours, standard):
        assert set(np.unique(out)) == {0.0, 2.0}
    sigma = math.sqrt(0.25 / x.size)
    assert abs((ours != 0).mean() - (standard != 0).mean()) < 5 * math.sqrt(2) * sigma
