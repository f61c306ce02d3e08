"""Backpropagation checked against central differences on sampled entries (numpy only)."""

import numpy as np

from pipeline.errors import GradientCheckError
from pipeline.functions import H, sigmoid
from pipeline.network import PARAM_NAMES, TwoLayerNet

SATURATED = 1e-6  # a hidden sigmoid this close to 0 or 1 has a gradient the check cannot follow
SATURATED_SHARE = 0.5  # a failed check on a network with this share of such sigmoids blames the weights


def relative_error(a, b):
    """||a - b|| / (||a|| + ||b||): 0 when equal, 1 when opposite; 0 when both are 0."""
    denominator = np.linalg.norm(a) + np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / denominator) if denominator > 0 else 0.0


def check_gradient(network, x, t, entries_per_param, rng):
    """Compare network.gradient(x, t) with central differences (h = 1e-4) at entries_per_param
    entries of each parameter (all of a smaller one), chosen by rng. Use a float64 network.

    Returns {name: {"entries_checked", "entries_total", "max_abs_diff", "relative_error"}};
    the parameters are left exactly as they were."""
    backprop = network.gradient(x, t)
    results = {}
    for key in PARAM_NAMES:
        flat = network.params[key].reshape(-1)  # a view: perturbing it perturbs the network
        chosen = np.sort(rng.choice(flat.size, size=min(entries_per_param, flat.size), replace=False))
        numerical = np.empty(chosen.size)
        for j, index in enumerate(chosen):
            original = flat[index]
            flat[index] = original + H
            loss_plus = network.loss(x, t)
            flat[index] = original - H
            loss_minus = network.loss(x, t)
            flat[index] = original
            numerical[j] = (loss_plus - loss_minus) / (2 * H)
        analytic = backprop[key].reshape(-1)[chosen]
        results[key] = {
            "entries_checked": int(chosen.size),
            "entries_total": int(flat.size),
            "max_abs_diff": float(np.max(np.abs(analytic - numerical))),
            "relative_error": relative_error(analytic, numerical),
        }
    return results


def saturated_share(network, x):
    """Fraction of the hidden sigmoids of network on x (batch, input_size) within 1e-6 of 0 or 1."""
    z1 = sigmoid(np.dot(x, network.params["W1"]) + network.params["b1"])
    return float(np.mean((z1 < SATURATED) | (z1 > 1 - SATURATED)))


def resolution(loss):
    """The rounding error of one central difference (h = 1e-4) of a float64 loss of this size:
    differences smaller than this are noise."""
    return float(np.finfo(np.float64).eps * max(abs(loss), 1.0) / H)


def blame_weights(network, x, t, results, tolerance, weight_init_std):
    """The one-line message when a failed check says nothing about backprop, else None: when the
    network starts saturated, or when every failing parameter's disagreement is within the
    central difference's rounding error (a gradient too small to resolve)."""
    share = saturated_share(network, x)
    if share >= SATURATED_SHARE:
        return (f"weight_init_std={weight_init_std:g} saturates the network: {share:.0%} of the hidden sigmoids "
                f"are within {SATURATED:g} of 0 or 1, where the numerical gradient cannot check backprop (and "
                f"training barely moves); give a smaller --weight-init-std, such as 0.01 (the default)")
    noise = resolution(network.loss(x, t))
    failed = {key: r for key, r in results.items() if r["relative_error"] > tolerance}
    largest = max(r["max_abs_diff"] for r in failed.values())
    if largest <= 10 * noise:  # a few ulps of each of the two losses, with room: a wrong backprop is far above
        return (f"weight_init_std={weight_init_std:g} makes the gradient too small to check: "
                f"{', '.join(failed)} disagree by at most {largest:.2g}, within the rounding error ({noise:.1g}) "
                f"of central differences (h = 1e-4) in float64; give a larger --weight-init-std, such as 0.01 "
                f"(the default)")
    return None


def check_rows(n, seed, batch_size=10):
    """The sorted training rows the check of a run with this seed uses, and the generator, in the
    state after drawing them, that then picks the entries (its own stream: the check must not
    shift training's draws)."""
    rng = np.random.default_rng([seed, 1])
    return np.sort(rng.choice(n, size=min(batch_size, n), replace=False)), rng


def gradient_check_report(x, t, rng, *, n_classes, hidden_size, weight_init_std, seed, entries_per_param=100,
                          tolerance=1e-6):
    """Check backprop for a run before it trains: its sizes and its seed's initial weights, in
    float64, on the rows x (batch, input_size) with labels t (batch,), as check_rows chose them
    with rng. Returns a JSON-ready dict; "passed" says whether every parameter's relative error
    is at most tolerance. GradientCheckError naming weight_init_std when a failure is the
    weights' (a saturated network, a gradient below the check's resolution), not backprop's."""
    network = TwoLayerNet(x.shape[1], hidden_size, n_classes, weight_init_std=weight_init_std,
                          rng=np.random.default_rng(seed), dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    results = check_gradient(network, x, t, entries_per_param, rng)
    worst = max(r["relative_error"] for r in results.values())
    if worst > tolerance:
        message = blame_weights(network, x, t, results, tolerance, weight_init_std)
        if message:
            raise GradientCheckError(message)
    return {
        "passed": bool(worst <= tolerance),
        "tolerance": tolerance,
        "worst_relative_error": worst,
        "method": "central difference, h = 1e-4, float64; relative error = |a - b| / (|a| + |b|) (L2 norms)",
        "batch_size": int(x.shape[0]),
        "hidden_size": hidden_size,
        "seed": seed,
        "parameters": results,
    }
