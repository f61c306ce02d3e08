"""The functions and calculus of chapter 4, each checked against a value computed another way."""

import warnings

import numpy as np
import pytest

from pipeline.functions import cross_entropy_error, sigmoid, sigmoid_grad, softmax, sum_squares_error
from pipeline.functions import gradient_descent, numerical_diff, numerical_gradient


def square_sum(x):
    return x[0] ** 2 + x[1] ** 2


def test_sigmoid_matches_the_textbook_formula_and_does_not_overflow():
    x = np.linspace(-30, 30, 61)
    np.testing.assert_allclose(sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-12, atol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning fails the test
        extremes = sigmoid(np.array([-1000.0, 1000.0], dtype=np.float32))
    assert extremes.tolist() == [0.0, 1.0]


def test_sigmoid_grad_is_the_numerical_derivative():
    for x in (-3.0, 0.0, 0.5, 4.0):
        assert sigmoid_grad(np.float64(x)) == pytest.approx(numerical_diff(sigmoid, x), rel=1e-7)


def test_softmax_rows_sum_to_one_and_stay_finite_for_huge_inputs():
    x = np.array([[1000.0, -1000.0, 0.0], [0.3, 2.9, 4.0]])
    y = softmax(x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(axis=1), 1.0)
    np.testing.assert_allclose(y[1], np.exp(x[1]) / np.exp(x[1]).sum())
    np.testing.assert_allclose(softmax(np.array([1010.0, 1000.0, 990.0])), softmax(np.array([20.0, 10.0, 0.0])))


def test_cross_entropy_is_finite_for_a_zero_probability():
    y = softmax(np.array([[-1000.0, 1000.0]]))  # the true class gets probability 0
    loss = cross_entropy_error(y, np.array([0]))
    assert np.isfinite(loss)
    assert loss == pytest.approx(-np.log(1e-7))


def test_cross_entropy_one_hot_and_integer_labels_agree_and_average_over_the_batch():
    y = np.array([[0.1, 0.6, 0.3], [0.8, 0.1, 0.1]])
    one_hot = np.array([[0, 1, 0], [0, 0, 1]])
    expected = -(np.log(0.6 + 1e-7) + np.log(0.1 + 1e-7)) / 2
    assert cross_entropy_error(y, one_hot) == pytest.approx(expected)
    assert cross_entropy_error(y, np.array([1, 2])) == pytest.approx(expected)
    # one sample, as in the book's first example: the mean over a batch of one
    assert cross_entropy_error(y[0], one_hot[0]) == pytest.approx(-np.log(0.6 + 1e-7))
    assert cross_entropy_error(y[0], 1) == pytest.approx(-np.log(0.6 + 1e-7))


def test_sum_squares_error_of_the_books_example():
    t = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    y = np.array([0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0])
    assert sum_squares_error(y, t) == pytest.approx(0.0975)


def test_numerical_gradient_of_square_sum_at_3_4_is_6_8():
    np.testing.assert_allclose(numerical_gradient(square_sum, np.array([3.0, 4.0])), [6.0, 8.0], atol=1e-8)


def test_numerical_gradient_handles_any_shape_and_restores_the_array():
    x = np.arange(6, dtype=float).reshape(2, 3) / 7
    before = x.copy()
    grad = numerical_gradient(lambda a: np.sum(a ** 3), x)
    # the central difference of a**3 is 3a**2 + h**2: exact up to 1e-8
    np.testing.assert_allclose(grad, 3 * before ** 2, rtol=1e-6, atol=2e-8)
    assert np.array_equal(x, before)


def test_gradient_descent_from_minus3_4_reaches_the_origin():
    x = gradient_descent(square_sum, np.array([-3.0, 4.0]), lr=0.1, step_num=100)
    assert np.all(np.abs(x) < 1e-8)


def test_gradient_descent_does_not_modify_its_start():
    start = np.array([-3.0, 4.0])
    gradient_descent(square_sum, start, lr=0.1, step_num=3)
    assert start.tolist() == [-3.0, 4.0]
