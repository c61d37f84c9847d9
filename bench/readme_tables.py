"""Markdown tables of benchmark results, as the README shows them.

Reads the JSON files written by `bench/accuracy.py` and `bench/throughput.py`
and prints their figures as Markdown tables, so every number in the README's
results section comes from a result file:

    python bench/readme_tables.py bench/results/accuracy_*.json \
        bench/results/throughput_*.json

Accuracy files give, per method: the number of seeds, the mean +- sample
standard deviation over the seeds of the mean branch, the best branch and
the ensemble on the test set and on the held-out training images, the gain
of the mean branch over the baseline paired by seed, and the training time;
for the methods with pre-trained teachers, the teachers' accuracy; for a
file of `--resample` runs, also each method's paired difference to the
baseline with its 95% Student's t interval, and where the spread comes from
(`bench/spread.py`). They
are summarized from the file's runs by `bench/accuracy.py`'s `summarize`
as it is now, not read from the summary stored in the file: a run's best
branch is the branch with the best accuracy on the other set (held-out
images for the test set, and the other way round), scored on this one.
Throughput files give the CPU, the libraries' versions and TensorFlow's
thread counts (each "not recorded" where the file lacks it), the images per
second of every variant (median, min and max over the rounds) and the time
ratios (median over the rounds and, where the file has it, its 95%
confidence interval), among them those of keras-one's ONE on the JAX and
PyTorch backends against TensorFlow.
"""

import argparse
import importlib.util
import json
import os

import numpy as np

BASELINE = "baseline"


def _cell(stats):
    if not stats:
        return "-"
    if stats["n"] < 2:
        return f"{stats['mean']:.2f}"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def _format_gains(gains):
    """`mean +- sample std` of per-seed gains in points, or `-`."""
    if not gains:
        return "-"
    if len(gains) == 1:
        return f"{gains[0]:+.2f} (1 seed)"
    return f"{np.mean(gains):+.2f} ± {np.std(gains, ddof=1):.2f}"


def _paired_gain(runs, name, prefix):
    """`name`'s mean branch minus the baseline's, seed by seed (as
    `bench/accuracy.py` pairs them)."""
    paired = _script("accuracy").paired_differences(runs, prefix=prefix)
    entry = paired.get(name, {}).get("mean_branch")
    return _format_gains(entry["differences"] if entry else [])


def _ensemble_gain(runs, name, prefix):
    """`name`'s ensemble minus its mean branch, seed by seed."""
    branches, ensemble = (
        f"{prefix}branch_accuracy",
        f"{prefix}ensemble_accuracy",
    )
    return _format_gains(
        [
            100 * (run[ensemble] - np.mean(run[branches]))
            for run in runs
            if run["method"] == name
            and run.get(ensemble) is not None
            and branches in run
        ]
    )


def _script(name):
    """`bench/<name>.py`, loaded from its file (once)."""
    if name not in _SCRIPTS:
        path = os.path.join(
            os.path.dirname(os.path.abspath(__file__)), f"{name}.py"
        )
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    return _SCRIPTS[name]


_SCRIPTS = {}


def _best_cell(entry, prefix):
    """The best branch's cell, marked when picked on the set it is scored
    on (a file without held-out images)."""
    cell = _cell(entry.get(f"{prefix}best_branch"))
    if entry.get(f"{prefix}best_branch_picked_on") == "itself":
        cell += " (picked on this set)"
    return cell


