"""The whole chain as a user runs it: normalization time, a first run, a fully cached rerun,
and the peak memory of training.

    .venv/bin/python bench/bench_chain.py             # Fashion-MNIST from Debian's package

Each measurement runs `mnist-pipeline` (or one Luigi task) in a fresh process, in a
temporary workspace, on real Fashion-MNIST (Debian's dataset-fashion-mnist; there is no
generated fallback here, since the point is the real files). Wall seconds include the
interpreter's start-up, as a shell user would see them. Peak memory is the maximum
resident set size of the process, from getrusage.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FASHION = Path("/usr/share/datasets/fashion-mnist")
BIN = Path(sys.executable).parent


# Runs a command and reports the peak resident memory of its process tree's largest member.
MEASURE = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(done.returncode)")


def timed(command, cwd):
    """(wall seconds, peak RSS in MB) of one command in a fresh process; it must succeed."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *map(str, command)], cwd=cwd, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(map(str, command))}\n{done.stderr[-2000:]}")
    return wall, int(done.stderr.strip().splitlines()[-1]) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not FASHION.is_dir():
        sys.exit("needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    measure_chain(args.repeats)


def measure_chain(repeats):
    """Print the chain's figures (bench_training.py calls this too, to print everything in one run)."""
    common = ["--dataset", "fashion-mnist", "--local-dirs", f'["{FASHION}"]', "--mirrors", "[]"]

    normalize = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as work:
            timed([BIN / "luigi", "--module", "pipeline.tasks", "DownloadDataset", "--local-scheduler", *common], work)
            normalize.append(timed([BIN / "luigi", "--module", "pipeline.tasks", "NormalizeImages",
                                    "--local-scheduler", *common], work)[0])

    work = Path(tempfile.mkdtemp())
    try:
        timed([BIN / "luigi", "--module", "pipeline.tasks", "TrainNetwork", "--local-scheduler", "--iterations", "600",
               *common], work)  # data stages and a short run first, so the next line measures training
        shutil.rmtree(work / "artifacts")
        train_wall, train_peak = timed([BIN / "luigi", "--module", "pipeline.tasks", "TrainNetwork",
                                        "--local-scheduler", *common], work)
        first, _ = timed([BIN / "mnist-pipeline", "run", *common[:2]], work)
        cached = [timed([BIN / "mnist-pipeline", "run", *common[:2]], work)[0] for _ in range(repeats)]
    finally:
        shutil.rmtree(work)

    print("Fashion-MNIST 60000/10000, default hyperparameters (10000 iterations, batch 100, hidden 50)")
    print(f"normalize (NormalizeImages, incl. start-up): min {min(normalize):.2f} s, "
          f"median {statistics.median(normalize):.2f} s")
    print(f"TrainNetwork alone (incl. start-up and loading): {train_wall:.2f} s, peak memory {train_peak:.0f} MB")
    print(f"mnist-pipeline run after training (gradient check already done; evaluation + report): {first:.2f} s")
    print(f"fully cached rerun of mnist-pipeline run: min {min(cached):.2f} s, median {statistics.median(cached):.2f} s")


if __name__ == "__main__":
    main()
