"""nanochat.train: batch arithmetic, horizon, schedules, MFU, history, and saves that survive a kill."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from nanochat import train
from nanochat.checkpoint import find_last_step
from nanochat.gpt import GPTConfig, build_model
from nanochat.train import History, Throughput, grad_accum_steps, is_due, lr_multiplier, training_horizon


def test_grad_accum_steps_fill_the_total_batch():
    assert grad_accum_steps(524_288, 32, 2048, 8) == 1   # the speedrun: no accumulation
    assert grad_accum_steps(524_288, 16, 2048, 8) == 2   # d26: half the device batch, two micro-steps
    assert grad_accum_steps(2048, 4, 256, 1) == 2
    with pytest.raises(ValueError, match=r"not a multiple of one micro-step's 1,024 .*e\.g\. 3,072"):
        grad_accum_steps(3000, 4, 256, 1)


def test_horizon_precedence():
    args = dict(num_params=1_000_000, flops_per_token=6e6, total_batch_size=10_000)
    first = training_horizon(7, 1e15, 20, **args)
    assert (first.steps, first.tokens) == (7, 70_000) and "num_iterations" in first.reason
    second = training_horizon(-1, 6e13, 20, **args)  # 6e13 / (6e6 x 1e4) = 1000 steps
    assert second.steps == 1000 and "target_flops" in second.reason
    assert math.isclose(second.flops, 6e13)
    third = training_horizon(-1, -1, 20, **args)  # 20 x 1e6 tokens / 1e4 per step
    assert third.steps == 2000 and third.tokens == 20_000_000 and "tokens per parameter" in third.reason
    with pytest.raises(ValueError, match="no training horizon"):
        training_horizon(-1, -1, -1, **args)


def test_lr_schedule_is_warmup_hold_warmdown():
    n = 100
    mults = [lr_multiplier(s, n, warmup_ratio=0.1, warmdown_ratio=0.2, final_lr_frac=0.1) for s in range(n + 1)]
    assert mults[0] == pytest.approx(0.1) and mults[9] == 1.0      # 10 warmup steps, linear
    assert all(m == 1.0 for m in mults[10:81])                      # hold
    assert mults[90] == pytest.approx(0.1 + 0.9 * 0.5)               # half way down the warmdown
    assert mults[100] == pytest.approx(0.1)                          # ends at final_lr_frac
    assert all(a >= b for a, b in zip(mults[10:], mults[11:]))       # never goes back up
    assert lr_multiplier(50, 100, warmdown_ratio=0.0) == 1.0         # no warmdown: constant


def test_set_schedules_sets_every_group():
    model = build_model(GPTConfig(sequence_len=8, vocab_size=32, n_layer=1, n_head=1, n_kv_head=1, n_embd=16))
    optimizer = model.setup_optimizers()
    mult = train.set_schedules(optimizer, 95, 100, muon_momentum_fn=lambda step: 0.9, warmdown_ratio=0.1)
    assert mult == pytest.approx(0.5)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(0.5 * group["initial_lr"])
        assert group.get("momentum") == (0.9 if group["kind"] == "muon" else None)


@pytest.mark.parametrize("every, due_steps", [(3, [0, 3, 6, 7]), (0, [7]), (-1, [])])
def test_is_due(every, due_steps):
    assert [s for s in range(8) if is_due(s, every, last_step=s == 7)] == due_steps


def test_throughput_and_mfu_arithmetic():
    now = [0.0]  # a fake clock: the steps take exactly dt, however loaded the machine is
    meter = Throughput(tokens_per_step=1000, flops_per_token=6e6, peak_flops_per_device=1e12, world_size=2,
                       skip_steps=1, clock=lambda: now[0])
    for step, dt in enumerate([5.0, 0.5, 0.5]):  # the first (compile/warm-up) step is not averaged
        meter.start()
        now[0] += dt
        meter.stop(step)
    assert meter.timed_steps == 2
    assert meter.tokens_per_second() == pytest.approx(2000, rel=1e-3)
    assert meter.mfu() == pytest.approx(2000 * 6e6 / 2e12, rel=1e-3)  # peak of both devices
    assert Throughput(1000, 6e6, None).mfu() is None


def test_cpu_peak_is_measured_and_called_an_estimate():
    flops, source = train.peak_flops("cpu")
    assert flops > 1e9 and "estimate" in source


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989), ("NVIDIA B200", 2250), ("NVIDIA GB200", 2500), ("NVIDIA A100-SXM4-80GB", 312),
])
def test_gpu_peaks_by_name_check_the_longer_names_first(monkeypatch, name, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    flops, source = train.peak_flops("cuda")
    assert flops == tflops * 1e12 and "datasheet" in source


def test_an_unknown_gpu_has_no_peak_and_says_where_to_add_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Future 9000")
    assert train.peak_flops("cuda") == (None, "NVIDIA Future 9000: peak unknown (add it to nanochat.train.GPU_PEAK_FLOPS)")


def test_setup_objects_are_frozen_out_of_the_collectors_scans():
    import gc
    model = build_model(GPTConfig(sequence_len=8, vocab_size=16, n_layer=1, n_head=1, n_kv_head=1, n_embd=8))
    gc.unfreeze()
    try:
        train.freeze_setup_objects()
        assert gc.get_freeze_count() > 1000  # the interpreter's and the model's objects, not rescanned again
    finally:
        gc.unfreeze()
    del model


def test_history_replaces_a_repeated_step_and_survives_json():
    history = History()
    history.add(0, **{"val/bpb": 3.0})
    history.add(5, **{"val/bpb": 2.5, "core": 0.1})
    history.add(5, **{"val/bpb": 2.4})  # a resumed run evaluates its first step again
    assert history.series["val/bpb"] == [(0, 3.0), (5, 2.4)]
    again = History(json.loads(json.dumps(history.state_dict())))
    assert again.series == history.series and again.last("core") == 0.1 and again.last("missing", 7) == 7


def test_the_flops_plot_keeps_the_untrained_model():
    import matplotlib
    matplotlib.use("Agg")
    history = History()
    for step in range(6):
        history.add(step, **{"train/loss": 5.0 - 0.1 * step})
    history.add(0, **{"val/bpb": 3.0})
    history.add(5, **{"val/bpb": 2.0})
    fig = train.plot_history(history, flops_per_step=1e9)
    val_by_flops = fig.axes[-1].lines[0].get_xdata()  # the val bpb curve of the FLOPs panel
    assert list(val_by_flops) == [0.0, 5e9]  # step 0, at 0 FLOPs, is on the plot


# -----------------------------------------------------------------------------
# A kill in the middle of a save leaves the last complete checkpoint intact

KILLER = textwrap.dedent('''
    import os, signal, sys
    from dataclasses import asdict
    import torch
    from nanochat import common, train
    from nanochat.gpt import GPTConfig, build_model

    folder, kill_in = sys.argv[1], sys.argv[2]

    class Loader:
        def __init__(self, position):
            self.position = position
        def state_dict(self):
            return {"next_document": [self.position, 0]}

    torch.manual_seed(0)
    model = build_model(GPTConfig(sequence_len=8, vocab_size=32, n_layer=1, n_head=1, n_kv_head=1, n_embd=16))
    optimizer = model.setup_optimizers()

    def step():
        model(torch.randint(0, 32, (2, 8)), torch.randint(0, 32, (2, 8))).backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)

    step()
    train.save_training_state(folder, 1, model, optimizer, Loader(1), {"config": asdict(model.config), "history": {}})
    torch.save(model.state_dict(), os.path.join(folder, "expected_weights.pt"))
    step()

    real_publish = common.publish
    def dying_publish(tmp, path):
        if os.path.basename(path).startswith(kill_in):
            with open(path + ".partial", "wb") as f:   # half a file on disk, like a real crash would leave
                f.write(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        real_publish(tmp, path)
    common.publish = dying_publish
    train.save_training_state(folder, 2, model, optimizer, Loader(2), {"config": asdict(model.config), "history": {}})
''')


@pytest.mark.parametrize("kill_in", ["model", "optim", "loader", "meta"])
def test_a_kill_mid_save_leaves_the_last_good_checkpoint(tmp_path, kill_in):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    folder = tmp_path / "ckpt"
    result = subprocess.run([sys.executable, str(script), str(folder), kill_in], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert find_last_step(str(folder)) == 1  # step 2 never became complete
    torch.manual_seed(1)
    model = build_model(GPTConfig(sequence_len=8, vocab_size=32, n_layer=1, n_head=1, n_kv_head=1, n_embd=16))
    optimizer = model.setup_optimizers()
    meta, loader_state = train.load_training_state(str(folder), 1, model, optimizer, "cpu")
    expected = torch.load(folder / "expected_weights.pt")
    assert all(torch.equal(value, expected[name]) for name, value in model.state_dict().items())
    assert loader_state == {"next_document": [1, 0]} and meta["step"] == 1
    assert len(optimizer.state) == len(list(model.parameters()))  # momentum and Adam moments came back


def test_wandb_logging_when_a_run_name_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # writes the run to disk, no network, no account
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = train.RunLogger("unit-test", "nanochat-tests", {"depth": 1}, log_every=1)
    logger.log(0, {"train/loss": 5.0}, "step 0")
    logger.log(1, {"train/loss": 4.0}, "step 1")
    logger.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert train.RunLogger("dummy", "nanochat-tests", {}).wandb is None  # "dummy": console only


@pytest.mark.slow
def test_compiled_training_step_matches_eager():
    def one_step(compile_model):
        torch.manual_seed(0)
        model = build_model(GPTConfig(sequence_len=32, vocab_size=64, n_layer=1, n_head=1, n_kv_head=1, n_embd=32))
        optimizer = model.setup_optimizers()
        run = torch.compile(model, dynamic=False) if compile_model else model
        data = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(3):
            x, y = torch.randint(0, 64, (2, 2, 32), generator=data)
            loss = run(x, y)
            loss.backward()
            optimizer.step()
            model.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses, model.state_dict()

    eager_losses, eager_state = one_step(False)
    compiled_losses, compiled_state = one_step(True)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for name, value in eager_state.items():  # the compiled model trains the same weights
        torch.testing.assert_close(compiled_state[name], value, atol=1e-4, rtol=1e-3)


def test_val_rows_are_tokenized_once_and_again_when_anything_changes(base_dir, data_pack, monkeypatch):
    from nanochat.tokenizer import Tokenizer
    from nanochat import dataloader, dataset

    dataset.download_shards(2)
    tokenizer = Tokenizer.bytes_only()
    built = []
    real = dataloader.build_val_loader
    monkeypatch.setattr(train, "build_val_loader", lambda *a, **k: built.append(a[1:3]) or real(*a, **k))
    model = build_model(GPTConfig(sequence_len=32, vocab_size=tokenizer.get_vocab_size(), n_layer=1, n_head=1,
                                  n_kv_head=1, n_embd=16))
    table = tokenizer.token_bytes()
    first = train.evaluate_val_bpb(model, tokenizer, 2, 32, 256, "cpu", table)
    assert train.evaluate_val_bpb(model, tokenizer, 2, 32, 256, "cpu", table) == first
    assert built == [(2, 32)]  # the second evaluation reused the packed rows
    train.evaluate_val_bpb(model, tokenizer, 4, 32, 256, "cpu", table)
    val = dataset.split_files("val")[0]
    os.utime(val, ns=(0, 0))  # the val shard replaced: its rows are packed again
    train.evaluate_val_bpb(model, tokenizer, 4, 32, 256, "cpu", table)
    assert built == [(2, 32), (4, 32), (4, 32)]
