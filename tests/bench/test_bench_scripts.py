"""The benchmark scripts in a tiny mode (seconds), so that they keep working."""

import argparse
import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


def load_script(name):
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", BENCH / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    y_train = np.arange(48) % 4
    x_train = rng.integers(0, 256, (48, 8, 8, 3), dtype="uint8")
    # Learnable: class k is brighter in band k.
    for i, label in enumerate(y_train):
        x_train[i, 2 * label : 2 * label + 2] = 255
    np.savez(
        path,
        x_train=x_train,
        y_train=y_train,
        x_test=x_train[:16],
        y_test=y_train[:16],
    )
    return path


@pytest.mark.slow
def test_accuracy_benchmark_tiny(tiny_npz, tmp_path, capsys, monkeypatch):
    # Read back into each run's record (it sets the run's speed).
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "7")
    accuracy = load_script("accuracy")
    output = tmp_path / "results" / "accuracy.json"
    argv = [
        "--data", str(tiny_npz), "--model", "resnet8", "--epochs", "1",
        "--seeds", "0", "1", "--methods", "baseline", "one",
        "--train-examples", "32", "--batch-size", "16", "--verbose", "0",
        "--output", str(output),
    ]  # fmt: skip
    results = accuracy.main(argv)
    saved = json.loads(output.read_text())
    assert output.with_suffix(".png").stat().st_size > 0
    runs = saved["runs"]
    assert [(r["method"], r["seed"]) for r in runs] == [
        ("baseline", 0), ("one", 0), ("baseline", 1), ("one", 1),
    ]  # fmt: skip
    one = [r for r in runs if r["method"] == "one"]
    assert all(len(r["branch_accuracy"]) == 3 for r in one)
    assert {r["intra_op_threads"] for r in runs} == {7}
    # 32 of the 48 training images are trained on, 16 held out.
    assert all(len(r["heldout_branch_accuracy"]) == 3 for r in one)
    # The summary is the mean and sample std (in %) over seeds; the best
    # branch is picked on the held-out images and scored on the test set
    # (tied branches count with their mean).
    branches = np.array([r["branch_accuracy"] for r in one]) * 100
    heldout = np.array([r["heldout_branch_accuracy"] for r in one]) * 100
    picked = [
        scores[picker == picker.max()].mean()
        for scores, picker in zip(branches, heldout, strict=True)
    ]
    summary = saved["summary"]["one"]
    np.testing.assert_allclose(summary["best_branch"]["mean"], np.mean(picked))
    assert summary["best_branch_picked_on"] == "heldout"
    assert summary["heldout_best_branch_picked_on"] == "test"
    # Every result file records the CPU and TensorFlow's thread counts.
    machine = saved["machine"]
    assert machine["cpu"] and machine["cpu_count"] >= 1
    assert machine["intra_op_threads"] == 7
    assert machine["inter_op_threads"] >= 1
    assert all(r["cpu"] == machine["cpu"] for r in runs)
    np.testing.assert_allclose(
        summary["mean_branch"]["std"], branches.mean(axis=1).std(ddof=1)
    )
    ensemble = np.array([r["ensemble_accuracy"] for r in one]) * 100
    np.testing.assert_allclose(summary["ensemble"]["mean"], ensemble.mean())
    assert "ensemble" not in saved["summary"]["baseline"]
    assert results["summary"]["one"] == summary
    # A rerun skips the runs already in the file.
    again = accuracy.main(argv)
    assert len(again["runs"]) == 4
    assert "=== " not in capsys.readouterr().out.split("chart:")[-1]
    # Another protocol in the same file is refused.
    with pytest.raises(SystemExit, match="another protocol"):
        accuracy.main(argv[:-2] + ["--epochs", "2", "--output", str(output)])


@pytest.mark.slow
def test_accuracy_benchmark_trains_and_reuses_teachers(
    tiny_npz, tmp_path, capsys
):
    import keras

    accuracy = load_script("accuracy")
    output = tmp_path / "accuracy.json"

    def arguments(seed, *methods):
        return [
            "--data", str(tiny_npz), "--model", "resnet8", "--epochs", "1",
            "--seeds", str(seed), "--methods", *methods, "--branches", "2",
            "--teacher-model", "resnet8", "--train-examples", "32",
            "--rampup-fraction", "1",
            "--batch-size", "16", "--verbose", "0", "--output", str(output),
        ]  # fmt: skip

    results = accuracy.main(arguments(0, "kd", "ekd", "sokd"))
    printed = capsys.readouterr().out
    # Two teachers trained (KD and SOKD share teacher 0; EKD's second
    # branch has its own), each once.
    assert printed.count("=== teacher") == 2
    folder = tmp_path / "accuracy_teachers"
    saved = sorted(path.name for path in folder.glob("*.keras"))
    assert saved == [
        "resnet8_seed0_teacher0.keras", "resnet8_seed0_teacher1.keras",
    ]  # fmt: skip
    runs = {run["method"]: run for run in results["runs"]}
    assert [t["seed"] for t in runs["kd"]["teachers"]] == [1000]
    assert runs["sokd"]["teachers"] == runs["kd"]["teachers"]
    assert [t["seed"] for t in runs["ekd"]["teachers"]] == [1000, 1001]
    assert len(runs["ekd"]["branch_accuracy"]) == 2
    assert len(runs["kd"]["branch_accuracy"]) == 1
    # KD's paper has no ramp-up; the benchmark ramps SOKD up (RAMP_UP_TOO).
    assert runs["kd"]["rampup_epochs"] == 0
    assert runs["sokd"]["rampup_epochs"] == 1
    # The recorded accuracy is that of the saved teacher on the test images.
    teacher = keras.saving.load_model(folder / saved[1])
    with np.load(tiny_npz) as arrays:
        x_train, y_train = arrays["x_train"], arrays["y_train"]
        x_test, y_test = arrays["x_test"], arrays["y_test"]
    subset = accuracy._stratified_subset(y_train, 32)
    pixels = x_train[subset].reshape(-1, 3).astype("float64") / 255.0
    x = (x_test / 255.0 - pixels.mean(axis=0)) / pixels.std(axis=0)
    predicted = np.argmax(teacher.predict(x, verbose=0), axis=-1)
    np.testing.assert_allclose(
        runs["ekd"]["teachers"][1]["test_accuracy"],
        np.mean(predicted == y_test),
        atol=1e-6,
    )
    summary = results["summary"]["ekd"]
    assert summary["teacher_model"] == "resnet8"
    assert summary["teacher_test_accuracy"]["n"] == 2
    # A deleted run is trained again from the saved teacher, not a new one;
    # another seed gets a teacher of its own.
    results["runs"] = [r for r in results["runs"] if r["method"] != "kd"]
    output.write_text(json.dumps(results))
    again = accuracy.main(arguments(0, "kd"))
    assert "=== teacher" not in capsys.readouterr().out
    assert again["runs"][-1]["teachers"] == runs["kd"]["teachers"]
    accuracy.main(arguments(1, "kd"))
    assert capsys.readouterr().out.count("=== teacher") == 1
    assert (folder / "resnet8_seed1_teacher0.keras").exists()
    # A saved teacher is not reused for another recipe.
    other = arguments(0, "kd")
    other[other.index("--epochs") + 1] = "2"
    other[-1] = str(tmp_path / "other.json")
    with pytest.raises(SystemExit, match="another recipe"):
        accuracy.main(other + ["--teacher-dir", str(folder)])


