"""trainer config: TOML + --set, unknown keys named, presets, derived values, shipped recipes, plan/schedule."""
from __future__ import annotations

import math
import tomllib

import pytest
from click.testing import CliRunner

from trainer.cli import main
from trainer.config import (ConfigError, TrainConfig, build_config, load_config, parse_set, read_config_file,
                            shipped_configs)


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unknown_key_in_file_is_named_with_the_file(tmp_path):
    p = write(tmp_path, 'arch = "resnet18"\nlearning_rate = 0.1\n')
    with pytest.raises(ConfigError, match=r"c\.toml: unknown config key 'learning_rate'"):
        load_config("temporal", p)


def test_unknown_set_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'flow_lenght'; did you mean 'flow_length'"):
        parse_set(["flow_lenght=5"])


@pytest.mark.parametrize("item, message", [
    ("batch_size=abc", "batch_size must be an integer"),
    ("lr=true", "lr must be a number"),
    ("flip=1", "flip must be true or false"),
    ("scales=[1, 'x']", "scales must be a number or a list of numbers"),
    ("noequals", "expected KEY=VALUE"),
])
def test_bad_values_are_rejected_with_the_key(item, message):
    with pytest.raises(ConfigError, match=message):
        load_config("temporal", overrides=parse_set([item]))


@pytest.mark.parametrize("overrides, message", [
    ({"arch": "resnet19"}, "arch 'resnet19' is not supported .*did you mean 'resnet18'"),
    ({"test_crops": 7}, "test_crops must be one of"),
    ({"max_iters": 100, "lr_steps": [50, 150]}, "must lie below max_iters 100"),
    ({"schedule": "step", "epochs": 0}, "schedule 'step' needs epochs > 0"),
    ({"schedule": "step", "epochs": 10, "lr_steps": [20]}, "lr_steps are epochs"),
    ({"arch": "vgg16", "dropout": [0.1, 0.2, 0.3]}, r"dropout for vgg16 takes 2 value\(s\) \[fc6, fc7\]"),
    ({"scales": [1.2]}, "scales must be fractions"),
    ({"arch": "inception_v3", "input_size": 64}, "inception_v3 needs input_size >= 75"),
    ({"bn": "half"}, "bn must be one of auto, train, partial, frozen"),
    ({"decode": "gpu"}, "decode must be one of auto, cpu, device, got 'gpu'"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"val_every_iters": -5}, "val_every_iters must be >= 0"),
    ({"flip": False, "test_crops": 10}, "flip = false with test_crops = 10: 5 of the 10 test views are mirror"),
])
def test_impossible_settings_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("temporal", overrides=overrides)


def test_every_way_of_making_a_config_is_validated_and_coerced():
    """The checks live in TrainConfig itself: dataclasses.replace and the constructor cannot bypass them."""
    import dataclasses

    cfg = load_config("temporal")
    with pytest.raises(ConfigError, match=r"^lr must be a positive number, got -1.0$"):
        dataclasses.replace(cfg, lr=-1)
    with pytest.raises(ConfigError, match=r"^batch_size must be an integer, got '8'$"):
        TrainConfig(batch_size="8")
    with pytest.raises(ConfigError, match=r"^replace\(\): test_crops must be one of 1, 5, 10, got 3$"):
        cfg.replace(test_crops=3)
    with pytest.raises(ConfigError, match=r"^lr_steps are iterations .* below max_iters 30000"):
        dataclasses.replace(cfg, lr_steps=(40000,))
    # values are coerced by the field's type, whichever way they come in: TOML lists become tuples, ints floats
    again = dataclasses.replace(cfg, scales=[1, 0.5], lr_steps=[5000], dropout=0)
    assert (again.scales, again.lr_steps, again.dropout) == ((1.0, 0.5), (5000,), (0.0,))
    assert [type(x) for x in again.scales + again.dropout] == [float, float, float]
    assert TrainConfig() == cfg  # the constructor fills the presets too
    assert TrainConfig(arch="vgg16", stream="spatial").dropout == (0.9, 0.9)


