"""Where the run-to-run spread of an accuracy benchmark comes from.

Reads a results file of `bench/accuracy.py` (best one made with
`--resample`, whose runs record their training slice) and splits each
method's spread of the mean-branch accuracy into the parts a protocol could
act on, without training anything:

- **between slices and within a slice**: a one-way random-effects analysis
  of variance over the training slices (`train_slice`): the variance due to
  which 2,500 images a run trains on, and the variance left between seeds
  on one slice (initialisation, data order, augmentation);
- **last epoch**: the epoch-to-epoch fluctuation of a run's accuracy over
  its last `--last` epochs (from the per-epoch history that Keras recorded
  on the validation data, here the test images), where the learning rate
  is near 0 and the weights barely move: an upper bound on what evaluating
  a mean of the last epochs, or recomputing BatchNormalization's statistics,
  could remove from one run's score;
- **between branches**: the spread of a multi-branch run's branches around
  their own mean, which the mean-branch score averages away;
- **pairing**: the spread of the paired difference (method minus baseline,
  same seed and slice) against the spread two unpaired runs would have, and
  the paired differences averaged per slice with a 95% Student's t interval
  over the slices (pairs that share a slice are not independent).

The last-epoch figures read the test images' curve, so they are a
diagnostic only: a protocol change must be decided on training-set slices,
never on the test images (issue 21). Accuracies are in points (%).

    python bench/spread.py \
        bench/results/accuracy_resnet20_2500x80_resampled.json --last 5
"""

import argparse
import importlib.util
import json
import os

import numpy as np


