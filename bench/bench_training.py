"""Training + per-epoch evaluation: the pipeline against the book's algorithm and PyTorch.

    .venv/bin/python bench/bench_training.py            # 3 repeats of each, interleaved, then the chain
    .venv/bin/python bench/bench_training.py --repeats 1 --iterations 2000 --skip-chain

Every implementation trains the 784-50-10 network for the same number of iterations of
batch 100 on the same data (real Fashion-MNIST when Debian's dataset-fashion-mnist is
installed, otherwise generated images of the same shape) and measures accuracy on the
whole training and test sets at every epoch. Times are wall seconds, min and median of
the repeats, run interleaved so that a noisy neighbour hurts all rows alike; the ratio
column divides by the baseline's median from this same sitting. Nothing here is a
pass/fail test: machines are shared and noisy, ratios are what to compare.

Rows:
- baseline: the book's algorithm (ch04 train_neuralnet.py with TwoLayerNet.gradient),
  float64, written out plainly below: np.random.choice batches, a loss recomputed after
  every update, accuracy over both sets whenever i % iter_per_epoch == 0.
- pipeline: pipeline.training.train with a pipeline.evaluation.BackgroundEvaluator, float32,
  as TrainNetwork wires them: each checkpoint's weights are evaluated on a second thread
  while training goes on (no files written).
- the run a user waits for: `luigi --module pipeline.tasks EvaluateNetwork --dataset
  fashion-mnist --local-scheduler` in a fresh process, from processed data made beforehand,
  start-up, gradient check, checkpoints, model and report included (real data only).
- pytorch: the same algorithm in torch on the CPU, float32, 2 threads; skipped when
  torch is not importable (it is not a dependency of the project).

Then, with real Fashion-MNIST, the chain's figures from bench/bench_chain.py: normalization
time, a fully cached rerun of `mnist-pipeline run` and the peak memory of TrainNetwork.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.evaluation import BackgroundEvaluator  # noqa: E402
from pipeline.network import TwoLayerNet  # noqa: E402
from pipeline.training import checkpoint_iterations, iterations_per_epoch, train  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")


def load_data(generated=False):
    """(x_train, labels_train, x_test, labels_test, description): float32 in [0, 1], int labels."""
    if FASHION.is_dir() and not generated:
        from pipeline.idx import read_idx
        from pipeline.processed import normalize_images

        def part(prefix):
            images = read_idx(FASHION / f"{prefix}-images-idx3-ubyte.gz")
            labels = read_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz")
            return normalize_images(images), labels.astype(np.intp)

        (x_train, t_train), (x_test, t_test) = part("train"), part("t10k")
        return x_train, t_train, x_test, t_test, "Fashion-MNIST (Debian dataset-fashion-mnist), 60000/10000"
    rng = np.random.default_rng(0)
    prototypes = rng.random((10, 784))

    def part(n):
        labels = rng.integers(0, 10, size=n)
        x = np.clip(prototypes[labels] + 0.5 * rng.standard_normal((n, 784)), 0, 1)
        return (np.round(x * 255) / 255).astype(np.float32), labels

    (x_train, t_train), (x_test, t_test) = part(60000), part(10000)
    return x_train, t_train, x_test, t_test, "generated 28x28 images, 60000/10000 (Fashion-MNIST not installed)"


# --- the baseline: the book's algorithm, float64, written out plainly ---

def book_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def book_softmax(x):
    x = x - np.max(x, axis=-1, keepdims=True)
    return np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)


def book_cross_entropy_error(y, t):
    if y.ndim == 1:
        t = t.reshape(1, t.size)
        y = y.reshape(1, y.size)
    if t.size == y.size:
        t = t.argmax(axis=1)
    batch_size = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch_size), t] + 1e-7)) / batch_size


class BookTwoLayerNet:
    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01):
        self.params = {}
        self.params["W1"] = weight_init_std * np.random.randn(input_size, hidden_size)
        self.params["b1"] = np.zeros(hidden_size)
        self.params["W2"] = weight_init_std * np.random.randn(hidden_size, output_size)
        self.params["b2"] = np.zeros(output_size)

    def predict(self, x):
        W1, W2 = self.params["W1"], self.params["W2"]
        b1, b2 = self.params["b1"], self.params["b2"]
        a1 = np.dot(x, W1) + b1
        z1 = book_sigmoid(a1)
        a2 = np.dot(z1, W2) + b2
        return book_softmax(a2)

    def loss(self, x, t):
        return book_cross_entropy_error(self.predict(x), t)

    def accuracy(self, x, t):
        y = np.argmax(self.predict(x), axis=1)
        t = np.argmax(t, axis=1)
        return np.sum(y == t) / float(x.shape[0])

    def gradient(self, x, t):
        W1, W2 = self.params["W1"], self.params["W2"]
        b1, b2 = self.params["b1"], self.params["b2"]
        grads = {}
        batch_num = x.shape[0]
        # forward
        a1 = np.dot(x, W1) + b1
        z1 = book_sigmoid(a1)
        a2 = np.dot(z1, W2) + b2
        y = book_softmax(a2)
        # backward
        dy = (y - t) / batch_num
        grads["W2"] = np.dot(z1.T, dy)
        grads["b2"] = np.sum(dy, axis=0)
        da1 = np.dot(dy, W2.T)
        dz1 = (1.0 - book_sigmoid(a1)) * book_sigmoid(a1) * da1
        grads["W1"] = np.dot(x.T, dz1)
        grads["b1"] = np.sum(dz1, axis=0)
        return grads


def run_baseline(data, iterations, seed):
    x_train, t_train_labels, x_test, t_test_labels = (d.astype(np.float64) if d.dtype.kind == "f" else d
                                                      for d in data)
    t_train, t_test = np.eye(10)[t_train_labels], np.eye(10)[t_test_labels]
    np.random.seed(seed)
    network = BookTwoLayerNet(input_size=784, hidden_size=50, output_size=10)
    train_size, batch_size, learning_rate = x_train.shape[0], 100, 0.1
    iter_per_epoch = max(train_size / batch_size, 1)
    train_loss_list, train_acc_list, test_acc_list = [], [], []
    for i in range(iterations):
        batch_mask = np.random.choice(train_size, batch_size)
        x_batch, t_batch = x_train[batch_mask], t_train[batch_mask]
        grad = network.gradient(x_batch, t_batch)
        for key in ("W1", "b1", "W2", "b2"):
            network.params[key] -= learning_rate * grad[key]
        train_loss_list.append(network.loss(x_batch, t_batch))
        if i % iter_per_epoch == 0:
            train_acc_list.append(network.accuracy(x_train, t_train))
            test_acc_list.append(network.accuracy(x_test, t_test))
    return network.accuracy(x_test, t_test), len(test_acc_list) + 1


# --- the pipeline's path ---

def run_pipeline(data, iterations, seed):
    x_train, t_train, x_test, t_test = data
    rng = np.random.default_rng(seed)
    network = TwoLayerNet(784, 50, 10, weight_init_std=0.01, rng=rng, dtype=np.float32)
    per_epoch = iterations_per_epoch(x_train.shape[0], 100)
    with (threadpool_limits(1, user_api="blas"),  # TrainNetwork's default blas_threads
          BackgroundEvaluator(x_train, t_train, x_test, t_test, 10) as evaluator):
        train(network, x_train, t_train, batch_size=100, learning_rate=0.1, iterations=iterations,
              sampling="with-replacement", rng=rng,
              on_checkpoint=lambda i, losses: evaluator.submit(i / per_epoch, i, network.params))
        rows = evaluator.results()
    assert len(rows) == len(checkpoint_iterations(x_train.shape[0], 100, iterations))
    return rows[-1]["test_accuracy"], len(rows)


class UserRun:
    """`luigi ... EvaluateNetwork` in a fresh process on a workspace whose processed data was
    made once beforehand; each call trains a new run (its seed) from scratch."""

    def __init__(self):
        self.work = Path(tempfile.mkdtemp(prefix="bench-user-run-"))
        self.common = ["--dataset", "fashion-mnist", "--local-dirs", f'["{FASHION}"]', "--mirrors", "[]"]
        for task in ("NormalizeImages", "EncodeLabels"):
            self.luigi(task)

    def luigi(self, task, *extra):
        command = [sys.executable, "-m", "luigi", "--module", "pipeline.tasks", task, "--local-scheduler",
                   *self.common, *extra]
        done = subprocess.run(command, cwd=self.work, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")

    def __call__(self, data, iterations, seed):
        shutil.rmtree(self.work / "artifacts", ignore_errors=True)
        self.luigi("EvaluateNetwork", "--iterations", str(iterations), "--seed", str(seed))
        (report,) = (self.work / "artifacts" / "fashion-mnist").glob("*/report/metrics.json")
        import json
        metrics = json.loads(report.read_text())
        return metrics["final"]["test_accuracy"], len(list(report.parent.parent.glob("checkpoints/*.h5")))


# --- PyTorch on the CPU, same algorithm ---

def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    return torch


def run_torch(data, iterations, seed):
    torch = torch_or_none()
    x_train, t_train, x_test, t_test = (torch.from_numpy(np.ascontiguousarray(d)) for d in data)
    generator = torch.Generator().manual_seed(seed)
    W1 = (0.01 * torch.randn(784, 50, generator=generator)).requires_grad_()
    b1 = torch.zeros(50, requires_grad=True)
    W2 = (0.01 * torch.randn(50, 10, generator=generator)).requires_grad_()
    b2 = torch.zeros(10, requires_grad=True)
    params = (W1, b1, W2, b2)

    def logits(x):
        return torch.sigmoid(x @ W1 + b1) @ W2 + b2

    def accuracy(x, t):
        with torch.no_grad():
            return (logits(x).argmax(dim=1) == t).float().mean().item()

    train_size, batch_size, learning_rate = x_train.shape[0], 100, 0.1
    per_epoch = iterations_per_epoch(train_size, batch_size)
    evaluations = 0
    for i in range(iterations):
        batch = torch.randint(0, train_size, (batch_size,), generator=generator)
        loss = torch.nn.functional.cross_entropy(logits(x_train[batch]), t_train[batch])
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in params:
                p -= learning_rate * p.grad
        if i % per_epoch == 0:
            accuracy(x_train, t_train), accuracy(x_test, t_test)
            evaluations += 1
    return accuracy(x_test, t_test), evaluations + 1


BASELINE = "baseline (book, numpy float64)"
PIPELINE = "pipeline (float32, evaluation on a 2nd thread)"
USER_RUN = "luigi ... EvaluateNetwork (whole task chain)"
PYTORCH = "pytorch (CPU float32, 2 threads)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10000)
    parser.add_argument("--generated", action="store_true", help="generated data even if Fashion-MNIST is installed")
    parser.add_argument("--skip-chain", action="store_true",
                        help="skip the chain's figures (normalization, cached rerun, peak memory: bench_chain.py)")
    args = parser.parse_args()

    x_train, t_train, x_test, t_test, description = load_data(args.generated)
    data = (x_train, t_train, x_test, t_test)
    rows = {BASELINE: run_baseline, PIPELINE: run_pipeline}
    if FASHION.is_dir() and not args.generated:
        rows[USER_RUN] = UserRun()
    if torch_or_none() is not None:
        rows[PYTORCH] = run_torch
    else:
        print("pytorch: not importable, row skipped (pip install torch to add it)")

    print(f"data: {description}; {args.iterations} iterations of batch 100, hidden 50, "
          f"{args.repeats} interleaved repeats")
    times = {name: [] for name in rows}
    accuracies, evaluations = {}, {}
    for repeat in range(args.repeats):
        for name, function in rows.items():
            start = time.perf_counter()
            accuracies[name], evaluations[name] = function(data, args.iterations, seed=repeat)
            times[name].append(time.perf_counter() - start)

    baseline = statistics.median(times[next(iter(rows))])
    print(f"\n{'implementation':46} {'min s':>7} {'median s':>9} {'ratio':>6} {'evals':>6} {'test acc':>9}")
    for name in rows:
        median = statistics.median(times[name])
        print(f"{name:46} {min(times[name]):7.2f} {median:9.2f} {median / baseline:6.2f} "
              f"{evaluations[name]:6d} {accuracies[name]:9.4f}")
    print("each repeat, in order (s): " + "; ".join(
        f"{name.split(' (')[0]} {', '.join(f'{t:.2f}' for t in times[name])}" for name in rows))
    if PYTORCH in times:
        ratio = statistics.median(times[PIPELINE]) / statistics.median(times[PYTORCH])
        print(f"\npipeline / pytorch: {ratio:.2f}")
    if USER_RUN in times:
        shutil.rmtree(rows[USER_RUN].work, ignore_errors=True)
        overhead = statistics.median(times[USER_RUN]) - statistics.median(times[PIPELINE])
        print(f"the whole EvaluateNetwork run around training and evaluation: {overhead:+.2f} s")
    print("(accuracy: the last repeat's final test accuracy; evals: full train+test evaluations, or for the\n"
          " whole chain the checkpoints written, each of them evaluated)")
    if not args.skip_chain:
        print()
        if FASHION.is_dir():
            import bench_chain
            bench_chain.measure_chain(args.repeats)
        else:
            print("chain figures skipped: they need real Fashion-MNIST (apt-get install dataset-fashion-mnist)")


if __name__ == "__main__":
    main()