def test_config_for_the_other_stream_is_refused(tmp_path):
    p = write(tmp_path, 'stream = "spatial"\n')
    with pytest.raises(ConfigError, match="config is for the spatial stream"):
        load_config("temporal", p)


def test_tables_are_refused(tmp_path):
    p = write(tmp_path, '[model]\narch = "resnet18"\n')
    with pytest.raises(ConfigError, match=r"\[model\] is a table"):
        load_config("temporal", p)


def test_precedence_file_then_set_then_options(tmp_path):
    p = write(tmp_path, 'arch = "resnet18"\nlr = 0.1\nsplit = 2\n')
    cfg = load_config("temporal", p, parse_set(["lr=0.2"]), {"split": 3, "out": None})
    assert (cfg.arch, cfg.lr, cfg.split, cfg.out) == ("resnet18", 0.2, 3, "runs")


def test_stream_presets_follow_the_paper():
    s, t = load_config("spatial"), load_config("temporal")
    assert (s.lr, s.lr_steps, s.max_iters, s.dropout) == (0.001, (4000, 8000), 10000, (0.8,))
    assert (t.lr, t.lr_steps, t.max_iters, t.dropout) == (0.005, (10000, 20000), 30000, (0.7,))
    v = load_config("temporal", overrides={"arch": "vgg16"})
    assert v.dropout == (0.9, 0.8)
    assert load_config("spatial", overrides={"arch": "vgg16"}).dropout == (0.9, 0.9)
    assert load_config("spatial", overrides={"arch": "vgg16", "dropout": 0.5}).dropout == (0.5, 0.5)
    # a non-iteration schedule does not inherit iteration milestones
    c = load_config("temporal", overrides={"schedule": "cosine", "epochs": 5})
    assert (c.lr_steps, c.max_iters) == ((), 0)


def test_derived_values_are_computed():
    assert load_config("temporal", overrides={"flow_length": 7}).in_channels == 14
    assert load_config("spatial").in_channels == 3
    clip = load_config("temporal", overrides={"arch": "r2plus1d_18", "clip_length": 8})
    assert (clip.in_channels, clip.length, clip.is_clip) == (2, 8, True)
    assert load_config("temporal", overrides={"split": 2, "out": "x"}).run_dir.as_posix() == "x/temporal-split2"


def test_resolved_config_round_trips_through_toml():
    cfg = load_config("temporal", overrides=parse_set(["arch=vgg16", "scales=[1, 0.5]", "lr=3e-5",
                                                       "pretrained=/tmp/w.pth"]))
    text = cfg.to_toml()
    assert "# derived: in_channels = 20" in text
    again = build_config(tomllib.loads(text), "round trip")
    assert again == cfg


def test_shipped_configs_load_and_carry_the_paper_numbers():
    shipped = shipped_configs()
    for name in ("demo", "small_dataset", "ucf101_vgg16_spatial", "ucf101_vgg16_temporal", "ucf101_resnet101_spatial",
                 "ucf101_resnet101_temporal", "hmdb51_vgg16_spatial", "hmdb51_vgg16_temporal",
                 "hmdb51_resnet101_spatial", "hmdb51_resnet101_temporal"):
        assert name in shipped, name
    for name, path in shipped.items():
        data, _ = read_config_file(path)
        streams = [data["stream"]] if "stream" in data else ["spatial", "temporal"]
        for stream in streams:
            load_config(stream, name)  # every shipped config is valid
    vs = load_config("spatial", "ucf101_vgg16_spatial")
    vt = load_config("temporal", "ucf101_vgg16_temporal")
    assert (vs.arch, vs.lr, vs.lr_steps, vs.max_iters, vs.dropout, vs.batch_size) == \
        ("vgg16", 0.001, (4000, 8000), 10000, (0.9, 0.9), 256)
    assert (vt.lr, vt.lr_steps, vt.max_iters, vt.dropout, vt.flow_length, vt.in_channels) == \
        (0.005, (10000, 20000), 30000, (0.9, 0.8), 10, 20)
    for c in (vs, vt):
        assert (c.momentum, c.weight_decay, c.scales, c.test_frames, c.test_crops) == \
            (0.9, 5e-4, (1.0, 0.875, 0.75, 0.65625), 25, 10)
        assert [round(256 * s) for s in c.scales] == [256, 224, 192, 168]
    rs = load_config("spatial", "ucf101_resnet101_spatial")
    rt = load_config("temporal", "ucf101_resnet101_temporal")
    assert (rs.arch, rs.lr, rs.samples_per_video, rs.dropout) == ("resnet101", 5e-4, 3, (0.8,))
    assert (rt.arch, rt.lr, rt.dropout) == ("resnet101", 1e-2, (0.7,))