@pytest.mark.slow
def test_accuracy_benchmark_runs_pipelines(tiny_npz, tmp_path, capsys):
    import keras

    from keras_one import recipes

    accuracy = load_script("accuracy")
    output = tmp_path / "accuracy.json"
    argv = [
        "--data", str(tiny_npz), "--model", "resnet8", "--epochs", "1",
        "--seeds", "0", "--teacher-model", "resnet8",
        "--methods", "born_again", "sparse_representation_matching",
        "--generations", "2", "--train-examples", "32",
        "--batch-size", "16", "--verbose", "0", "--output", str(output),
    ]  # fmt: skip
    results = accuracy.main(argv)
    runs = {run["method"]: run for run in results["runs"]}
    ban, srm = runs["born_again"], runs["sparse_representation_matching"]
    assert ban["options"]["generations"] == 2
    assert ban["options"]["alpha"] == 1.0  # the pipeline's own default
    assert list(ban["stage_seconds"]) == [
        "generation_0", "generation_1", "generation_2",
    ]  # fmt: skip
    assert ban["train_seconds"] == pytest.approx(
        sum(ban["stage_seconds"].values())
    )
    # The deployed network is the last generation, read back from its
    # file and scored on the test and held-out images; the ensemble
    # averages the born-again generations 1 and 2.
    _, test_ds, heldout_ds, _ = accuracy.load_data(accuracy.parse_args(argv), 0)
    folder = tmp_path / "accuracy_pipelines" / "born_again_seed0"
    last = keras.saving.load_model(folder / "generation_2.keras")
    assert ban["branch_accuracy"] == [
        pytest.approx(recipes.accuracy(last, test_ds))
    ]
    assert ban["heldout_branch_accuracy"] == [
        pytest.approx(recipes.accuracy(last, heldout_ds))
    ]
    assert ban["stage_accuracy"]["generation_2"] == pytest.approx(
        ban["branch_accuracy"][0]
    )
    assert ban["ensemble_accuracy"] is not None
    # SRM learns from teacher 0 of the seed (KD's), with its own optimizer;
    # its coding stage has a loss, no accuracy.
    assert [t["seed"] for t in srm["teachers"]] == [1000]
    teachers = tmp_path / "accuracy_teachers"
    assert (teachers / "resnet8_seed0_teacher0.keras").exists()
    assert "official Adam" in srm["optimizer"]
    assert srm["ensemble_accuracy"] is None
    assert list(srm["stage_accuracy"]) == [
        "sparse_coding", "srm_init", "student",
    ]  # fmt: skip
    assert srm["stage_accuracy"]["sparse_coding"] is None
    assert "sparse_representation_matching" in results["summary"]
    # A rerun skips them; other options in the same file are refused.
    capsys.readouterr()
    accuracy.main(argv)
    assert "=== " not in capsys.readouterr().out
    other = argv[:]
    other[other.index("--generations") + 1] = "3"
    with pytest.raises(SystemExit, match="born_again runs with options"):
        accuracy.main(other)


def test_accuracy_benchmark_merges_results_of_parallel_runs(tmp_path, capsys):
    accuracy = load_script("accuracy")
    argv = ["--data", "data.npz", "--epochs", "3", "--methods", "baseline",
            "one", "--output", str(tmp_path / "all.json")]  # fmt: skip
    protocol = accuracy.protocol_of(accuracy.parse_args(argv))

    def run(method, seed, accuracy_value):
        branches = 1 if method == "baseline" else 3
        return {
            "method": method, "seed": seed, "train_seconds": 1.0,
            "branch_accuracy": [accuracy_value] * branches,
            "ensemble_accuracy": None if branches == 1 else accuracy_value,
        }  # fmt: skip

    parts = {
        # The same (method, seed) in two files: the first one read is kept.
        "all.json": [run("baseline", 0, 0.5), run("one", 0, 0.6)],
        "part1.json": [run("baseline", 1, 0.4), run("one", 0, 0.1)],
        "part2.json": [run("one", 1, 0.7)],
    }
    for name, runs in parts.items():
        results = {"protocol": protocol, "runs": runs}
        if name == "part2.json":
            # Written by a version that recorded resample: false.
            results["protocol"] = {**protocol, "resample": False}
        (tmp_path / name).write_text(json.dumps(results))
    merged = accuracy.main(
        argv
        + ["--seeds", "0", "1", "--merge"]
        + [str(tmp_path / name) for name in ("part1.json", "part2.json")]
    )
    # Every run was in a file: nothing was trained.
    assert "=== " not in capsys.readouterr().out
    saved = json.loads((tmp_path / "all.json").read_text())
    assert [(r["method"], r["seed"], r["branch_accuracy"][0])
            for r in saved["runs"]] == [
        ("baseline", 0, 0.5), ("one", 0, 0.6), ("baseline", 1, 0.4),
        ("one", 1, 0.7),
    ]  # fmt: skip
    assert saved["summary"] == merged["summary"]
    np.testing.assert_allclose(saved["summary"]["one"]["ensemble"]["mean"], 65)
    assert saved["summary"]["baseline"]["seeds"] == [0, 1]
    assert (tmp_path / "all.png").stat().st_size > 0
    assert "resample" not in saved["protocol"]
    # A file of another protocol is refused.
    other = {"protocol": {**protocol, "epochs": 4}, "runs": []}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="another protocol"):
        accuracy.main(argv + ["--merge", str(tmp_path / "other.json")])


