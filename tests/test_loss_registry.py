"""register_loss and the probe of a user's loss: names, options, and what is rejected, and why."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default as default_config
from seg_jax import losses, objectives
from seg_jax.data.datasets import DatasetInfo
from seg_jax.losses import registry


@pytest.fixture
def registered():
    """Registers losses for one test and removes them afterwards."""
    names = []

    def register(name, fn, **kwargs):
        losses.register_loss(name, fn, **kwargs)
        names.append(name)
        return fn

    yield register
    for name in names:
        if name in losses.registered_losses():
            losses.unregister_loss(name)


def _random(seed, num_classes=4, shape=(2, 6, 6), ignore_fraction=0.2):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(size=(*shape, num_classes)), jnp.float32)
    labels = rng.integers(0, num_classes, size=shape)
    labels[rng.random(shape) < ignore_fraction] = 255
    return logits, jnp.asarray(labels, jnp.int32)


def _loss_config(name, **options):
    config = default_config.get_config()
    config.data.ignore_label = 255
    config.loss.name = name
    for loss_name, values in options.items():
        default_config.add_loss_options(config, loss_name, **values)
    return config.loss


def scaled_ce(logits, labels, *, ignore_label, weights=None, scale=1.0):
    """Cross-entropy times `scale`: easy to check against the package's."""
    return scale * losses.cross_entropy(logits, labels, ignore_label=ignore_label, weights=weights)


def test_a_registered_loss_is_summed_with_the_packages_with_its_config_options(registered):
    registered("scaled_ce", scaled_ce)
    assert "scaled_ce" in losses.registered_losses()
    config = _loss_config("cross_entropy+scaled_ce", scaled_ce={"scale": 3.0})
    config.term_weights = (1.0, 0.5)
    logits, labels = _random(0)
    got = jax.jit(losses.get_loss(config))(logits, labels)
    expected = 2.5 * losses.cross_entropy(logits, labels)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_decorator_form_returns_the_function_and_override_replaces(registered):
    @losses.register_loss("decorated_ce")
    def decorated(logits, labels, *, ignore_label):
        return losses.cross_entropy(logits, labels, ignore_label=ignore_label)

    registered("decorated_ce", decorated, override=True)  # cleanup through the fixture
    assert callable(decorated)
    with pytest.raises(ValueError, match="'decorated_ce' is already registered.*override=True"):
        losses.register_loss("decorated_ce", scaled_ce)
    losses.register_loss("decorated_ce", scaled_ce, override=True)
    assert registry.lookup_loss("decorated_ce").fn is scaled_ce
    with pytest.raises(ValueError, match="'cross_entropy' is already registered"):
        losses.register_loss("cross_entropy", scaled_ce)
    with pytest.raises(ValueError, match="one of seg_jax's own losses"):
        losses.unregister_loss("dice")


@pytest.mark.parametrize("name, match", [
    ("my-loss", "Python identifier"), ("a+b", "Python identifier"), ("", "Python identifier"),
    ("class", "Python identifier"), ("term_weights", "key of config.loss itself"),
    ("ignore_label", "key of config.loss itself"),
])
def test_unusable_names_are_refused(name, match):
    with pytest.raises(ValueError, match=match):
        losses.register_loss(name, scaled_ce)


def test_a_loss_without_ignore_label_or_labels_is_refused_at_registration():
    with pytest.raises(TypeError, match="no `ignore_label` keyword"):
        losses.register_loss("no_ignore", lambda logits, labels: jnp.mean(logits))
    with pytest.raises(TypeError, match=r"must take \(logits, labels"):
        losses.register_loss("one_arg", lambda logits, *, ignore_label: jnp.mean(logits))
    assert "no_ignore" not in losses.registered_losses()


def test_unknown_name_lists_the_registered_ones_including_the_users(registered):
    registered("scaled_ce", scaled_ce)
    with pytest.raises(ValueError, match=r"'cross_entropy\+sclaed_ce'.*\['sclaed_ce'\].*"
                                         r"'scaled_ce'.*register_loss"):
        losses.get_loss(_loss_config("cross_entropy+sclaed_ce"))


def test_options_that_do_not_match_the_signature_are_named(registered):
    registered("scaled_ce", scaled_ce)
    with pytest.raises(ValueError, match=r"config\.loss\.scaled_ce\.scael is not an option of "
                                         r"loss 'scaled_ce'.*\['scale', 'weights'\]"):
        losses.get_loss(_loss_config("scaled_ce", scaled_ce={"scael": 2.0}))
    # The package's losses are checked the same way.
    config = _loss_config("focal")
    with config.unlocked():
        config.focal.gama = 2.0
    with pytest.raises(ValueError, match=r"config\.loss\.focal\.gama is not an option"):
        losses.get_loss(config)


