"""protoseg benchmark: structure of the results, ratios recomputed from the reported numbers, a sync
counter that really counts. No test here asserts anything about how fast something runs."""

import json
import math
import statistics

import pytest
import torch

from protoseg.benchmark import command
from protoseg.benchmark.components import component_scaling
from protoseg.benchmark.data_loading import loader_throughput
from protoseg.benchmark.flops import count_flops
from protoseg.benchmark.host_sync import count_host_syncs
from protoseg.benchmark.settings import ScalingSettings, preset_settings
from protoseg.benchmark.steps import MethodBench
from protoseg.benchmark.suites import inference_flops
from protoseg.benchmark.tables import markdown_table
from protoseg.benchmark.targets import evaluate_targets
from protoseg.benchmark.timing import growth_exponent, interleaved_times, paired_ratio, rotated

CPU = torch.device("cpu")


def test_interleaved_rounds_call_every_function_once_per_round_in_rotated_order():
    calls = []
    functions = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = interleaved_times(functions, CPU, warmup=1, repeats=4)
    assert {name: len(values) for name, values in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(value >= 0 for values in times.values() for value in values)
    rounds = [calls[i : i + 3] for i in range(0, len(calls), 3)]
    assert len(rounds) == 5  # 1 warm-up + 4 timed
    timed = rounds[1:]
    assert [r[0] for r in timed] == ["a", "b", "c", "a"]  # round r starts with function r mod 3
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert rotated(["a", "b", "c"], 4) == ["b", "c", "a"]
    with pytest.raises(ValueError, match="repeats"):
        interleaved_times(functions, CPU, warmup=0, repeats=0)


def test_paired_ratio_is_the_median_of_per_round_ratios():
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
    # differs from median / median when the load changes between rounds
    assert paired_ratio([1.0, 10.0, 10.0], [1.0, 10.0, 1.0]) == 1.0
    with pytest.raises(ValueError, match="equally long"):
        paired_ratio([1.0], [1.0, 2.0])


def test_growth_exponent_recovers_power_laws():
    sizes = [16384, 65536, 262144, 1048576]
    assert growth_exponent(sizes, [3e-6 * n**2 for n in sizes]) == pytest.approx(2.0)
    assert growth_exponent(sizes, [5e-4 * n for n in sizes]) == pytest.approx(1.0)
    assert growth_exponent(sizes, [0.2] * 4) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        growth_exponent([10], [1.0])
    with pytest.raises(ValueError):
        growth_exponent([10, 10], [1.0, 2.0])


@pytest.mark.parametrize(
    "function, expected",
    [
        (lambda x: x * 2 + 1, 0),
        (lambda x: x.sum().item(), 1),
        (lambda x: (x.sum().item(), float(x.max())), 2),
        (lambda x: 1 if x.sum() > 0 else 0, 1),  # is_nonzero > item > _local_scalar_dense: one sync
        (lambda x: x.nonzero(), 1),
        (lambda x: x[x > 0], 1),  # boolean-mask indexing
        (lambda x: torch.where(x > 0), 1),
    ],
)
def test_sync_counter_counts_each_host_synchronisation_once(function, expected):
    x = torch.randn(64)
    result = count_host_syncs(lambda: function(x), CPU)
    assert result["syncs"] == expected
    assert sum(result["by_op"].values()) == expected
    assert result["counter"] == "profiler"


def _quick_settings(**changes):
    settings = preset_settings("cpu", CPU, quick=True)
    for name, value in changes.items():
        setattr(settings, name, value)
    return settings


def test_sync_counter_sees_an_item_added_to_a_real_training_step():
    bench = MethodBench("linear", _quick_settings())
    bench.train_step()
    clean = count_host_syncs(bench.train_step, CPU)["syncs"]
    logged = count_host_syncs(lambda: bench.train_step()["loss"].item(), CPU)
    assert logged["syncs"] == clean + 1
    assert logged["by_op"].get("aten::item", 0) >= 1


def _run_cli(capsys, *argv):
    assert command.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_json_ratios_are_computed_from_the_reported_numbers(capsys):
    results = _run_cli(
        capsys,
        *("--quick", "--suite", "step", "inference", "sync", "memory", "--memory-in-process"),
        *("--methods", "protoseg", "ppc", "--repeats", "3", "--warmup", "0", "--threads", "1", "--json"),
    )
    assert set(results) == {"environment", "step", "inference", "sync", "memory", "targets"}
    assert results["environment"]["quick"] is True and results["environment"]["device"] == "cpu"
    for suite in ("step", "inference"):
        for family, baseline, method in (("segmentation", "linear", "protoseg"), ("wsss", "cam", "ppc")):
            entry = results[suite][family]
            assert entry["baseline"] == baseline and list(entry["methods"]) == [baseline, method]
            measured = entry["methods"]
            base_times = measured[baseline]["times_ms"]
            for values in measured.values():
                assert len(values["times_ms"]) == 3
                assert values["median_ms"] == pytest.approx(statistics.median(values["times_ms"]), abs=1e-3)
                per_round = [t / b for t, b in zip(values["times_ms"], base_times)]
                assert values["ratio"] == pytest.approx(statistics.median(per_round), abs=1e-4)
                quartiles = statistics.quantiles(per_round, n=4, method="inclusive")
                assert values["ratio_quartiles"] == pytest.approx([quartiles[0], quartiles[2]], abs=1e-4)
            assert measured[baseline]["ratio"] == 1.0
            assert measured[baseline]["flop_ratio"] == 1.0
            assert measured[method]["flop_ratio"] == pytest.approx(
                measured[method]["gflops"] / measured[baseline]["gflops"], rel=1e-3
            )
            if suite == "step":  # ppc infers with the CAM network alone: the same FLOPs as cam
                assert measured[method]["gflops"] > measured[baseline]["gflops"] > 0
    inference = results["inference"]["segmentation"]
    for values in inference["methods"].values():
        expected = inference["batch_size"] / (values["median_ms"] / 1000)
        assert values["images_per_s"] == pytest.approx(expected, rel=1e-3)
    for family in ("segmentation", "wsss"):
        counts = results["sync"][family]["methods"]
        base = counts[results["sync"][family]["baseline"]]["syncs"]
        for values in counts.values():
            assert values["method_specific"] == values["syncs"] - base
            assert values["syncs"] == sum(values["by_op"].values())
    memory = results["memory"]
    assert memory["isolation"] == "in_process"
    linear = memory["segmentation"]["methods"]["linear"]
    for values in memory["segmentation"]["methods"].values():
        assert values["method_mb"] == pytest.approx(values["state_mb"] + values["step_mb"], abs=0.11)
        assert values["state_mb"] > 0 and values["peak_mb"] > 0
        assert values["ratio"] == pytest.approx(values["method_mb"] / linear["method_mb"], abs=1e-4)
    # the ProtoSeg head adds a projection and a prototype bank to the same model: more state
    protoseg = memory["segmentation"]["methods"]["protoseg"]
    assert protoseg["state_mb"] > linear["state_mb"]
    targets = {check["target"]: check for check in results["targets"]}
    protoseg_target = targets["ProtoSeg step / linear"]
    assert protoseg_target["measured"] == results["step"]["segmentation"]["methods"]["protoseg"]["ratio"]
    assert protoseg_target["met"] == (protoseg_target["measured"] <= 1.10)
    assert targets["ContrastiveSeg step / linear"]["met"] is None  # contrast was not run


def test_cli_prints_tables_with_target_verdicts(capsys):
    assert command.main(["--quick", "--suite", "sync", "--methods", "linear", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "Host synchronisations in one training step, segmentation" in text
    assert "| linear" in text and "Targets (reported, not enforced)" in text
    assert "host syncs per step, linear baseline (total)" in text


def test_component_scaling_reports_medians_ratios_and_exponents_from_its_times():
    scaling = ScalingSettings(
        classes=(19, 171), pixels=(256, 1024), prototypes=(1, 4), base_pixels=512, dim=8,
        memory_sizes=(12, 24), memory_classes=3, memory_dim=8, kmeans_iters=2,
        ppc_batches=(1, 2), ppc_feature_size=4, ppc_classes=3, ppc_dim=8, warmup=0, repeats=2,
    )  # fmt: skip
    results = component_scaling(scaling, CPU)
    sweeps = [*results["prototype_learning"].values(), *results["sinkhorn"].values()]
    sweeps += [results["rca_kmeans_refresh"], results["ppc_loss"]]
    assert [s["sizes"] for s in results["prototype_learning"].values()] == [[19, 171], [256, 1024], [1, 4]]
    assert results["rca_kmeans_refresh"]["sizes"] == [12, 24] and results["ppc_loss"]["sizes"] == [1, 2]
    for sweep in sweeps:
        medians = [statistics.median(times) for times in sweep["times_ms"]]
        assert sweep["median_ms"] == pytest.approx(medians)
        assert sweep["ratio_last_over_first"] == pytest.approx(medians[-1] / medians[0], abs=1e-3)
        slope = math.log(medians[1] / medians[0]) / math.log(sweep["sizes"][1] / sweep["sizes"][0])
        assert sweep["growth_exponent"] == pytest.approx(slope, abs=1e-3)


def test_data_loading_reports_images_per_second_per_worker_count():
    cfg = _quick_settings().config("linear")
    results = loader_throughput(cfg, None, workers=(0,), batches=2, rounds=2)
    entry = results["workers"]["0"]
    assert len(entry["per_round"]) == 2 and entry["images_per_s"] > 0
    assert entry["images_per_s"] == pytest.approx(statistics.median(entry["per_round"]), abs=0.01)
    assert results["batch_size"] == cfg.train.batch_size
    with pytest.raises(ValueError, match="batches"):
        loader_throughput(cfg, None, workers=(0,), batches=0)


def test_targets_pass_and_fail_by_their_limits_and_follow_the_device():
    results = {
        "step": {
            "segmentation": {"methods": {"protoseg": {"ratio": 1.08}, "contrast": {"ratio": 1.2}}},
            "wsss": {"methods": {"ppc": {"ratio": 1.1}, "rca": {"ratio": 1.3}}},
        },
        "scaling": {
            "prototype_learning": {
                "classes": {"sizes": [19, 171], "ratio_last_over_first": 1.4},
                "pixels": {"growth_exponent": 1.3},
            }
        },
        "sync": {
            "segmentation": {
                "baseline": "linear",
                "methods": {
                    "linear": {"syncs": 1, "method_specific": 0},
                    "protoseg": {"syncs": 1, "method_specific": 0},
                },
            }
        },
    }  # fmt: skip
    on_cpu = {check["target"]: check["met"] for check in evaluate_targets(results, "cpu")}
    assert on_cpu["ProtoSeg step / linear"] is True
    assert on_cpu["ContrastiveSeg step / linear"] is False
    assert on_cpu["PPC step / CAM"] is True and on_cpu["RCA step / CAM"] is False
    assert on_cpu["prototype learning C=171 / C=19"] is True
    assert on_cpu["prototype learning growth exponent in N"] is False
    assert on_cpu["host syncs per step, linear baseline (total)"] is False  # the baseline's own sync
    assert on_cpu["host syncs per step, protoseg (its own: total - baseline)"] is True
    on_gpu = {check["target"]: check["met"] for check in evaluate_targets(results, "cuda")}
    assert on_gpu["ProtoSeg step / linear"] is False  # 1.05 on GPU


def test_markdown_table_marks_verdicts_and_missing_values():
    table = markdown_table(["name", "value", "met"], [["a", 1.23456, True], ["b", None, False]])
    lines = table.splitlines()
    assert lines[0].startswith("| name") and "1.235" in lines[2] and "PASS" in lines[2]
    assert "n/a" in lines[3] and "FAIL" in lines[3]


def test_inference_flops_differ_by_exactly_the_protoseg_heads_matmuls():
    settings = preset_settings("cpu", CPU, quick=True)
    linear, protoseg = MethodBench("linear", settings), MethodBench("protoseg", settings)
    with torch.no_grad():
        network = protoseg.method.network
        features = network.decoder(network.backbone(protoseg.batch["image"]))
    batch, cin, height, width = features.shape
    pixels = batch * height * width
    head = protoseg.method.network.head
    dim, classes, prototypes = head.bank.dim, head.num_classes, head.num_prototypes
    # proj (Cin -> Cin -> D) and the similarities (D -> C * K) against the linear classifier (Cin -> C)
    expected = 2 * pixels * (cin * cin + cin * dim + dim * classes * prototypes - cin * classes)
    assert inference_flops(protoseg) - inference_flops(linear) == expected


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("0", "0")])
def test_the_command_enables_huge_page_cpu_allocations_before_importing_torch(preset, expected):
    import os
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        "from protoseg import launcher\n"
        "assert 'torch' not in sys.modules\n"
        "try:\n"
        "    launcher.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' in sys.modules\n"
        "print(os.environ.get('THP_MEM_ALLOC_ENABLE'))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "THP_MEM_ALLOC_ENABLE"}
    if preset is not None:
        env["THP_MEM_ALLOC_ENABLE"] = preset
    command = [sys.executable, "-c", script]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == expected


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_convolution_gradients_each_cost_the_forwards_flops_grouped_or_not(groups):
    batch, cin, cout, size, kernel = 2, 8, 16, 9, 3
    conv = torch.nn.Conv2d(cin, cout, kernel, groups=groups, bias=False)
    images = torch.randn(batch, cin, size, size, requires_grad=True)
    out_size = size - kernel + 1
    forward = 2 * batch * cout * (cin // groups) * kernel * kernel * out_size * out_size  # brute-force count
    assert count_flops(lambda: conv(images)) == forward
    outputs = conv(images)
    assert count_flops(lambda: outputs.sum().backward()) == 2 * forward  # input and weight gradients
    frozen_input = images.detach()
    outputs = conv(frozen_input)
    assert count_flops(lambda: outputs.sum().backward()) == forward  # weight gradient only
    if groups == 1:  # torch's own formula is right for ungrouped convolutions
        from torch.utils.flop_counter import FlopCounterMode

        outputs = conv(images)
        with FlopCounterMode(display=False) as counter:
            outputs.sum().backward()
        assert counter.get_total_flops() == 2 * forward


def test_inference_targets_are_measured_against_each_heads_flop_ratio():
    from protoseg.benchmark.targets import evaluate_targets

    methods = {
        "linear": {"ratio": 1.0, "flop_ratio": 1.0},
        "protoseg": {"ratio": 1.09, "flop_ratio": 1.066},  # 1.09 <= 1.03 * 1.066 = 1.098
        "contrast": {"ratio": 1.05, "flop_ratio": 1.0},  # 1.05 > 1.03
    }
    results = {"inference": {"segmentation": {"baseline": "linear", "methods": methods}}}
    checks = {c["target"]: c for c in evaluate_targets(results, "cpu")}
    assert checks["inference protoseg / linear"]["met"] is True
    assert "1.098" in checks["inference protoseg / linear"]["limit"]
    assert checks["inference contrast / linear"]["met"] is False