def test_accuracy_benchmark_reads_the_methods_descriptions():
    from keras_one import methods

    accuracy = load_script("accuracy")

    def parse(*flags):
        return accuracy.parse_args(
            ["--data", "data.npz", "--epochs", "80", *flags]
        )

    def rampup(name, args):
        fraction = accuracy.rampup_fraction(name, args)
        return methods.rampup_epochs(methods.get(name), args.epochs, fraction)

    args = parse()
    # Each method's own ramp-up: ONE's 80 of 300 epochs; none for DML and
    # KD, as in their papers; SOKD ramped up as ONE (RAMP_UP_TOO).
    assert [rampup(name, args) for name in ("one", "dml", "kd", "sokd")] == [
        21, 0, 0, 21,
    ]  # fmt: skip
    # --rampup-fraction replaces the fraction of the methods that ramp up.
    args = parse("--rampup-fraction", "0.27")
    assert [rampup(name, args) for name in ("one", "dml", "kd", "sokd")] == [
        22, 0, 0, 22,
    ]  # fmt: skip
    args = parse("--branches", "4")
    assert [
        accuracy.teacher_count(name, args) for name in ("one", "kd", "ekd")
    ] == [0, 1, 4]


def test_accuracy_benchmark_loads_the_data_a_method_describes(tiny_npz):
    """MCL-OKD (`info.example_index`): indexed data, labels by index."""
    from keras_one import methods

    accuracy = load_script("accuracy")
    args = accuracy.parse_args(
        ["--data", str(tiny_npz), "--train-examples", "32",
         "--batch-size", "16", "--epochs", "10"]
    )  # fmt: skip
    options = methods.data_options(methods.get("mcl_okd"), args.branches)
    train_ds, test_ds, heldout_ds, _ = accuracy.load_data(args, 0, **options)
    for dataset in (train_ds, test_ds, heldout_ds):
        assert set(dataset.element_spec[0]) == {"image", "example_index"}
    method = accuracy._make_method("mcl_okd", args, (), train_ds)
    assert isinstance(method, methods.MCLOKD) and method.num_examples == 32
    assert method.rampup_epochs == 0  # none in the official code
    # PCL's views, through the same options.
    options = methods.data_options(methods.get("pcl"), args.branches)
    train_ds, _, _, _ = accuracy.load_data(args, 0, **options)
    assert len(train_ds.element_spec[0]) == args.branches


def test_accuracy_benchmark_rejects_bad_subset(tiny_npz, tmp_path):
    accuracy = load_script("accuracy")
    with pytest.raises(SystemExit, match="multiple of the number of classes"):
        accuracy.main(
            ["--data", str(tiny_npz), "--train-examples", "30",
             "--output", str(tmp_path / "a.json")]
        )  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        # argparse: usage and a one-line error, status 2.
        (["--epochs", "0"], "--epochs: must be a positive integer: 0"),
        (["--seeds", "-1"], "--seeds: must be an integer from 0 to 2**32"),
        (["--branches", "0"], "--branches: must be a positive integer"),
        (["--batch-size", "x"], "--batch-size: must be a positive integer"),
        (["--learning-rate", "nan"], "--learning-rate: must be a positive"),
        (["--weight-decay", "-1"], "--weight-decay: must be a number >= 0"),
        (["--rampup-fraction", "2"], "--rampup-fraction: must lie in [0, 1]"),
        (["--train-examples", "0"], "--train-examples: must be a positive"),
        # Checked before any data is read or any network trained.
        (["--seeds", "0", "0"], "--seeds lists 0 more than once"),
        (["--methods", "one", "one"], "--methods lists one more than once"),
        (["--methods", "nope"], "--methods nope: Unknown method 'nope'"),
        (["--methods", "one", "--branches", "1"], "at least 2 branches"),
        (["--model", "resnet7"], "--model resnet7: CIFAR ResNet depth"),
        (["--methods", "kd", "--teacher-model", "resnet7"], "--teacher-model"),
        (["--methods", "srm"], "Pipelines: ensemble_distillation, self_"),
        (["--members", "1"], "--members: must be at least 2"),
        (
            ["--members", "3"],
            "--members applies to the ensemble_distillation pipeline only: "
            "add it",
        ),
        (
            ["--generations", "3"],
            "--generations applies to the self_distillation and born_again "
            "pipelines only: add one",
        ),
        (
            ["--methods", "born_again", "--members", "3"],
            "leave out --members",
        ),
        (["--generations", "0"], "--generations: must be a positive integer"),
        (["--data", "missing.npz"], "--data missing.npz: no such file."),
        (["--data", "no/such/folder"], "--data no/such/folder: No file or"),
    ],
)
def test_accuracy_benchmark_refuses_bad_flags(tmp_path, capsys, flags, message):
    accuracy = load_script("accuracy")
    output = tmp_path / "a.json"
    data = str(tmp_path / "data.npz")
    np.savez(data, x_train=np.zeros((10, 8, 8, 1)), y_train=np.arange(10))
    with pytest.raises(SystemExit) as exit_info:
        accuracy.main(["--data", data, "--output", str(output), *flags])
    code = exit_info.value.code
    error = code if isinstance(code, str) else capsys.readouterr().err
    assert message in error.strip().splitlines()[-1]
    assert not output.exists()


