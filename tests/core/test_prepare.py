"""`elvis prepare` + the prepared cache in training: index contents, unreadable images, SIGKILL/resume with an identical
hash, transform refusal, batch augmentation on the device, DistributedSampler sharding, the training run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from elvis_core.errors import ConfigError
from elvis_core.model.transforms import ModelInputTransform
from elvis_core.training.config import load_config
from elvis_core.training.prepared import (INDEX, PreparedCache, decode_unit_uint8, prepare, transform_config,
                                          transform_hash)
from tests.undecodable import make_undecodable

REPO = Path(__file__).resolve().parents[2]


def _tiny_transform():
    from elvis_core.model import preset

    return ModelInputTransform.from_config(preset("tiny")["preprocessing"])  # 64 px, percentile normalisation


TINY = _tiny_transform()


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from elvis_core.phantom import generate

    root = tmp_path_factory.mktemp("prep") / "ph"
    generate(root, 12, seed=5, size=128)
    return root


@pytest.fixture(scope="module")
def cache(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepc") / "cache"
    summ = prepare(str(phantom), str(out), TINY, workers=1, shard_size=5)
    assert summ.n_ready == 12 and summ.n_shards == 3 and summ.shards_written == 3
    return out


def _cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "elvis_core", *args], cwd=str(REPO), capture_output=True, text=True,
                          env=env, **kw)


def test_index_holds_what_training_needs(phantom, cache):
    from elvis_core.io.report import read_report
    from elvis_core.training.data import find_pairs, report_training_text

    pc = PreparedCache.open(str(cache))
    idx = json.loads((cache / INDEX).read_text())
    assert idx["transform"] == transform_config(TINY) and idx["transform_hash"] == transform_hash(TINY.to_config())
    pairs, _ = find_pairs(str(phantom))
    assert sorted(pc.paths) == sorted(os.path.relpath(p.image_path, phantom) for p in pairs)
    blob = (cache / "texts.bin").read_bytes()
    for i in (0, 7, 11):
        full = os.path.join(pc.root, pc.paths[i])
        # report text offsets point at the FINDINGS + IMPRESSION text of the study's report
        text = blob[pc.text_start[i]:pc.text_end[i]].decode()
        assert text == report_training_text(read_report(os.path.join(pc.root, pc.report[i])))
        assert pc.view[i] in ("PA", "AP") and pc.study[i].startswith("s") and pc.patient[i].startswith("p")
        # the cached row is exactly the transform's [0, 1] output as uint8; the original shape is recorded
        want, shape = decode_unit_uint8(full, TINY)
        shard = np.load(os.path.join(str(cache), pc.shards[pc.shard[i]]["file"]), mmap_mode="r")
        np.testing.assert_array_equal(shard[pc.row[i]], want)
        assert tuple(pc.shape[i]) == shape and shape[0] == 128
    assert pc.verify() == []


def test_refuses_a_cache_of_another_transform(phantom, cache, tmp_path):
    pc = PreparedCache.open(str(cache))
    with pytest.raises(ConfigError, match=r"another model-input transform.*size: cache 64 vs config 256"):
        pc.check_transform(ModelInputTransform(size=256))
    with pytest.raises(ConfigError, match=r"std: cache 0.25 vs config 0.3"):
        pc.check_transform(ModelInputTransform.from_config({**TINY.to_config(), "std": 0.3}))
    # training with a config whose model input differs (demo preset: 256 px) refuses it before any work
    from elvis_core.training.trainer import train

    cfg = load_config(None, [f"data.cache='prepared:{cache}'", "model.preset='demo'", "train.max_steps=1",
                             "train.progress=false", f"output.dir={str(tmp_path / 'o')!r}"])
    with pytest.raises(ConfigError, match="another model-input transform"):
        train(cfg)
    # prepare into a finished cache (or a partial one) with another transform: refused too
    with pytest.raises(ConfigError, match="another model-input transform"):
        prepare(str(phantom), str(cache), ModelInputTransform(size=96), workers=1, shard_size=5)
    part = tmp_path / "part"
    shutil.copytree(cache, part)
    (part / INDEX).unlink()
    with pytest.raises(ConfigError, match=r"partial cache made with another transform \(.*size: cache 64 vs config 96"):
        prepare(str(phantom), str(part), ModelInputTransform(size=96), workers=1, shard_size=5)


def test_damaged_cache_is_refused(cache, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(cache, bad)
    with open(bad / "shard-00001.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ConfigError, match="shard-00001.npy is missing or has the wrong size"):
        PreparedCache.open(str(bad))
    edited = tmp_path / "edited"
    shutil.copytree(cache, edited)
    idx = json.loads((edited / INDEX).read_text())
    idx["entries"]["row"][0] = 3
    (edited / INDEX).write_text(json.dumps(idx))
    with pytest.raises(ConfigError, match="does not match its cache_hash"):
        PreparedCache.open(str(edited))
    with pytest.raises(ConfigError, match="not a complete prepared cache"):
        PreparedCache.open(str(tmp_path))


def test_unreadable_images_are_listed_not_fatal(phantom, tmp_path):
    root = tmp_path / "ph"
    shutil.copytree(phantom, root)
    dcms = sorted(root.rglob("*.dcm"))
    make_undecodable(dcms[3])  # the header scan passes, decoding fails
    out = tmp_path / "c"
    r = _cli("prepare", str(root), "--out", str(out), "--set", "model.preset='tiny'", "--workers", "2",
             "--shard-size", "4", "--no-progress", timeout=300)
    assert r.returncode == 0, r.stderr
    rel = os.path.relpath(dcms[3], root)
    assert "1 unreadable image(s) left out" in r.stdout and rel in r.stdout
    assert "Traceback" not in r.stderr
    pc = PreparedCache.open(str(out))
    assert len(pc) == 11 and [u[0] for u in pc.unreadable] == [rel] and rel not in pc.paths


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_same_cache(phantom, cache, tmp_path):
    """Kill -9 'elvis prepare' after some shards are done; rerun: finished shards reused, a half-written shard never
    used, the result byte-identical (cache hash and every shard) to an uninterrupted run (the ``cache`` fixture)."""
    out = tmp_path / "killed"
    env = dict(os.environ, ELVIS_PREPARE_TEST_DELAY_S="0.25")
    args = [sys.executable, "-m", "elvis_core", "prepare", str(phantom), "--out", str(out), "--set",
            "model.preset='tiny'", "--workers", "1", "--shard-size", "5", "--no-progress"]
    proc = subprocess.Popen(args, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "shard-00000.json").exists():
        time.sleep(0.05)
    assert (out / "shard-00000.json").exists(), "no shard finished in time"
    time.sleep(0.5)  # the worker is inside shard 1 now
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / INDEX).exists(), "the run finished before the kill"
    # the worker dies with the parent (PR_SET_PDEATHSIG, through the fork server's exit): wait until the folder is
    # still for 3 s (a live worker finishes a shard every ~1.3 s here)
    snap = None
    while True:
        now = sorted((p.name, p.stat().st_size) for p in out.iterdir())
        if now == snap:
            break
        snap = now
        time.sleep(3.0)
    assert not (out / INDEX).exists()
    # also a shard .npy without its .json, of the wrong size: never to be used
    (out / "shard-00002.npy").write_bytes(b"\x93NUMPY half-written")
    done_before = sorted(p.name for p in out.glob("shard-*.json"))
    assert done_before and "shard-00002.json" not in done_before

    r = _cli("prepare", str(phantom), "--out", str(out), "--set", "model.preset='tiny'", "--workers", "1",
             "--shard-size", "5", "--no-progress", timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{len(done_before)} reused from an earlier run" in r.stdout
    a, b = PreparedCache.open(str(out)), PreparedCache.open(str(cache))
    assert a.cache_hash == b.cache_hash
    assert [s["sha256"] for s in a.shards] == [s["sha256"] for s in b.shards]
    for name in ["index.json", "texts.bin"] + [s["file"] for s in b.shards]:
        assert (out / name).read_bytes() == (cache / name).read_bytes(), name
    assert not list(out.glob("*.tmp*"))
    assert a.verify() == []


def test_cli_prepare_rerun_on_a_finished_cache_is_a_no_op(phantom, cache, capsys):
    from elvis_core.cli import main

    code = main(["prepare", str(phantom), "--out", str(cache), "--set", "model.preset='tiny'", "--shard-size", "5",
                 "--no-progress", "--verify"])
    out = capsys.readouterr().out
    assert code == 0 and "already prepared (12 images" in out and "verified" in out


def test_cli_errors_are_one_line(tmp_path, capsys):
    from elvis_core.cli import main

    assert main(["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data root is not a folder" in err


# -- the prepared dataset in training -------------------------------------------------------------------------------

def _tiny_model():
    from elvis_core.model import build_model, preset

    torch.manual_seed(0)
    return build_model(preset("tiny"))


def test_pretokenized_batches_equal_tokenize(cache):
    from elvis_core.training.data import Collate, PreparedDataset

    pc = PreparedCache.open(str(cache))
    model = _tiny_model()
    col = Collate(model)
    ds = PreparedDataset(pc, np.arange(len(pc)))
    idx = [3, 0, 11, 5]
    plain = col(ds.__getitems__(idx))
    ds.pretokenize(model.tokenizer, model.max_text_length)
    fast = col(ds.__getitems__(idx))
    texts = [ds.text(i) for i in idx]
    ref = model.tokenize(texts)
    for b in (plain, fast):
        assert torch.equal(b["input_ids"], ref["input_ids"]) and torch.equal(b["attention_mask"], ref["attention_mask"])
        assert b["pixel_values"].dtype == torch.uint8 and b["pixel_values"].shape == (4, 1, 64, 64)
    assert torch.equal(plain["words"], fast["words"]) and torch.equal(plain["sentence_ids"], fast["sentence_ids"])
    # fixed shapes (CUDA graphs): text padded to the model's maximum length
    static = Collate(model, pad_to_max_length=True)(ds.__getitems__(idx))
    assert static["input_ids"].shape[1] == model.max_text_length
    assert torch.equal(static["input_ids"][:, :ref["input_ids"].shape[1]], ref["input_ids"])


def test_batch_augmentation_matches_the_per_item_path_and_never_flips():
    from elvis_core.training.data import Augment, batch_model_input

    s = 64
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    img = (0.5 + 0.4 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.float32)
    img[20:30, 8:16] = 1.0  # a bright patch on the image's left
    u8 = np.round(img * 255).astype(np.uint8)
    aug = Augment(scale=(0.9, 1.1), rotate_deg=5.0, translate=0.05, brightness=0.1, contrast=0.1)
    params, refs = [], []
    for k in range(6):
        params.append(aug.sample(np.random.default_rng([0, 1, k])))
        refs.append(aug(u8.astype(np.float32) / 255.0, np.random.default_rng([0, 1, k])))  # same draws
    x = torch.from_numpy(np.stack([u8] * 6))[:, None]
    out = batch_model_input(x, torch.from_numpy(np.stack(params)), mean=0.5, std=0.25)
    assert out.shape == (6, 1, s, s) and out.dtype == torch.float32
    got = out[:, 0].numpy() * 0.25 + 0.5
    inner = (slice(8, -8), slice(8, -8))
    for k in range(6):  # same affine as cv2 (up to half-pixel centre conventions)
        assert np.abs(got[k][inner] - refs[k][inner]).mean() < 0.03, k
    for k in range(6):  # never flipped: the bright patch stays on the left half
        left, right = got[k][:, : s // 2].max(), got[k][:, s // 2:].max()
        assert left > right
    # no augmentation: exactly the standardised cache values
    plain = batch_model_input(x, None, mean=0.5, std=0.25)
    torch.testing.assert_close(plain[0, 0], (torch.from_numpy(u8).float() / 255 - 0.5) / 0.25)
    with pytest.raises(ValueError, match="mirror"):
        bad = torch.from_numpy(np.stack(params)).clone()
        bad[0, 0] = -1.0
        batch_model_input(x, bad, 0.5, 0.25)


def test_distributed_sampler_shards_the_prepared_set(cache):
    from elvis_core.training.data import Augment, PreparedDataset

    pc = PreparedCache.open(str(cache))
    ds = PreparedDataset(pc, np.arange(len(pc)), augment=Augment(), seed=4)
    ds.set_epoch(2)
    seen = []
    params = {}
    for rank in range(2):
        smp = torch.utils.data.distributed.DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=4,
                                                              drop_last=True)
        smp.set_epoch(2)
        idx = list(smp)
        assert len(idx) == len(ds) // 2
        seen.append(set(idx))
        b = ds.__getitems__(idx)
        for i, p in zip(idx, b["augment"]):
            params[i] = p
    assert not (seen[0] & seen[1]) and len(seen[0] | seen[1]) == len(ds)
    # the augmentation of an item depends on (seed, epoch, item), not on which rank or batch draws it
    one = ds.__getitems__(sorted(params))
    for i, p in zip(sorted(params), one["augment"]):
        assert torch.equal(p, params[i])


def test_adamw_fused_only_on_cuda():
    from elvis_core.training.trainer import adamw_options

    assert adamw_options(torch.device("cpu")) == {}
    assert adamw_options(torch.device("cuda:0")) == {"fused": True}
    p = torch.nn.Parameter(torch.zeros(3))
    torch.optim.AdamW([p], **adamw_options(torch.device("cpu"))).step()  # accepted by torch on CPU


def test_cache_config_values(tmp_path):
    assert load_config(None, ["data.cache='prepared:/x'"])["data"]["cache"] == "prepared:/x"
    for bad in ("prepared:", "disk"):
        with pytest.raises(ConfigError, match="data.cache"):
            load_config(None, [f"data.cache='{bad}'"])


def test_train_from_prepared_cache(phantom, cache, tmp_path):
    from elvis_core.training.trainer import train

    sets = [f"data.cache='prepared:{cache}'", "model.preset='tiny'", "train.batch_size=4", "train.threads=1",
            "train.max_steps=4", "train.lr=3e-3", "train.warmup_steps=1", "train.log_every=1",
            "train.progress=false", "data.val_fraction=0.2", f"output.dir={str(tmp_path / 'run')!r}",
            "train.checkpoint_every=2"]
    res = train(load_config(None, sets))
    assert res.steps == 4 and np.isfinite(res.losses).all()
    assert res.n_train_pairs + res.n_val_pairs == 12 and res.n_val_pairs > 0
    cfg = json.loads((Path(res.model_dir) / "config.json").read_text())
    data = cfg["provenance"]["data"]
    assert data["prepared_cache_hash"] == PreparedCache.open(str(cache)).cache_hash
    assert data["root"] == str(Path(phantom).resolve())
    # views filter: the cache holds PA/AP; asking for LATERAL is refused with a clear message
    with pytest.raises(ConfigError, match="LATERAL"):
        train(load_config(None, sets + ["data.views=['LATERAL']"]))


@pytest.mark.slow
def test_train_from_prepared_cache_under_torchrun_two_processes(cache, tmp_path):
    """The real trainer under torchrun (gloo) reading the prepared cache: each rank its DistributedSampler shard,
    augmentation on the batch, rank 0 writes."""
    cfg = tmp_path / "t.toml"
    cfg.write_text(f"[model]\npreset = 'tiny'\n[data]\ncache = 'prepared:{cache}'\n"
                   "[train]\nmax_steps = 2\nbatch_size = 4\nthreads = 1\nlog_every = 1\nprogress = false\n"
                   "warmup_steps = 1\nnum_workers = 1\n")
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "elvis_core", "train", str(cfg), "--out", str(out)], cwd=str(REPO),
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("checkpoint:") == 1
    prov = json.loads((out / "model" / "config.json").read_text())["provenance"]
    assert prov["training"]["world_size"] == 2 and prov["training"]["steps_done"] == 2
    assert prov["data"]["prepared_cache_hash"] == PreparedCache.open(str(cache)).cache_hash


def test_cached_input_equals_the_model_transform_within_quantisation(phantom, cache, tmp_path):
    """What training feeds the model from the cache is the checkpoint transform's output: within half a uint8 step
    for the pad-to-square transform, exactly for hi-ml's centre-crop transform (already 8-bit); both kinds hashed."""
    from elvis_core.io.images import read_image
    from elvis_core.model.transforms import transform_from_config
    from elvis_core.training.data import PreparedDataset, batch_model_input

    crop = transform_from_config({"kind": "resize_short_side_center_crop", "resize": 72, "crop": 64})
    out = tmp_path / "crop"
    prepare(str(phantom), str(out), crop, workers=1, shard_size=8)
    for path, tf in ((cache, TINY), (out, crop)):
        pc = PreparedCache.open(str(path))
        pc.check_transform(tf)
        assert pc.transform_config["kind"] == tf.to_config()["kind"]
        ds = PreparedDataset(pc, np.arange(len(pc)))
        got = batch_model_input(ds.__getitems__([2])["pixels"], None, tf.mean, tf.std)[0, 0].numpy()
        want = tf.apply(read_image(os.path.join(pc.root, pc.paths[2])))
        tol = 0.5 / 255 / tf.std + 1e-5 if tf is TINY else 1e-5
        assert np.abs(got - want).max() <= tol
    with pytest.raises(ConfigError, match="kind: cache 'resize_long_side_pad_square' vs config"):
        PreparedCache.open(str(cache)).check_transform(crop)