def _accuracy_script():
    path = os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "accuracy.py"
    )
    spec = importlib.util.spec_from_file_location("bench_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def variance_components(values, groups):
    """One-way random-effects ANOVA of `values` grouped by `groups`.

    Returns `{"total", "between", "within", "groups", "n"}`: the sample
    variance of all values, the estimated variance between groups
    (`(MSB - MSW) / n0`, clipped at 0; `n0` is the usual size for unequal
    groups) and within them (`MSW`, pooled), in squared units of `values`.
    `between` is `None` with fewer than 2 groups, `within` with no group of
    2 or more values.
    """
    values = np.asarray(values, "float64")
    groups = np.asarray(groups)
    labels = list(dict.fromkeys(groups.tolist()))
    members = [values[groups == label] for label in labels]
    n, k = len(values), len(labels)
    total = float(values.var(ddof=1)) if n > 1 else None
    within_df = n - k
    within = (
        sum(float(((m - m.mean()) ** 2).sum()) for m in members) / within_df
        if within_df > 0
        else None
    )
    between = None
    if k > 1 and within is not None:
        msb = sum(len(m) * (m.mean() - values.mean()) ** 2 for m in members) / (
            k - 1
        )
        n0 = (n - sum(len(m) ** 2 for m in members) / n) / (k - 1)
        between = max(0.0, float(msb - within) / n0)
    return {
        "total": total,
        "between": between,
        "within": within,
        "groups": k,
        "n": n,
    }


def _curve(history, prefix="val_"):
    """A run's per-epoch mean-branch accuracy (points) from its history."""
    if f"{prefix}accuracy" in history:
        return 100 * np.asarray(history[f"{prefix}accuracy"], "float64")
    branches = sorted(
        key
        for key in history
        if key.startswith(f"{prefix}branch_") and key.endswith("_accuracy")
    )
    if not branches:
        return None
    return 100 * np.mean([history[key] for key in branches], axis=0)


def last_epochs(runs, last):
    """Epoch-to-epoch fluctuation over the last `last` epochs.

    Per run, the sample standard deviation of its mean-branch curve over
    its last `last` epochs; returns their root mean square (points) and the
    number of runs with a long enough curve, or `None` if there are none.
    """
    spreads = []
    for run in runs:
        curve = _curve(run.get("history", {}))
        if curve is not None and len(curve) >= max(last, 2):
            spreads.append(curve[-last:].var(ddof=1))
    if not spreads:
        return None
    return {"rms_std": float(np.sqrt(np.mean(spreads))), "n": len(spreads)}


def branch_spread(runs, prefix=""):
    """Root mean square, over runs, of the branches' sample standard
    deviation around their run's mean (points); `None` for one branch."""
    variances = [
        np.var(100 * np.asarray(run[f"{prefix}branch_accuracy"]), ddof=1)
        for run in runs
        if len(run.get(f"{prefix}branch_accuracy", [])) > 1
    ]
    if not variances:
        return None
    return float(np.sqrt(np.mean(variances)))


def slice_means(seeds, differences, slice_of, t_interval):
    """The paired differences averaged per training slice, and the 95% t
    interval over those slice means.

    Pairs of one slice share their training images, so they are not
    independent draws; the slice means are (for disjoint slices), at the
    cost of fewer degrees of freedom (slices - 1). Returns `{"slices",
    "mean", "t_interval_95", "pairs"}` (the interval `None` for one slice;
    `pairs`: `[seed, slice, difference]` of every pair, by seed).
    """
    groups = {}
    for seed, difference in zip(seeds, differences, strict=True):
        groups.setdefault(slice_of[seed], []).append(difference)
    means = [float(np.mean(values)) for values in groups.values()]
    return {
        "slices": len(means),
        "mean": float(np.mean(means)),
        "t_interval_95": t_interval(means),
        "pairs": sorted(
            [seed, slice_of[seed], float(difference)]
            for seed, difference in zip(seeds, differences, strict=True)
        ),
    }


def analyse(results, last=5, reference="baseline"):
    """Every method's spread, split as the module docstring says."""
    accuracy = _accuracy_script()
    runs = results["runs"]
    report = {}
    for prefix, name in (("", "test"), ("heldout_", "heldout")):
        paired = accuracy.paired_differences(runs, reference, prefix)
        for method in dict.fromkeys(run["method"] for run in runs):
            group = [
                run
                for run in runs
                if run["method"] == method and f"{prefix}branch_accuracy" in run
            ]
            if not group:
                continue
            scores = [
                accuracy._run_scores(run, prefix)["mean_branch"]
                for run in group
            ]
            slices = [run.get("train_slice", 0) for run in group]
            entry = {
                "runs": len(group),
                "variance": variance_components(scores, slices),
                "branch_std": branch_spread(group, prefix),
            }
            if name == "test":
                entry["last_epochs"] = last_epochs(group, last)
            pair = paired.get(method, {}).get("mean_branch")
            if pair and pair["n"] > 1:
                seeds = set(pair["seeds"])
                base = [
                    accuracy._run_scores(run, prefix)["mean_branch"]
                    for run in runs
                    if run["method"] == reference and run["seed"] in seeds
                ]
                own = [
                    accuracy._run_scores(run, prefix)["mean_branch"]
                    for run in group
                    if run["seed"] in seeds
                ]
                entry["paired_std"] = pair["std"]
                entry["unpaired_std"] = float(
                    np.sqrt(np.var(base, ddof=1) + np.var(own, ddof=1))
                )
                entry["by_slice"] = slice_means(
                    pair["seeds"],
                    pair["differences"],
                    {run["seed"]: run.get("train_slice", 0) for run in group},
                    accuracy.t_interval,
                )
            report.setdefault(name, {})[method] = entry
    return report


def _sd(variance):
    return "-" if variance is None else f"{np.sqrt(variance):.2f}"


def format_report(report, last):
    lines = [
        "Standard deviations in points; 'slices' and 'seeds' split the "
        "spread of the mean branch between training slices and seeds on "
        "one slice.",
        "",
        "| set | method | runs | mean branch (all runs) | slices | seeds "
        f"| last {last} epochs (test curve) | branches in a run "
        "| paired diff. | unpaired |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, methods in report.items():
        for method, entry in methods.items():
            variance = entry["variance"]
            epochs = entry.get("last_epochs")
            lines.append(
                "| "
                + " | ".join(
                    [
                        name,
                        method,
                        str(entry["runs"]),
                        _sd(variance["total"]),
                        _sd(variance["between"]),
                        _sd(variance["within"]),
                        "-" if not epochs else f"{epochs['rms_std']:.2f}",
                        "-"
                        if entry["branch_std"] is None
                        else f"{entry['branch_std']:.2f}",
                        "-"
                        if "paired_std" not in entry
                        else f"{entry['paired_std']:.2f}",
                        "-"
                        if "unpaired_std" not in entry
                        else f"{entry['unpaired_std']:.2f}",
                    ]
                )
                + " |"
            )
    lines += [
        "",
        "Paired differences of the mean branch averaged per training slice "
        "(pairs of one slice share their images; the slices do not):",
        "",
        "| set | method | slices | mean difference | 95% t interval over "
        "slices | each pair (seed/slice: difference) |",
        "|---|---|---|---|---|---|",
    ]
    for name, methods in report.items():
        for method, entry in methods.items():
            by_slice = entry.get("by_slice")
            if not by_slice:
                continue
            interval = by_slice["t_interval_95"]
            lines.append(
                f"| {name} | {method} | {by_slice['slices']} "
                f"| {by_slice['mean']:+.2f} | "
                + (
                    "-"
                    if interval is None
                    else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"
                )
                + " | "
                + ", ".join(
                    f"{seed}/{index}: {difference:+.2f}"
                    for seed, index, difference in by_slice["pairs"]
                )
                + " |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a bench/accuracy.py results file")
    parser.add_argument(
        "--last",
        type=int,
        default=5,
        help="epochs at the end of each run whose fluctuation is measured "
        "(default 5)",
    )
    parser.add_argument("--output", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.last < 2:
        parser.error(f"--last must be 2 or more, got {args.last}")
    try:
        with open(args.results) as file:
            results = json.load(file)
    except (OSError, ValueError) as error:
        parser.error(f"cannot read {args.results}: {error}")
    if not isinstance(results, dict) or "runs" not in results:
        parser.error(f"{args.results}: not a bench/accuracy.py results file")
    report = analyse(results, args.last)
    print(format_report(report, args.last))
    if args.output:
        if os.path.exists(args.output):
            parser.error(
                f"{args.output} exists; give another --output "
                "(no run overwrites another)"
            )
        with open(f"{args.output}.tmp", "w") as file:
            json.dump({"last": args.last, "spread": report}, file, indent=1)
        os.replace(f"{args.output}.tmp", args.output)


if __name__ == "__main__":
    main()
