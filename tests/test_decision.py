"""MAP and Bayes-risk decisions: hand-worked risks, the documented invariances, realized cost."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seg_jax import decision

# Classes of the design text's example ("The Pixel's Dilemma").
BACKGROUND, ROAD, PEDESTRIAN = 0, 1, 2
DILEMMA_PROBS = np.array([0.58, 0.27, 0.15], np.float32)


def _random_probs(rng, shape, num_classes):
    logits = rng.normal(size=shape + (num_classes,)) * 2.0
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32)


def test_map_decision_is_argmax_with_lowest_index_ties():
    probs = np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4]], np.float32)
    out = decision.map_decision(probs)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out, [1, 0])


def test_design_text_example_hand_worked():
    # cost[c, c_true]: predicting road on a pedestrian is the catastrophic mistake (50); missing a
    # pedestrian as background costs 10; a false pedestrian alarm, or confusing road and
    # background, costs 1.
    cost = np.array(
        [
            [0.0, 1.0, 10.0],  # predict background
            [1.0, 0.0, 50.0],  # predict road
            [1.0, 1.0, 0.0],  # predict pedestrian
        ],
        np.float32,
    )
    # R(background) = 0 * 0.58 + 1 * 0.27 + 10 * 0.15 = 1.77
    # R(road)       = 1 * 0.58 + 0 * 0.27 + 50 * 0.15 = 8.08
    # R(pedestrian) = 1 * 0.58 + 1 * 0.27 +  0 * 0.15 = 0.85  <- minimum
    np.testing.assert_allclose(decision.expected_cost(DILEMMA_PROBS, cost), [1.77, 8.08, 0.85], rtol=1e-6)
    assert int(decision.bayes_decision(DILEMMA_PROBS, cost)) == PEDESTRIAN
    # MAP picks background (0.58), as does the 0-1 cost: risks 1 - p = [0.42, 0.73, 0.85].
    assert int(decision.map_decision(DILEMMA_PROBS)) == BACKGROUND
    zero_one = 1.0 - np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(decision.expected_cost(DILEMMA_PROBS, zero_one), [0.42, 0.73, 0.85], rtol=1e-6)
    assert int(decision.bayes_decision(DILEMMA_PROBS, zero_one)) == BACKGROUND
    # "Depending on the exact cost values": a milder miss cost of 3 keeps background,
    # R(background) = 0.27 + 3 * 0.15 = 0.72 < R(pedestrian) = 0.85.
    milder = cost.copy()
    milder[BACKGROUND, PEDESTRIAN] = 3.0
    np.testing.assert_allclose(decision.expected_cost(DILEMMA_PROBS, milder)[BACKGROUND], 0.72, rtol=1e-6)
    assert int(decision.bayes_decision(DILEMMA_PROBS, milder)) == BACKGROUND


@pytest.mark.parametrize("num_classes", [2, 3, 7, 19])
def test_zero_one_cost_is_exactly_map(num_classes):
    rng = np.random.default_rng(num_classes)
    probs = _random_probs(rng, (4, 64, 64), num_classes)
    # Exact ties, which must also resolve to the lowest index in both rules.
    probs[0, 0, 0] = 1.0 / num_classes
    probs[0, 0, 1, :2] = 0.5
    probs[0, 0, 1, 2:] = 0.0
    cost = 1.0 - np.eye(num_classes, dtype=np.float32)
    np.testing.assert_array_equal(decision.bayes_decision(probs, cost), decision.map_decision(probs))


def test_decision_invariant_to_positive_scale_and_column_shift():
    rng = np.random.default_rng(0)
    num_classes = 5
    probs = _random_probs(rng, (2, 32, 32), num_classes)
    cost = rng.uniform(0.0, 4.0, size=(num_classes, num_classes)).astype(np.float32)
    np.fill_diagonal(cost, 0.0)
    reference = np.asarray(decision.bayes_decision(probs, cost))
    risks = np.asarray(decision.expected_cost(probs, cost))
    # Keep only pixels whose best and second-best risks are well apart, so float rounding of the
    # transformed matrices cannot flip them; the invariance itself is exact in real arithmetic.
    top2 = np.sort(risks, axis=-1)[..., :2]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-4
    assert clear.mean() > 0.99
    scaled = decision.bayes_decision(probs, 7.5 * cost)
    shift = rng.uniform(-3.0, 3.0, size=(1, num_classes)).astype(np.float32)  # a[c_true]
    shifted = decision.bayes_decision(probs, cost + shift)
    np.testing.assert_array_equal(np.asarray(scaled)[clear], reference[clear])
    np.testing.assert_array_equal(np.asarray(shifted)[clear], reference[clear])
    # A nonzero diagonal is such a shift: the regret matrix gives the same decisions.
    with_diagonal = cost + np.diag(rng.uniform(0.0, 1.0, num_classes)).astype(np.float32)
    regret = with_diagonal - np.diagonal(with_diagonal)[None, :]  # regret[c, c'] = cost[c, c'] - cost[c', c']
    risks = np.asarray(decision.expected_cost(probs, with_diagonal))
    top2 = np.sort(risks, axis=-1)[..., :2]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-4
    np.testing.assert_array_equal(
        np.asarray(decision.bayes_decision(probs, with_diagonal))[clear],
        np.asarray(decision.bayes_decision(probs, regret))[clear],
    )


@pytest.mark.parametrize(
    "cost, expected",
    [
        ([[0.0, 1.0], [1.0, 0.0]], 0.5),
        ([[0.0, 9.0], [1.0, 0.0]], 0.1),  # missing class 1 costs 9x a false alarm: t = 1 / (1 + 9)
        ([[0.0, 1.0], [3.0, 0.0]], 0.75),  # t = 3 / (3 + 1)
        ([[1.0, 5.0], [2.0, 2.0]], 1.0 / 4.0),  # regrets a = 2 - 1 = 1, b = 5 - 2 = 3: t = 1 / 4
    ],
)
def test_binary_threshold_matches_bayes_decision(cost, expected):
    t = decision.threshold_for_binary_cost(cost)
    assert t == pytest.approx(expected)
    rng = np.random.default_rng(3)
    p1 = rng.uniform(0.0, 1.0, size=20000).astype(np.float32)
    p1 = p1[np.abs(p1 - t) > 1e-5]  # away from the tie, where rounding decides
    probs = np.stack([1.0 - p1, p1], axis=-1)
    np.testing.assert_array_equal(decision.bayes_decision(probs, cost), (p1 > t).astype(np.int32))
    # At the threshold itself the risks tie and class 0 (the lowest index) is chosen, as p1 > t says.
    # (Exact in float only for thresholds representable without rounding: 0.5, 0.75, 0.25.)
    if expected in (0.5, 0.75, 0.25):
        assert int(decision.bayes_decision(np.array([1.0 - t, t], np.float32), cost)) == 0


def test_binary_threshold_rejects_degenerate_costs():
    with pytest.raises(ValueError, match="2, 2"):
        decision.threshold_for_binary_cost(np.ones((3, 3)))
    with pytest.raises(ValueError, match="always the better choice"):
        decision.threshold_for_binary_cost([[2.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="costs the same"):
        decision.threshold_for_binary_cost([[1.0, 1.0], [1.0, 1.0]])


def test_cost_shape_mismatch_raises_at_trace_time():
    probs = jnp.full((2, 4, 4, 3), 1.0 / 3.0)
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(2, 4, 4, 3\)"):
        jax.jit(decision.bayes_decision)(probs, jnp.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        decision.expected_cost(probs, jnp.zeros(3))


def test_jit_and_vmap():
    rng = np.random.default_rng(5)
    probs = _random_probs(rng, (3, 8, 8), 4)
    cost = rng.uniform(0.0, 2.0, size=(4, 4)).astype(np.float32)
    eager = decision.bayes_decision(probs, cost)
    np.testing.assert_array_equal(jax.jit(decision.bayes_decision)(probs, cost), eager)
    np.testing.assert_array_equal(jax.vmap(decision.bayes_decision, in_axes=(0, None))(probs, cost), eager)
    # One cost matrix per image, e.g. a sweep over costs.
    costs = np.stack([cost, 1.0 - np.eye(4, dtype=np.float32), cost.T])
    per_image = jax.vmap(decision.bayes_decision)(probs, costs)
    np.testing.assert_array_equal(per_image[1], decision.map_decision(probs[1]))
    np.testing.assert_array_equal(per_image[2], decision.bayes_decision(probs[2], cost.T))
    risks = jax.jit(decision.expected_cost)(probs, cost)
    assert risks.shape == (3, 8, 8, 4)
    np.testing.assert_allclose(risks, np.einsum("nhwk,ck->nhwc", probs, cost), rtol=1e-5, atol=1e-6)


# 2x3 image, 3 classes, one ignored pixel. cost[pred, label].
COST = np.array([[0.0, 2.0, 5.0], [1.0, 0.0, 3.0], [4.0, 1.0, 0.0]], np.float32)
LABEL = np.array([[0, 0, 1], [2, 2, 255]])
PRED = np.array([[0, 1, 1], [0, 1, 2]])


def test_realized_cost_golden_and_ignore():
    # Valid pixels: (0,0)->cost[0,0]=0, (1,0)->cost[1,0]=1, (1,1)->0, (0,2)->cost[0,2]=5,
    # (1,2)->cost[1,2]=3; the ignored pixel (pred 2) counts nowhere. Total 9 over 5 pixels.
    total, num_valid = decision.realized_cost_sums(PRED, LABEL, COST)
    assert float(total) == pytest.approx(9.0)
    assert int(num_valid) == 5
    assert float(decision.realized_cost(PRED, LABEL, COST)) == pytest.approx(9.0 / 5.0)
    # Weights 2 on the first row: (0 + 1 + 0) * 2 + 5 + 3 = 10 over 2 * 3 + 2 = 8.
    weights = np.array([[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    assert float(decision.realized_cost(PRED, LABEL, COST, weights=weights)) == pytest.approx(10.0 / 8.0)
    # A custom ignore label, and labels outside [0, C), also count nowhere.
    label = np.where(LABEL == 255, 7, LABEL)
    assert float(decision.realized_cost(PRED, label, COST, ignore_label=-1)) == pytest.approx(9.0 / 5.0)


def test_realized_cost_all_ignored_is_zero_not_nan():
    label = np.full((2, 3), 255)
    total, num_valid = decision.realized_cost_sums(PRED, label, COST)
    assert float(total) == 0.0 and int(num_valid) == 0
    value = decision.realized_cost(PRED, label, COST)
    assert float(value) == 0.0
    assert float(decision.realized_cost(PRED, label, COST, weights=np.ones((2, 3)))) == 0.0
    assert float(decision.realized_cost_from_sums(np.float64(0.0), np.int64(0))) == 0.0


def test_realized_cost_sums_add_across_batches_and_match_confusion():
    from seg_jax import metrics

    rng = np.random.default_rng(2)
    label = rng.integers(0, 3, size=(4, 9, 9))
    label[rng.random(label.shape) < 0.2] = 255
    pred = rng.integers(0, 3, size=label.shape)
    fn = jax.jit(lambda p, t: decision.realized_cost_sums(p, t, COST))
    parts = [fn(pred[i : i + 1], label[i : i + 1]) for i in range(4)]
    total = sum(np.float64(t) for t, _ in parts)
    count = sum(np.int64(n) for _, n in parts)
    whole = decision.realized_cost(pred, label, COST)
    assert float(decision.realized_cost_from_sums(total, count)) == pytest.approx(float(whole), rel=1e-6)
    reference = np.mean([COST[p, t] for p, t in zip(pred.ravel(), label.ravel()) if t != 255])
    assert float(whole) == pytest.approx(reference, rel=1e-6)
    cm = np.asarray(metrics.confusion_matrix(pred, label, 3), np.int64)
    assert float(decision.realized_cost_from_confusion(cm, COST)) == pytest.approx(reference, rel=1e-9)
    assert float(decision.realized_cost_from_confusion(np.zeros((3, 3), np.int64), COST)) == 0.0


def test_bayes_decision_minimises_realized_cost_in_expectation():
    # Labels drawn from the probabilities: the Bayes decision's mean realized cost beats MAP's.
    rng = np.random.default_rng(11)
    probs = _random_probs(rng, (200, 200), 3)
    cumulative = probs.cumsum(-1)
    labels = (rng.random(probs.shape[:-1])[..., None] > cumulative).sum(-1).clip(0, 2)
    cost = np.array([[0.0, 1.0, 10.0], [1.0, 0.0, 50.0], [1.0, 1.0, 0.0]], np.float32)
    bayes = decision.realized_cost(decision.bayes_decision(probs, cost), labels, cost)
    map_ = decision.realized_cost(decision.map_decision(probs), labels, cost)
    assert float(bayes) < 0.8 * float(map_)


def test_cost_matrix_from_config():
    np.testing.assert_array_equal(decision.cost_matrix_from_config(None, 3), 1.0 - np.eye(3))
    matrix = decision.cost_matrix_from_config(((0, 1), (5, 0)), 2)
    assert matrix.dtype == np.float32 and matrix.shape == (2, 2)
    np.testing.assert_array_equal(matrix, [[0.0, 1.0], [5.0, 0.0]])
    with pytest.raises(ValueError, match=r"\[3, 3\].*shape \(2, 2\)"):
        decision.cost_matrix_from_config([[0, 1], [1, 0]], 3)
    with pytest.raises(ValueError, match="nested list of numbers"):
        decision.cost_matrix_from_config([[0, 1], [1]], 2)
    with pytest.raises(ValueError, match="non-finite"):
        decision.cost_matrix_from_config([[0, float("inf")], [1, 0]], 2)
    with pytest.raises(ValueError, match="negative"):
        decision.cost_matrix_from_config([[0, -1], [1, 0]], 2)
    with pytest.raises(ValueError, match="all zeros"):
        decision.cost_matrix_from_config([[0, 0], [0, 0]], 2)