def test_plan_keeps_the_effective_batch_on_any_number_of_processes():
    from trainer.train import make_plan

    cfg = load_config("temporal", overrides={"batch_size": 256, "max_iters": 1000, "lr_steps": [500]})
    p1, p4 = make_plan(cfg, 1, 10_000), make_plan(cfg, 4, 10_000)
    assert (p1.micro_batch, p1.accum, p1.iters_per_epoch) == (256, 1, 39)
    assert (p4.micro_batch, p4.accum, p4.iters_per_epoch) == (64, 1, 39)
    assert p1.epochs == math.ceil(1000 / 39)
    small = cfg.replace(micro_batch=16)
    p2 = make_plan(small, 2, 10_000)
    assert (p2.micro_batch, p2.accum) == (16, 8)
    with pytest.raises(ConfigError, match="multiple of micro_batch"):
        make_plan(cfg.replace(micro_batch=24), 2, 10_000)
    with pytest.raises(ConfigError, match="larger than one epoch"):
        make_plan(cfg, 1, 100)


def test_a_batch_larger_than_the_data_names_the_small_data_config_and_a_batch_that_fits():
    from trainer.train import SMALL_DATA_BATCH, SMALL_DATA_CONFIG, make_plan

    paper = load_config("spatial", overrides={"samples_per_video": 2})
    with pytest.raises(ConfigError) as err:
        make_plan(paper, 1, 120)  # 60 videos x 2 samples
    message = str(err.value)
    assert message.startswith("batch_size 256 is larger than one epoch: 120 training samples (60 videos x "
                              "samples_per_video 2) on 1 process(es) make no full batch")
    assert f"--config {SMALL_DATA_CONFIG} (batch {SMALL_DATA_BATCH}" in message
    # 64 = the largest power of two <= 120 (one step); 8 <= 120 / 8 gives 15 steps per epoch
    assert "--set batch_size=N with N at most 64 (one step per epoch), e.g. --set batch_size=8 (15 steps" in message
    two = str(pytest.raises(ConfigError, make_plan, paper, 2, 120).value)
    assert "at most 64 (one step per epoch), e.g. --set batch_size=8 (15 steps" in two  # 4 of 60 per process
    assert make_plan(paper.replace(batch_size=64), 1, 120).iters_per_epoch == 1  # the bound is right
    assert make_plan(paper.replace(batch_size=8), 1, 120).iters_per_epoch == 15
    small = load_config("temporal", SMALL_DATA_CONFIG)
    assert small.batch_size == SMALL_DATA_BATCH
    tiny = str(pytest.raises(ConfigError, make_plan, small, 1, 20).value)
    assert "--config" not in tiny and "at most 16" in tiny  # already the small-data config: only the batch


def test_the_small_dataset_config_is_cpu_sized_and_keeps_the_papers_practices():
    for stream in ("spatial", "temporal"):
        cfg = load_config(stream, "small_dataset")
        assert (cfg.arch, cfg.input_size, cfg.batch_size, cfg.schedule, cfg.pretrained) == \
            ("resnet18", 112, 32, "cosine", "auto")
        assert (cfg.scales, cfg.corner_crop, cfg.flip, cfg.test_frames, cfg.test_crops) == \
            ((1.0, 0.875, 0.75, 0.65625), True, True, 25, 10)
    assert load_config("temporal", "small_dataset").in_channels == 20
    assert (load_config("spatial", "small_dataset").lr, load_config("temporal", "small_dataset").lr) == (0.001, 0.005)