def test_thread_prefetcher_keeps_order_raises_and_stops():
    import threading

    from elvis_core.training.data import ThreadPrefetcher

    assert list(ThreadPrefetcher(range(50), depth=3)) == list(range(50))

    def bad():
        yield 1
        raise ValueError("boom in the loader")

    it = ThreadPrefetcher(bad())
    assert next(it) == 1
    with pytest.raises(ValueError, match="boom"):
        next(it)
    # stopping early while the producer is blocked on a full queue ends its thread
    n_before = threading.active_count()
    with ThreadPrefetcher(iter(range(10_000)), depth=2) as p:
        assert next(p) == 0
    time.sleep(0.3)
    assert threading.active_count() <= n_before


def test_training_from_the_cache_resumes_after_a_crash_mid_epoch(cache, tmp_path, monkeypatch):
    """Crash at step 3 (prefetch thread running), resume from OUT/last at step 2: the batches already done in the
    epoch are skipped, the run ends at step 5 in epoch 1 (12 pairs / batch 4 = 3 steps per epoch)."""
    from elvis_core.training import trainer

    out = tmp_path / "crash"
    real_row = trainer._Logger.row

    def crashing_row(self, **kw):
        if kw.get("step") == 3:
            raise RuntimeError("simulated crash")
        return real_row(self, **kw)

    monkeypatch.setattr(trainer._Logger, "row", crashing_row)
    cfg = load_config(None, [f"data.cache='prepared:{cache}'", "model.preset='tiny'", "train.batch_size=4",
                             "train.threads=1", "train.max_steps=5", "train.checkpoint_every=2",
                             "train.warmup_steps=1", "train.log_every=1", "train.progress=false",
                             f"output.dir={str(out)!r}"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train(cfg)
    monkeypatch.setattr(trainer._Logger, "row", real_row)
    res = trainer.train(cfg)
    assert res.resumed_from_step == 2 and res.steps == 5 and len(res.losses) == 3
    rows = [r.split(",") for r in (out / "log.csv").read_text().strip().splitlines()[1:]]
    assert [(int(r[0]), int(r[1])) for r in rows if r[3]][-3:] == [(3, 0), (4, 1), (5, 1)]