@pytest.mark.slow
def test_throughput_benchmark_tiny(tmp_path, capsys, monkeypatch):
    # Read back into the machine record (TensorFlow's API reports 0).
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    throughput = load_script("throughput")
    output = tmp_path / "throughput.json"
    variants = ["baseline", "one", "dml", "handwritten", "one_bf16",
                "one_keras_bn_bf16", "torch", "torch_bf16"]  # fmt: skip
    results = throughput.main(
        ["--model", "resnet8", "--batch-size", "4", "--image-size", "8",
         "--branches", "2", "--rounds", "2", "--window-steps", "1",
         "--warmup-steps", "1",
         "--variants", *variants, "--cpu-time", "--output", str(output)]
    )  # fmt: skip
    saved = json.loads(output.read_text())
    speeds = saved["images_per_second"]
    try:
        import torch  # noqa: F401

        assert "torch" in speeds and "torch_bf16" in speeds
    except ImportError:
        assert "skipping torch" in capsys.readouterr().out
        variants.remove("torch")
        variants.remove("torch_bf16")
    assert sorted(speeds) == sorted(variants)
    for stats in speeds.values():
        assert len(stats["per_round"]) == 2
        assert stats["min"] <= stats["median"] <= stats["max"]
        assert stats["min"] > 0
    # Each ratio is the median over rounds of (time of A / time of B).
    ratio = saved["time_ratios"]["ONE-3 : three networks (N copies)"]
    expected = np.median(
        np.array(speeds["dml"]["per_round"])
        / np.array(speeds["one"]["per_round"])
    )
    np.testing.assert_allclose(ratio["time_ratio"], expected)
    assert results["time_ratios"].keys() == saved["time_ratios"].keys()
    # The CPU model and the thread counts TensorFlow runs with.
    machine = saved["machine"]
    assert machine["cpu"] == load_script("machine_info").cpu_name()
    # Its instruction sets, as /proc/cpuinfo lists them (x86 Linux).
    with open("/proc/cpuinfo") as file:
        flags = [line.split() for line in file if line.startswith("flags")]
    if flags:
        assert ("avx2" in machine["cpu_features"]["flags"]) == (
            "avx2" in flags[0]
        )
    assert machine["cpu"] and machine["cpu_count"] >= 1
    assert 1 <= machine["usable_cpus"] <= machine["cpu_count"]
    assert machine["intra_op_threads"] == 3
    assert machine["inter_op_threads"] >= 1


@pytest.mark.slow
def test_throughput_benchmark_other_backends(tmp_path):
    # From the command line: `--threads` configures TensorFlow, which can
    # only be done before it starts (here, other tests have started it).
    output = tmp_path / "throughput.json"
    # Two branches: ONE all the same, in fewer layers to build and compile
    # (only the plumbing is checked, not the speeds).
    subprocess.run(
        [sys.executable, str(BENCH / "throughput.py"),
         "--model", "resnet8", "--batch-size", "4", "--image-size", "8",
         "--branches", "2", "--rounds", "1", "--window-steps", "1",
         "--warmup-steps", "1",
         "--variants", "one", "one_jax", "one_torch", "--threads", "1",
         "--cpu-time", "--output", str(output)],
        check=True,
    )  # fmt: skip
    results = json.loads(output.read_text())
    speeds = results["images_per_second"]
    assert sorted(speeds) == ["one", "one_jax", "one_torch"]
    assert all(stats["min"] > 0 for stats in speeds.values())
    for name, label in (
        ("one_jax", "JAX backend : TensorFlow (ONE)"),
        ("one_torch", "PyTorch backend : TensorFlow (ONE)"),
    ):
        ratio = results["time_ratios"][label]
        np.testing.assert_allclose(
            ratio["time_ratio"],
            speeds["one"]["per_round"][0] / speeds[name]["per_round"][0],
        )
    # Each variant ran on its own backend, with the threads it was given.
    machine = results["machine"]
    assert machine["one_jax"]["backend"] == "jax"
    assert len(machine["one_jax"]["cpus"]) == 1
    assert machine["one_torch"] == {
        "backend": "torch",
        "dtype_policy": "float32",
        "torch_threads": 1,
    }
    # --threads 1 is TensorFlow's thread counts, as recorded.
    assert machine["intra_op_threads"] == machine["inter_op_threads"] == 1
    assert machine["cpu"]


def test_throughput_alternates_the_order_of_the_variants():
    throughput = load_script("throughput")
    calls = []

    def make_step(name):
        def step():
            calls.append(name)
            return {}

        return step

    args = argparse.Namespace(
        rounds=3, window_steps=2, warmup_steps=0, batch_size=4, cpu_time=False
    )
    windows = {
        name: throughput.timed(make_step(name), args)
        for name in ("a", "b", "c")
    }
    speeds = throughput.measure(windows, args)
    assert "".join(calls) == "".join(["aabbcc", "ccbbaa", "aabbcc"])
    assert {name: len(values) for name, values in speeds.items()} == {
        "a": 3, "b": 3, "c": 3,
    }  # fmt: skip


def _sign_test_coverage(n, k):
    """P(x_(k) <= median <= x_(n-k+1)) for n values: 1 - 2 P(Bin(n,.5) < k)."""
    probabilities = np.array([math.comb(n, i) for i in range(n + 1)]) / 2**n
    return 1 - 2 * probabilities[:k].sum()