def accuracy_tables(results):
    protocol = results["protocol"]
    runs = results["runs"]
    summary = _script("accuracy").summarize(runs)
    lines = [
        "Best branch: picked on the other set (test: the branch best on "
        "the held-out images), scored on this one.",
        "",
        f"Protocol: {json.dumps(protocol)}",
        "",
        "| method | seeds | split | mean branch | best branch | ensemble "
        "| mean branch - baseline (paired) | ensemble - mean branch "
        "| train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary.items():
        for prefix, split in (("", "test"), ("heldout_", "held-out")):
            if f"{prefix}mean_branch" not in entry:
                continue
            gain = "-" if name == BASELINE else _paired_gain(runs, name, prefix)
            seconds = entry["train_seconds"]["mean"] if not prefix else None
            lines.append(
                f"| {name} | {len(entry['seeds'])} | {split} "
                f"| {_cell(entry[f'{prefix}mean_branch'])} "
                f"| {_best_cell(entry, prefix)} "
                f"| {_cell(entry.get(f'{prefix}ensemble'))} "
                f"| {gain} | {_ensemble_gain(runs, name, prefix)} "
                f"| {'' if seconds is None else f'{seconds:.0f}'} |"
            )
        for prefix, split in (("test_", "test"), ("heldout_", "held-out")):
            teacher = entry.get(f"teacher_{prefix}accuracy")
            if teacher:
                lines.append(
                    f"| {name}'s teachers ({entry['teacher_model']}) "
                    f"| {teacher['n']} teacher{'s' * (teacher['n'] != 1)} "
                    f"| {split} | {_cell(teacher)} "
                    "| | | | | |"
                )
    return "\n".join(lines)


def resampled_tables(results, last=5):
    """A `--resample` file's paired differences to the baseline (95% t
    intervals) on both sets, and where its spread comes from
    (`bench/spread.py`, over the last `last` epochs)."""
    accuracy, spread = _script("accuracy"), _script("spread")
    lines = []
    for prefix, split in (("", "test"), ("heldout_", "held-out")):
        paired = accuracy.paired_differences(results["runs"], prefix=prefix)
        if paired:
            lines += [f"Paired with the baseline ({split}):", ""]
            lines += [accuracy.format_paired(paired), ""]
    report = spread.analyse(results, last)
    return "\n".join(lines + [spread.format_report(report, last)])


# The libraries whose versions a throughput file records, as named.
LIBRARIES = (
    ("tensorflow", "TensorFlow"),
    ("keras", "Keras"),
    ("jax", "JAX"),
    ("torch", "PyTorch"),
)


def _machine_line(machine):
    """The CPU, the libraries' versions and TensorFlow's thread counts of a
    throughput file."""
    # Older result files do not name the CPU.
    cpu = machine.get("cpu", "CPU not recorded")
    versions = ", ".join(
        f"{label} {machine[key]}" for key, label in LIBRARIES if key in machine
    )
    parts = [f"{cpu}, {machine.get('cpu_count')} cores", versions]
    parts.append(_threads(machine))
    return "Machine: " + "; ".join(part for part in parts if part)


def _threads(machine):
    """TensorFlow's thread counts as recorded. Older files recorded its
    API's `intra_op_threads`, 0 when not set: its default, not a count."""
    intra = machine.get("intra_op_threads")
    if not intra:
        return "TensorFlow threads not recorded"
    inter = machine.get("inter_op_threads")
    inter = f", {inter} inter-op" if inter else ""
    return f"TensorFlow threads: {intra} intra-op{inter}"


def throughput_tables(results):
    arguments = results["arguments"]
    lines = [
        f"Arguments: model {arguments['model']}, batch "
        f"{arguments['batch_size']}, {arguments['branches']} branches, "
        f"{arguments['rounds']} rounds of {arguments['window_steps']} steps, "
        f"threads {arguments.get('threads') or 'default'}, "
        f"{'CPU' if arguments.get('cpu_time') else 'wall'} time; "
        f"load average before/after {results.get('load_average')}",
        "",
        _machine_line(results.get("machine", {})),
        "",
        "| variant | img/s (median) | min | max |",
        "|---|---|---|---|",
    ]
    for name, stats in results["images_per_second"].items():
        lines.append(
            f"| {name} | {stats['median']:.0f} | {stats['min']:.0f} "
            f"| {stats['max']:.0f} |"
        )
    lines += [
        "",
        "| time ratio | median | 95% CI of the median | per round |",
        "|---|---|---|---|",
    ]
    for name, ratio in results["time_ratios"].items():
        rounds = ", ".join(f"{value:.2f}" for value in ratio["per_round"])
        # Older result files have no interval.
        interval = ratio.get("ci95")
        interval = f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else "-"
        lines.append(
            f"| {name} | {ratio['time_ratio']:.3f} | {interval} | {rounds} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="result JSON files")
    args = parser.parse_args(argv)
    for path in args.results:
        with open(path) as file:
            results = json.load(file)
        print(f"### {path}\n")
        if "runs" in results:
            print(accuracy_tables(results))
            if results.get("protocol", {}).get("resample"):
                print()
                print(resampled_tables(results))
        elif "environment" in results:  # bench/accelerator_speed.py's
            _script("accelerator_speed").main(["--summary", path])
        elif "images_per_second" in results:
            print(throughput_tables(results))
        else:
            raise SystemExit(f"{path}: not a benchmark result file")
        print()


if __name__ == "__main__":
    main()