def test_lr_schedules():
    from trainer.train import Plan, lr_factor

    plan = Plan(micro_batch=8, accum=1, iters_per_epoch=10, epochs=5, max_iters=0)
    f = lr_factor(load_config("spatial"), plan)
    assert [f(i) for i in (0, 3999, 4000, 7999, 8000, 9999)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    f = lr_factor(load_config("spatial", overrides={"schedule": "step", "epochs": 5, "lr_steps": [2, 4]}), plan)
    assert [f(i) for i in (0, 19, 20, 39, 40)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    f = lr_factor(load_config("spatial", overrides={"schedule": "cosine", "epochs": 5}), plan)
    assert [f(0), f(25), f(50)] == pytest.approx([1.0, 0.5, 0.0])


def test_cli_rejects_an_unknown_key_with_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["run", "temporal", "--set", "nope=1", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown config key 'nope'" in result.output
    assert not (tmp_path / "temporal-split1").exists()


def test_cli_config_prints_the_resolved_config():
    result = CliRunner().invoke(main, ["config", "temporal", "--config", "demo", "--set", "flow_length=4"])
    assert result.exit_code == 0, result.output
    data = tomllib.loads(result.output)
    assert data["flow_length"] == 4 and data["arch"] == "resnet18"
    assert "in_channels = 8" in result.output


def test_cli_missing_store_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "nope.h5"
    result = CliRunner().invoke(main, ["run", "temporal", "--config", "demo", "--data", str(missing),
                                       "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert str(missing) in result.output and "flowprep extract" in result.output


def test_precision_auto_takes_bf16_only_where_the_gpu_computes_in_it(monkeypatch):
    import torch

    from trainer.distributed import Env
    from trainer.evaluation import amp_dtype, resolve_precision

    cpu = Env(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    gpu = Env(rank=0, world=1, local_rank=0, device=torch.device("cuda", 0))
    assert resolve_precision(cpu, "auto") == "fp32" and amp_dtype(cpu, "auto") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # V100, T4: no bf16
    assert resolve_precision(gpu, "auto") == "fp16" and amp_dtype(gpu, "auto") == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # H100
    assert resolve_precision(gpu, "auto") == "bf16" and amp_dtype(gpu, "auto") == torch.bfloat16
    assert resolve_precision(gpu, "fp32") == "fp32" and resolve_precision(cpu, "fp16") == "fp16"


def test_val_every_iters_preset_follows_the_schedule():
    assert load_config("temporal").val_every_iters == 1000  # iter-step: the paper's recipes
    assert load_config("temporal", "demo").val_every_iters == 0  # epoch schedules: every val_every epochs
    for name in ("ucf101_vgg16_spatial", "ucf101_vgg16_temporal", "hmdb51_vgg16_spatial"):
        data, _ = read_config_file(name)
        assert load_config(data["stream"], name).val_every_iters == 1000, name


def test_resnet101_recipes_use_the_batch_of_their_iteration_schedule():
    """The paper's schedules (10k / 30k iterations) are counted in batches of 256 (Wang et al. 2015,
    "Towards Good Practices for Very Deep Two-Stream ConvNets", arXiv:1507.02159)."""
    for name in ("ucf101_resnet101_spatial", "ucf101_resnet101_temporal", "hmdb51_resnet101_spatial",
                 "hmdb51_resnet101_temporal"):
        data, _ = read_config_file(name)
        cfg = load_config(data["stream"], name)
        assert cfg.batch_size == 256, name
        assert (cfg.max_iters, cfg.lr_steps) == ((10000, (4000, 8000)) if cfg.stream == "spatial"
                                                 else (30000, (10000, 20000))), name


def test_bare_unwraps_ddp_and_compile_in_either_order():
    import torch

    from trainer.train import bare_model as _bare

    class FakeDDP(torch.nn.Module):  # DistributedDataParallel keeps the network as .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    net = torch.nn.Linear(2, 2)
    assert _bare(net) is net
    assert _bare(torch.compile(FakeDDP(net))) is net  # what run() builds: compile(DDP(net))
    assert _bare(FakeDDP(torch.compile(net))) is net



def test_select_best_takes_higher_top1_then_lower_loss_and_never_a_non_finite_loss():
    from trainer.train import Position
    from trainer.run import select_best

    start = Position().best  # no checkpoint yet: any finite validation wins
    first = select_best(start, {"val_top1": 50.0, "val_loss": 1.2, "val_top5": 90.0}, 1)
    assert first == {"epoch": 1, "val_top1": 50.0, "val_loss": 1.2, "selected_by": "hold-out top-1, then hold-out loss"}
    assert select_best(first, {"val_top1": 40.0, "val_loss": 0.1}, 2) is None  # lower top-1 loses, whatever the loss
    assert select_best(first, {"val_top1": 50.0, "val_loss": 1.3}, 2) is None  # tie on top-1, higher loss
    assert select_best(first, {"val_top1": 50.0, "val_loss": 1.1}, 2)["epoch"] == 2  # tie, lower loss
    assert select_best(first, {"val_top1": 60.0, "val_loss": float("nan")}, 2) is None
    assert select_best(start, {"val_top1": 100.0, "val_loss": float("inf")}, 1) is None
    assert select_best(first, {}, 3) == {"epoch": 3, "val_top1": None, "val_loss": None,
                                         "selected_by": "last epoch (no hold-out)"}


def test_what_a_key_may_change_between_is_declared_with_the_key():
    """Run controls and protocol keys may differ between a run and its resumption or its test; the sets are
    derived from each field's declaration, not kept as separate lists."""
    from trainer.config import FIELDS, RESUME_KEYS, TEST_TIME_KEYS

    controls = {"data", "workers", "decode", "device", "compile", "channels_last", "missing_videos", "test_frames",
                "test_crops", "test_crop_scale", "test_batch"}
    assert RESUME_KEYS == controls | {"out", "val_every", "val_every_iters", "val_frames"}
    assert TEST_TIME_KEYS == controls | {"precision"}
    assert not {"lr", "arch", "flow_length", "seed", "split"} & (RESUME_KEYS | TEST_TIME_KEYS)
    assert all(set(f.metadata["may_change"]) <= {"resume", "test"} for f in FIELDS.values())


def test_a_hold_out_too_small_to_choose_by_keeps_the_last_epoch():
    from data_manifest.holdout import MIN_HOLDOUT_VIDEOS, too_small_to_choose
    from trainer.run import select_best
    from trainer.train import Position

    first = select_best(Position().best, {"val_top1": 100.0, "val_loss": 0.1}, 1, holdout_videos=3)
    assert first["selected_by"] == "last epoch (a hold-out of 3 videos is too small to choose by)"
    worse = select_best(first, {"val_top1": 0.0, "val_loss": 5.0}, 2, holdout_videos=3)
    assert worse["epoch"] == 2  # the later epoch, although the 3 videos score it lower
    assert select_best(worse, {"val_top1": 0.0, "val_loss": float("nan")}, 3, holdout_videos=3) is None
    enough = select_best(first, {"val_top1": 0.0, "val_loss": 5.0}, 2, holdout_videos=MIN_HOLDOUT_VIDEOS)
    assert enough is None  # a hold-out big enough chooses as before
    assert too_small_to_choose(3, 3) == ("the hold-out of 3 videos (1.0 per class of 3) is too small to choose by: "
                                         f"one video moves its top-1 by 33 points; at least {MIN_HOLDOUT_VIDEOS} "
                                         "are needed")
    assert too_small_to_choose(MIN_HOLDOUT_VIDEOS) == ""