@pytest.mark.parametrize("n", [5, 6, 8, 12, 20, 30, 41])
def test_throughput_median_confidence_interval(n):
    throughput = load_script("throughput")
    values = list(np.random.default_rng(n).permutation(np.arange(n) + 1.0))
    interval = throughput.median_confidence_interval(values)
    # The widest-k interval (x_(k), x_(n-k+1)) that still covers >= 95%.
    ranks = [
        k for k in range(1, n // 2 + 1) if _sign_test_coverage(n, k) >= 0.95
    ]
    if not ranks:
        assert interval is None
        return
    k = max(ranks)
    assert interval == [float(k), float(n - k + 1)]
    # Published sign-test ranks: n = 6 -> (1, 6), n = 20 -> (6, 15),
    # n = 30 -> (10, 21).
    known = {6: (1, 6), 20: (6, 15), 30: (10, 21)}
    if n in known:
        assert tuple(interval) == known[n]


def test_readme_tables_pair_seeds(tmp_path, capsys):
    tables = load_script("readme_tables")
    accuracy = load_script("accuracy")
    runs = [
        {"method": "baseline", "seed": 0, "branch_accuracy": [0.60]},
        {"method": "baseline", "seed": 1, "branch_accuracy": [0.64]},
        {"method": "one", "seed": 0, "branch_accuracy": [0.61, 0.63],
         "ensemble_accuracy": 0.63},
        {"method": "one", "seed": 1, "branch_accuracy": [0.66, 0.66],
         "ensemble_accuracy": 0.67},
        {"method": "kd", "seed": 0, "branch_accuracy": [0.62],
         "ensemble_accuracy": None,
         "teachers": [{"model": "resnet32", "test_accuracy": 0.70}]},
        {"method": "kd", "seed": 1, "branch_accuracy": [0.65],
         "ensemble_accuracy": None,
         "teachers": [{"model": "resnet32", "test_accuracy": 0.72}]},
    ]  # fmt: skip
    for run in runs:
        run["train_seconds"] = 10.0
    results = {
        "protocol": {"epochs": 1},
        "runs": runs,
        "summary": accuracy.summarize(runs),
    }
    path = tmp_path / "accuracy.json"
    path.write_text(json.dumps(results))
    tables.main([str(path)])
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] in ("one", "baseline", "kd", "kd's teachers (resnet32)"):
            rows[cells[0]] = cells
    # Mean branches 62 and 66 against baselines 60 and 64: +2 in both
    # seeds; the ensembles are 1 point above the mean branches.
    assert rows["one"][:4] == ["one", "2", "test", "64.00 ± 2.83"]
    assert rows["one"][5:8] == ["65.00 ± 2.83", "+2.00 ± 0.00", "+1.00 ± 0.00"]
    assert rows["baseline"][6:8] == ["-", "-"]
    # KD: +2 and +1 over the baseline, no ensemble; its teachers' row.
    assert rows["kd"][5:8] == ["-", "+1.50 ± 0.71", "-"]
    teachers = rows["kd's teachers (resnet32)"]
    assert teachers[1:4] == ["2 teachers", "test", "71.00 ± 1.41"]
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a benchmark result"):
        tables.main([str(tmp_path / "other.json")])


def test_readme_tables_throughput(tmp_path, capsys):
    tables = load_script("readme_tables")
    throughput = load_script("throughput")
    speeds = {"one": [100.0, 90.0], "one_jax": [50.0, 60.0]}
    table, ratios = throughput.summarize(speeds)
    arguments = vars(throughput.build_parser().parse_args(["--cpu-time"]))
    results = {
        "arguments": arguments,
        "machine": {"cpu": "AMD EPYC", "cpu_count": 2, "keras": "3.15.1",
                    "jax": "0.10.2"},
        "images_per_second": table,
        "time_ratios": ratios,
    }  # fmt: skip
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps(results))
    tables.main([str(path)])
    printed = capsys.readouterr().out
    assert "Machine: AMD EPYC, 2 cores; Keras 3.15.1, JAX 0.10.2; " in printed
    # An older file: no CPU model, and TensorFlow's "not set" (0) threads.
    assert "TensorFlow threads not recorded" in printed
    rows = {}
    for line in printed.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells
    assert rows["one_jax"][1:] == ["55", "50", "60"]
    # Per round, the time of JAX over that of TensorFlow: 2 and 1.5.
    assert rows["JAX backend : TensorFlow (ONE)"][1:] == [
        "1.750", "-", "2.00, 1.50",
    ]  # fmt: skip
    results["machine"] = {"cpu_count": 2, "intra_op_threads": 0}
    path.write_text(json.dumps(results))
    tables.main([str(path)])
    assert (
        "Machine: CPU not recorded, 2 cores; TensorFlow threads not recorded"
        in capsys.readouterr().out
    )
    results["machine"].update(intra_op_threads=1, inter_op_threads=2)
    path.write_text(json.dumps(results))
    tables.main([str(path)])
    assert "TensorFlow threads: 1 intra-op, 2 inter-op" in (
        capsys.readouterr().out
    )


def test_best_branch_is_picked_on_the_other_set():
    accuracy = load_script("accuracy")
    # Branch 2 is best on the held-out images, branch 0 on the test set.
    run = {
        "method": "one", "seed": 0, "train_seconds": 1.0,
        "branch_accuracy": [0.70, 0.60, 0.65],
        "heldout_branch_accuracy": [0.50, 0.55, 0.58],
        "ensemble_accuracy": 0.7, "heldout_ensemble_accuracy": 0.6,
    }  # fmt: skip
    summary = accuracy.summarize([run])["one"]
    np.testing.assert_allclose(summary["best_branch"]["mean"], 65.0)
    np.testing.assert_allclose(summary["heldout_best_branch"]["mean"], 50.0)
    # Tied where picked: the mean of the tied branches' scores.
    assert accuracy.picked_branch([0.7, 0.6, 0.5], [0.3, 0.4, 0.4]) == (
        pytest.approx(0.55)
    )
    # Without held-out images, picked on the set it is scored on.
    del run["heldout_branch_accuracy"]
    summary = accuracy.summarize([run])["one"]
    np.testing.assert_allclose(summary["best_branch"]["mean"], 70.0)
    assert summary["best_branch_picked_on"] == "itself"