def test_a_required_option_left_out_is_named(registered):
    def needs_margin(logits, labels, *, ignore_label, margin):
        return losses.cross_entropy(logits, labels, ignore_label=ignore_label) * margin

    registered("needs_margin", needs_margin)
    with pytest.raises(ValueError, match=r"requires option 'margin'.*config\.loss\.needs_margin"):
        losses.get_loss(_loss_config("needs_margin"))
    got = losses.get_loss(_loss_config("needs_margin", needs_margin={"margin": 2.0}))
    logits, labels = _random(1)
    assert float(got(logits, labels)) == pytest.approx(
        2 * float(losses.cross_entropy(logits, labels)), rel=1e-6)


def test_add_loss_options_makes_them_settable_and_keeps_the_config_locked():
    config = default_config.add_loss_options(default_config.get_config(), "my_loss", width=3)
    config.loss.my_loss.width = 5
    assert config.loss.my_loss.width == 5
    with pytest.raises(AttributeError):
        config.loss.my_loss.widht = 4  # still locked: a typo is an error
    with pytest.raises(TypeError):
        config.loss.my_loss.width = "wide"


# --- The probe ---------------------------------------------------------------------------------


def _check(fn, num_classes=4):
    losses.check_loss(functools.partial(fn, ignore_label=255), name="under_test",
                      num_classes=num_classes, ignore_label=255)


def test_the_probe_passes_the_packages_losses():
    for name in losses.registered_losses():
        if name == "expected_cost":
            fn = functools.partial(losses.expected_cost_loss, cost=1.0 - jnp.eye(5))
        else:
            fn = registry.lookup_loss(name).fn
        _check(fn, num_classes=5)


def test_a_non_scalar_loss_is_rejected_naming_it():
    def per_pixel(logits, labels, *, ignore_label):
        return losses.cross_entropy(logits, labels, ignore_label=ignore_label, reduction="none")

    with pytest.raises(losses.LossCheckError, match=r"'under_test' returns shape \(2, 8, 8\), "
                                                    r"not a scalar"):
        _check(per_pixel)


def test_a_loss_that_raises_or_fails_under_grad_is_rejected():
    def broken(logits, labels, *, ignore_label):
        return jnp.mean(logits + labels[:, :3])  # shapes that do not broadcast

    with pytest.raises(losses.LossCheckError, match="'under_test' raised ValueError .*Incompatible shapes"):
        _check(broken)

    def not_differentiable(logits, labels, *, ignore_label):  # a count: integer-valued
        return jnp.sum((jnp.argmax(logits, -1) == labels) & (labels != ignore_label))

    with pytest.raises(losses.LossCheckError, match="fails under jax.jit\\(jax.grad"):
        _check(not_differentiable)


def test_a_loss_that_is_nan_where_real_batches_go_is_rejected():
    def naive_ce(logits, labels, *, ignore_label):
        valid = labels != ignore_label
        probs = jax.nn.softmax(logits)
        picked = jnp.take_along_axis(probs, jnp.where(valid, labels, 0)[..., None], -1)[..., 0]
        return -jnp.sum(jnp.where(valid, jnp.log(picked), 0.0)) / jnp.sum(valid)

    with pytest.raises(losses.LossCheckError, match=r"saturated logits \(x100\)"):
        _check(naive_ce)

    def no_guard(logits, labels, *, ignore_label):
        valid = labels != ignore_label
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits),
                                   jnp.where(valid, labels, 0)[..., None], -1)[..., 0]
        return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.sum(valid)

    with pytest.raises(losses.LossCheckError, match="every pixel ignored.*max\\(count, 1\\)"):
        _check(no_guard)


def test_a_loss_that_pushes_ignored_pixels_is_rejected():
    def unmasked(logits, labels, *, ignore_label):
        return jnp.mean(jax.nn.log_softmax(logits) ** 2)

    with pytest.raises(losses.LossCheckError, match="gradient .* at pixels labelled "
                                                    "ignore_label=255"):
        _check(unmasked)


def test_the_objective_probes_user_losses_before_training(registered):
    def per_pixel(logits, labels, *, ignore_label):
        return losses.cross_entropy(logits, labels, ignore_label=ignore_label, reduction="none")

    registered("per_pixel_ce", per_pixel)
    config = default_config.get_config()
    config.data.ignore_label = 255
    config.loss.name = "dice+per_pixel_ce"
    info = DatasetInfo(name="abc", class_names=("a", "b", "c"), ignore_label=255)
    with pytest.raises(losses.LossCheckError, match="'per_pixel_ce' returns shape"):
        objectives.semantic_loss(config, info)
    with pytest.raises(losses.LossCheckError, match=r"\.per_pixel' returns shape"):
        objectives.semantic_loss(config, info, loss_fn=per_pixel)
    loss = objectives.semantic_loss(config, info, loss_fn=scaled_ce)
    logits, labels = _random(3, num_classes=3)
    assert float(loss(logits, labels)) == pytest.approx(
        float(losses.cross_entropy(logits, labels)), rel=1e-6)