def test_resampled_runs_train_on_disjoint_slices(tiny_npz, tmp_path):
    accuracy = load_script("accuracy")
    parse = accuracy.parse_args
    args = parse(
        ["--data", str(tiny_npz), "--train-examples", "16", "--resample"]
    )
    y = np.load(tiny_npz)["y_train"]
    # 12 images per class, 4 per class in a slice: 3 disjoint slices, the
    # run of seed s on slice s mod 3.
    assert accuracy.slice_count(y, 16) == 3
    assert [accuracy.train_slice(args, s) for s in range(5)] == [0, 1, 2, 0, 1]
    slices = [accuracy._stratified_subset(y, 16, k) for k in range(3)]
    assert sorted(np.concatenate(slices).tolist()) == list(range(48))
    for subset in slices:
        assert np.bincount(y[subset]).tolist() == [4, 4, 4, 4]
    first = [np.flatnonzero(y == c)[:4] for c in range(4)]
    assert slices[0].tolist() == sorted(np.concatenate(first).tolist())
    # A run trains on its slice and is also evaluated on the other 32.
    _, _, heldout, info = accuracy.load_data(args, seed=4)
    assert info["num_train_examples"] == 16
    assert sum(int(b[1].shape[0]) for b in heldout) == 32
    # Without --resample every seed trains on slice 0.
    plain = parse(["--data", str(tiny_npz), "--train-examples", "16"])
    assert accuracy.train_slice(plain, 4) == 0
    with pytest.raises(SystemExit, match="--resample needs --train-examples"):
        accuracy.main(
            ["--data", str(tiny_npz), "--resample",
             "--output", str(tmp_path / "a.json")]
        )  # fmt: skip


def test_paired_differences_and_t_interval():
    accuracy = load_script("accuracy")
    runs = [
        {"method": "baseline", "seed": 0, "branch_accuracy": [0.60]},
        {"method": "baseline", "seed": 1, "branch_accuracy": [0.62]},
        {"method": "baseline", "seed": 2, "branch_accuracy": [0.58]},
        {"method": "one", "seed": 0, "branch_accuracy": [0.60, 0.62],
         "ensemble_accuracy": 0.63},
        {"method": "one", "seed": 1, "branch_accuracy": [0.64, 0.64],
         "ensemble_accuracy": 0.65},
        {"method": "one", "seed": 2, "branch_accuracy": [0.61, 0.61],
         "ensemble_accuracy": 0.62},
        # Unpaired: no baseline of seed 3.
        {"method": "one", "seed": 3, "branch_accuracy": [0.9, 0.9],
         "ensemble_accuracy": 0.9},
    ]  # fmt: skip
    paired = accuracy.paired_differences(runs)["one"]
    mean_branch = paired["mean_branch"]
    # Differences 1, 2, 3 points: mean 2, std 1; t(0.975, 2 dof) = 4.3027.
    assert mean_branch["seeds"] == [0, 1, 2]
    np.testing.assert_allclose(mean_branch["differences"], [1, 2, 3])
    np.testing.assert_allclose(mean_branch["std"], 1.0)
    half = 4.302652729911275 / np.sqrt(3)
    np.testing.assert_allclose(
        mean_branch["t_interval_95"], [2 - half, 2 + half]
    )
    np.testing.assert_allclose(paired["ensemble"]["differences"], [3, 3, 4])
    # No held-out images: no best branch picked on them, no held-out pairs.
    assert "best_branch" not in paired
    assert accuracy.paired_differences(runs, prefix="heldout_") == {}
    assert "+2.00" in accuracy.format_paired({"one": paired})


def test_accelerator_speed_summary(tmp_path, capsys):
    speed = load_script("accelerator_speed")
    arguments = vars(speed.build_parser().parse_args(["--steps", "10"]))
    arguments["batch_size"] = 100
    # 1,000 images a window; ONE takes 2 s, then 2 s, 4 s ...
    seconds = {
        "one": [2.0, 2.0, 4.0, 2.0, 2.0, 2.0, 2.0],
        "baseline": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    }
    path = tmp_path / "speed.json"
    path.write_text(
        json.dumps(
            {"arguments": arguments, "environment": {}, "seconds": seconds}
        )
    )
    result = speed.main(["--summary", str(path)])
    assert result["images_per_second"] == {"one": 500.0, "baseline": 1000.0}
    assert result["time_ratios"] == {"ONE-3 : baseline": 2.0}
    # Seven rounds: the sign test's 95% interval is the 1st to 7th value.
    assert result["time_ratio_intervals_95"] == {"ONE-3 : baseline": [2, 4]}
    # 300 epochs of 50,000 images at 500 images/s.
    assert result["protocol_training_hours"]["one"] == 300 * 50000 / 500 / 3600
    printed = capsys.readouterr().out
    assert "ONE-3 : baseline (time): 2.000 (95% CI 2.000-4.000)" in printed
    # A file without the host's CPU says so.
    assert "host CPU and thread counts not recorded" in printed
    # Another file is refused in one line.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"runs": []}))
    with pytest.raises(SystemExit, match="not a result of this script"):
        speed.main(["--summary", str(other)])
    # bench/readme_tables.py prints it too.
    load_script("readme_tables").main([str(path)])
    assert "(95% CI 2.000-4.000)" in capsys.readouterr().out


def test_accelerator_speed_records_the_host(capsys):
    speed = load_script("accelerator_speed")
    machine_info = load_script("machine_info")
    environment = speed._environment()
    assert environment["cpu"] == machine_info.cpu_name() != ""
    assert environment["cpu_count"] >= 1
    assert environment["usable_cpus"] == machine_info.usable_cpus() >= 1
    if environment["backend"] == "torch":
        import torch

        assert environment["torch_threads"] == torch.get_num_threads()
    # Its summary does not say the host is missing.
    result = {
        "environment": environment,
        "images_per_second": {},
        "time_ratios": {},
    }
    speed.print_summary(result)
    assert "not recorded" not in capsys.readouterr().out


@pytest.mark.parametrize("value", ["abc", "1.5", "-2"])
def test_a_thread_variable_that_is_not_a_count_is_refused_first(
    value, tmp_path, monkeypatch
):
    # TensorFlow ignores such a value silently; the benchmark refuses it
    # in one line before it measures (and so writes) anything.
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", value)
    throughput = load_script("throughput")
    output = tmp_path / "throughput.json"
    with pytest.raises(ValueError, match="TF_NUM_INTEROP_THREADS=.*whole"):
        throughput.main(["--model", "resnet8", "--output", str(output)])
    assert not output.exists()


def test_accuracy_benchmark_protocols(tmp_path):
    accuracy = load_script("accuracy")
    args = accuracy.parse_args(["--data", "d.npz", "--protocol", "one"])
    assert (args.epochs, args.batch_size) == (300, 128)
    assert (args.learning_rate, args.weight_decay) == (0.1, 1e-4)
    assert (
        accuracy._recipe(args, "resnet32", None, None, None)["protocol"]
        == "one"
    )
    for flags in (["--epochs", "80"], ["--weight-decay", "1e-4"]):
        with pytest.raises(SystemExit, match=rf"drop {flags[0]} \(or drop"):
            accuracy.parse_args(
                ["--data", "d.npz", "--protocol", "one", *flags]
            )
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--data", "d.npz", "--protocol", "paper"])
    # Without --protocol (and --resample) the recipe and the recorded
    # protocol are as before those flags existed, so earlier result files
    # still merge: the fixed-subset file of the README's methods table, and
    # the file of resampled runs.
    args = accuracy.parse_args(["--data", "d.npz"])
    assert (args.epochs, args.batch_size, args.weight_decay) == (80, 128, 5e-4)
    stored = {
        name: json.loads(
            (
                BENCH / f"results/accuracy_resnet20_2500x80_{name}.json"
            ).read_text()
        )["protocol"]
        for name in ("methods", "resampled")
    }
    flags = [
        "--data", stored["methods"]["data"], "--model", "resnet20",
        "--train-examples", "2500", "--branches", "3",
        "--rampup-fraction", "0.27",
    ]  # fmt: skip
    methods = accuracy.parse_args(flags)
    assert accuracy.protocol_of(methods) == stored["methods"]
    resampled = accuracy.parse_args(flags[:-2] + ["--resample"])
    assert accuracy.protocol_of(resampled) == stored["resampled"]


@pytest.mark.slow
def test_xla_speed_runs_methods_with_views_and_example_indices(tmp_path):
    """PCL's views and MCL-OKD's indexed examples, built from their
    descriptions (only the plumbing is checked, not the speeds)."""
    speed = load_script("xla_speed")
    output = tmp_path / "xla.json"
    speed.main(
        ["--methods", "pcl", "mcl_okd", "--model", "resnet8",
         "--batch-size", "8", "--image-size", "8", "--rounds", "1",
         "--window-steps", "1", "--warmup-steps", "1",
         "--dataset-examples", "500", "--output", str(output)]
    )  # fmt: skip
    rows = json.loads(output.read_text())["methods"]
    assert sorted(rows) == ["mcl_okd", "pcl"]
    for row in rows.values():
        assert row["no_xla_img_per_s"] > 0 and row["xla_img_per_s"] > 0


def _spread_runs():
    """Two slices, three seeds each, for a baseline and a 2-branch method."""
    rng = np.random.default_rng(3)
    runs = []
    for seed in range(6):
        slice_index = seed % 2
        base = 0.60 + 0.02 * slice_index + rng.normal(0, 0.01)
        curve = list(rng.uniform(0.5, 0.6, 6)) + [base]
        runs.append(
            {
                "method": "baseline",
                "seed": seed,
                "train_slice": slice_index,
                "branch_accuracy": [base],
                "heldout_branch_accuracy": [base],
                "history": {"val_accuracy": curve},
            }
        )
        branches = [base + 0.01 + rng.normal(0, 0.01) for _ in range(2)]
        runs.append(
            {"method": "one", "seed": seed, "train_slice": slice_index,
             "branch_accuracy": branches,
             "history": {"val_branch_0_accuracy": [0.1, 0.5, branches[0]],
                         "val_branch_1_accuracy": [0.3, 0.7, branches[1]]}}
        )  # fmt: skip
    return runs


def test_spread_variance_components_balanced():
    spread = load_script("spread")
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, (4, 3)) + rng.normal(0, 2, (4, 1))
    groups = np.repeat(np.arange(4), 3)
    parts = spread.variance_components(values.ravel(), groups)
    # Balanced one-way ANOVA, computed directly: within = mean of the
    # groups' sample variances; between = variance of the group means
    # minus within / (group size).
    within = values.var(axis=1, ddof=1).mean()
    between = values.mean(axis=1).var(ddof=1) - within / 3
    assert parts["within"] == pytest.approx(within)
    assert parts["between"] == pytest.approx(max(between, 0.0))
    assert parts["total"] == pytest.approx(values.ravel().var(ddof=1))
    assert (parts["groups"], parts["n"]) == (4, 12)
    # Unequal groups: n0 = (N - sum n_i^2 / N) / (k - 1).
    parts = spread.variance_components(
        [1.0, 3.0, 5.0, 6.0, 7.0], [0, 0, 1, 1, 1]
    )
    within = (2 + 2) / 3  # (1-2)^2 + (3-2)^2, then (5-6)^2 + 0 + (7-6)^2
    msb = 2 * (2 - 4.4) ** 2 + 3 * (6 - 4.4) ** 2
    n0 = 5 - (4 + 9) / 5
    assert parts["within"] == pytest.approx(within)
    assert parts["between"] == pytest.approx((msb - within) / n0)
    # One group: no between-slice part; one value per group: no within.
    assert spread.variance_components([1.0, 2.0], [0, 0])["between"] is None
    assert spread.variance_components([1.0, 2.0], [0, 1])["within"] is None


def test_spread_report(tmp_path, capsys):
    spread = load_script("spread")
    runs = _spread_runs()
    report = spread.analyse({"runs": runs}, last=3)
    one = report["test"]["one"]
    # Last 3 epochs of the mean-branch curve.
    curves = [
        np.mean([r["history"][f"val_branch_{i}_accuracy"] for i in (0, 1)], 0)
        for r in runs
        if r["method"] == "one"
    ]
    expected = np.sqrt(np.mean([100**2 * np.var(c, ddof=1) for c in curves]))
    assert one["last_epochs"]["rms_std"] == pytest.approx(expected)
    branches = [r["branch_accuracy"] for r in runs if r["method"] == "one"]
    assert one["branch_std"] == pytest.approx(
        np.sqrt(np.mean([np.var(100 * np.array(b), ddof=1) for b in branches]))
    )
    base = 100 * np.array(
        [r["branch_accuracy"][0] for r in runs if r["method"] == "baseline"]
    )
    own = 100 * np.array([np.mean(b) for b in branches])
    assert one["paired_std"] == pytest.approx(np.std(own - base, ddof=1))
    assert one["unpaired_std"] == pytest.approx(
        np.sqrt(np.var(base, ddof=1) + np.var(own, ddof=1))
    )
    # Averaged per slice (seeds 0, 2, 4 on slice 0; 1, 3, 5 on slice 1),
    # then a t interval with 1 degree of freedom: mean +- 12.706 * sd / sqrt 2.
    difference = own - base
    means = [difference[0::2].mean(), difference[1::2].mean()]
    half = 12.7062047 * np.std(means, ddof=1) / np.sqrt(2)
    assert one["by_slice"]["slices"] == 2
    assert one["by_slice"]["mean"] == pytest.approx(np.mean(means))
    assert one["by_slice"]["t_interval_95"] == pytest.approx(
        [np.mean(means) - half, np.mean(means) + half]
    )
    assert [p[:2] for p in one["by_slice"]["pairs"]] == [
        [seed, seed % 2] for seed in range(6)
    ]
    assert [p[2] for p in one["by_slice"]["pairs"]] == pytest.approx(
        list(difference)
    )
    # The baseline's curve is 7 epochs long: its last 3 only.
    base_curves = [r["history"]["val_accuracy"] for r in runs[::2]]
    assert report["test"]["baseline"]["last_epochs"][
        "rms_std"
    ] == pytest.approx(
        np.sqrt(np.mean([100**2 * np.var(c[-3:], ddof=1) for c in base_curves]))
    )
    # Only the baseline has held-out scores; one branch has no spread.
    assert list(report["heldout"]) == ["baseline"]
    assert report["heldout"]["baseline"]["branch_std"] is None
    # The command: a table, a JSON file, and refusals.
    path = tmp_path / "accuracy.json"
    path.write_text(json.dumps({"runs": runs}))
    spread.main(
        [str(path), "--last", "3", "--output", str(tmp_path / "s.json")]
    )
    out = capsys.readouterr().out
    assert "| test | one | 6 |" in out
    low, high = one["by_slice"]["t_interval_95"]
    row = f"| test | one | 2 | {np.mean(means):+.2f} |"
    assert f"{row} [{low:+.2f}, {high:+.2f}] |" in out
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["spread"]["test"]["one"]["paired_std"] == pytest.approx(
        one["paired_std"]
    )
    with pytest.raises(SystemExit):
        spread.main([str(path), "--output", str(tmp_path / "s.json")])
    assert "exists; give another --output" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        spread.main([str(path), "--last", "1"])
    assert "--last must be 2 or more" in capsys.readouterr().err
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SystemExit):
        spread.main([str(tmp_path / "other.json")])
    assert "not a bench/accuracy.py results file" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text('{"runs": [')
    for bad in ("broken.json", "missing.json"):
        with pytest.raises(SystemExit):
            spread.main([str(tmp_path / bad)])
        assert f"cannot read {tmp_path / bad}" in capsys.readouterr().err
    # bench/readme_tables.py prints it, with the paired t intervals, for a
    # file of resampled runs only.
    accuracy = load_script("accuracy")
    for run in runs:
        run["train_seconds"] = 1.0
    results = {"protocol": {"resample": True}, "runs": runs}
    path.write_text(json.dumps(results))
    load_script("readme_tables").main([str(path)])
    out = capsys.readouterr().out
    assert "| test | one | 6 |" in out and "95% t interval" in out
    low, high = accuracy.t_interval(np.asarray(own) - base)
    assert f"[{low:+.2f}, {high:+.2f}]" in out
    results["protocol"] = {"resample": False}
    path.write_text(json.dumps(results))
    load_script("readme_tables").main([str(path)])
    out = capsys.readouterr().out
    assert "95% t interval" not in out and "| test | one | 6 |" not in out


@pytest.mark.parametrize("variant", ["one_bf16", "torch_bf16"])
def test_profile_step_shares_a_step_among_its_kernels(variant, tmp_path):
    if variant.startswith("torch"):
        pytest.importorskip("torch")
    profile = load_script("profile_step")
    output = tmp_path / "profile.json"
    result = profile.main(
        ["--variant", variant, "--model", "resnet8", "--batch-size", "4",
         "--image-size", "8", "--branches", "2",
         "--warmup-steps", "1", "--steps", "2", "--output", str(output)]
    )  # fmt: skip
    saved = json.loads(output.read_text())
    assert saved["ops"] == result["ops"]
    assert saved["machine"]["cpu"] and saved["arguments"]["variant"] == variant
    ops = {row["op"]: row for row in result["ops"]}
    # The convolutions' kernels are profiled, forward and backward.
    convolutions = [name for name in ops if "onv" in name]
    assert len(convolutions) >= 2, sorted(ops)
    if variant == "one_bf16":
        # One forward convolution kernel per Conv2D layer and step.
        import keras

        student = profile.throughput._network(
            profile._throughput_args(profile.build_parser().parse_args(
                ["--model", "resnet8", "--image-size", "8",
                 "--branches", "2"])),
            num_branches=2,
        )  # fmt: skip

        def conv2d_layers(model):
            return sum(
                conv2d_layers(layer) if isinstance(layer, keras.Model)
                else isinstance(layer, keras.layers.Conv2D)
                for layer in model.layers
            )  # fmt: skip

        forward = [n for n in ops if n.endswith("Conv2D")]
        calls = sum(ops[n]["per_step"] for n in forward)
        assert calls == conv2d_layers(student)
    assert all(row["ms_per_step"] >= 0 and row["per_step"] > 0
               for row in ops.values())  # fmt: skip
    assert result["cpu_seconds_per_step"] > 0
    # A second run does not overwrite the first.
    with pytest.raises(SystemExit, match="exists: give another path"):
        profile.main(["--variant", variant, "--output", str(output)])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "0"], "--steps: must be at least 1"),
        (["--threads", "0"], "--threads: must be at least 1"),
        (["--batch-size", "-1"], "--batch-size: must be at least 1"),
    ],
)
def test_profile_step_refuses_bad_flags(flags, message):
    profile = load_script("profile_step")
    with pytest.raises(SystemExit, match=message):
        profile.main(flags)
