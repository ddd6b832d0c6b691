"""`elvis train`: config validation, bad input, and a tiny end-to-end CPU run on phantom studies."""

import os

import pytest
import torch

from elvis_core.cli import main
from elvis_core.errors import ConfigError
from elvis_core.training.config import load_config, parse_set


def _write(tmp_path, text, name="cfg.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from elvis_core.phantom import generate

    root = tmp_path_factory.mktemp("phantom") / "ph"
    generate(root, 24, seed=3, size=128)
    return root


def _tiny_cfg(root, out, **extra):
    sets = [f"data.root={str(root)!r}", "model.preset='tiny'", "train.batch_size=8", "train.threads=1",
            "train.lr=3e-3", "train.warmup_steps=2", "train.log_every=1", "train.progress=false",
            "augment.enabled=false", f"output.dir={str(out)!r}"]
    sets += [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, sets)


# -- config ----------------------------------------------------------------------------------------------------------

def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, "[train]\nlrr = 0.1\n")
    with pytest.raises(ConfigError, match=r"cfg\.toml: unknown config key 'train\.lrr'"):
        load_config(path)


def test_wrong_type_names_key(tmp_path):
    path = _write(tmp_path, '[train]\nbatch_size = "8"\n')
    with pytest.raises(ConfigError, match=r"'train\.batch_size' must be an integer, got a string '8'"):
        load_config(path)
    path = _write(tmp_path, '[objectives.weights]\nintra = true\n', "b.toml")
    with pytest.raises(ConfigError, match=r"'objectives\.weights\.intra' must be a number"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'data\.cache' must be one of"):
        load_config(None, ["data.cache=disk"])


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[train\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.toml"))


def test_set_values_are_toml_literals():
    assert parse_set("train.lr=3e-4") == (["train", "lr"], 3e-4)
    assert parse_set("data.views=['PA']") == (["data", "views"], ["PA"])
    assert parse_set("data.root=/some/where") == (["data", "root"], "/some/where")
    assert parse_set("train.bf16=false") == (["train", "bf16"], False)
    cfg = load_config(None, ["train.epochs=2", "objectives.intra.distance=mse"])
    assert cfg["train"]["epochs"] == 2 and cfg["objectives"]["intra"]["distance"] == "mse"
    with pytest.raises(ConfigError, match="key=value"):
        parse_set("train.lr")


CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "resources", "configs")


def test_demo_config_file_is_valid():
    cfg = load_config(os.path.join(CONFIG_DIR, "demo.toml"))
    assert cfg["model"]["preset"] == "demo" and cfg["data"]["exclude_splits"] == ["val", "test"]


#: shipped configs read by another recipe than `elvis train` (python -m elvis_core.training.word_finetune CONFIG)
WORD_FINETUNE_CONFIGS = ("demo_words.toml",)


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".toml")))
def test_shipped_configs_are_valid(name):
    from elvis_core.training.config import model_config_from

    if name in WORD_FINETUNE_CONFIGS:
        from elvis_core.training import word_finetune

        cfg = word_finetune.load_config(os.path.join(CONFIG_DIR, name))
        assert set(cfg) <= set(word_finetune.DEFAULTS) and cfg["init_from"]
        return
    cfg = load_config(os.path.join(CONFIG_DIR, name))
    assert model_config_from(cfg)["architecture"] == "elvis-dual-encoder"


def test_model_overrides_validated(tmp_path):
    from elvis_core.training.config import model_config_from

    cfg = load_config(None, ["model.overrides={projection={dim=32}}"])
    assert model_config_from(cfg)["projection"]["dim"] == 32
    cfg = load_config(None, ["model.overrides={projection={dimm=32}}"])
    with pytest.raises(ConfigError, match=r"model\.projection\.dimm"):
        model_config_from(cfg)


def test_training_model_config_checked_against_limits_before_building():
    """A training config asking for a huge model is refused before anything is built (model/limits.py)."""
    from elvis_core.training.config import model_config_from

    cfg = load_config(None, ["model.overrides={text={hf_config={num_hidden_layers=1000000}}}"])
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        model_config_from(cfg)
    cfg = load_config(None, ["model.overrides={text={hf_config={hidden_size=60000, intermediate_size=60000}}}"])
    with pytest.raises(ConfigError, match="parameters, more than the limit"):
        model_config_from(cfg)


# -- CLI bad input: one line, exit 2, no traceback -------------------------------------------------------------------

def test_cli_bad_config_is_one_line(tmp_path, capsys):
    path = _write(tmp_path, "[train]\nbatch_size = -1\n")
    assert main(["train", path]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "train.batch_size" in err


def test_cli_empty_data_root(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    path = _write(tmp_path, f"[data]\nroot = {str(empty)!r}\n[model]\npreset = 'tiny'\n")
    assert main(["train", path, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no image-report pairs found" in err and str(empty) in err


def test_cli_missing_data_root(tmp_path, capsys):
    path = _write(tmp_path, "[model]\npreset = 'tiny'\n")
    assert main(["train", path, "--set", f"data.root={str(tmp_path / 'nowhere')!r}", "--no-progress"]) == 2
    assert "data root is not a folder" in capsys.readouterr().err


def test_too_few_pairs_for_a_batch(phantom, tmp_path):
    from elvis_core.training.trainer import train

    cfg = _tiny_cfg(phantom, tmp_path / "o", **{"train.batch_size": 500, "train.max_steps": 1})
    with pytest.raises(ConfigError, match="fewer than one batch"):
        train(cfg)


# -- data --------------------------------------------------------------------------------------------------------------

def test_pairs_exclusion_and_sections(phantom):
    from elvis_core.training.data import excluded_patients_from_csv, find_pairs

    pairs, stats = find_pairs(str(phantom))
    assert len(pairs) == 24 and stats.pairs == 24
    assert all("FINDINGS" not in p.text and "INDICATION" not in p.text for p in pairs)
    excl = excluded_patients_from_csv(str(phantom / "ms_cxr.csv"), ["val", "test"])
    kept, st2 = find_pairs(str(phantom), exclude_patients=excl)
    assert 0 < len(kept) < 24 and st2.excluded_patients == 24 - len(kept)
    assert not {p.patient for p in kept} & excl


def test_augment_never_flips():
    import numpy as np

    from elvis_core.training.data import Augment

    img = np.zeros((64, 64), np.float32)
    img[:, :16] = 1.0  # bright on the image's left
    aug = Augment(scale=(0.9, 1.1), rotate_deg=5, translate=0.05, brightness=0.0, contrast=0.0)
    for seed in range(20):
        out = aug(img, np.random.default_rng(seed))
        assert out[:, :32].mean() > out[:, 32:].mean() + 0.3


# -- end to end ------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_training_run_loss_falls_reloads_and_resumes(phantom, tmp_path):
    import shutil

    from elvis_core.model.checkpoint import load_checkpoint, read_checkpoint_config
    from elvis_core.training.trainer import train

    from tests.undecodable import make_undecodable

    # one unreadable image (listed by the scan, fails to decode) in a copy of the phantom set
    root = tmp_path / "ph"
    shutil.copytree(phantom, root)
    dcms = sorted(root.rglob("*.dcm"))
    make_undecodable(dcms[0])
    out = tmp_path / "run"
    cfg = _tiny_cfg(root, out, **{"train.max_steps": 24, "train.checkpoint_every": 10})
    res = train(cfg)
    assert res.steps == 24
    assert res.unreadable_images == 1 and "1 unreadable images" in " ".join(res.data_lines)
    assert res.n_train_pairs == 23
    first, last = sum(res.losses[:4]) / 4, sum(res.losses[-4:]) / 4
    assert last < first - 0.1, res.losses
    # the log has every step with its losses
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,epoch,lr,loss,global") and len(rows) == 25
    # the checkpoint reloads to identical outputs
    m = load_checkpoint(res.model_dir)
    cfg_json = read_checkpoint_config(res.model_dir)
    assert cfg_json["provenance"]["training"]["steps_done"] == 24
    assert cfg_json["provenance"]["data"]["n_train_pairs"] == 23
    assert cfg_json["provenance"]["objectives"]["weights"]["global"] == 1.0
    # the words its text encoder was trained on, recorded beside config.json (unknown words are named later)
    from elvis_core.model.vocab import known_words_from_texts
    from elvis_core.training.data import find_pairs

    pairs = find_pairs(root)[0]
    report_words = set(known_words_from_texts(p.text for p in pairs))
    assert (out / "model" / "known_words.json").is_file()
    assert m.known_words["source"] == f"{len(pairs)} training reports" and 20 < len(m.known_words["words"])
    assert set(m.known_words["words"]) <= report_words
    x = torch.randn(2, 1, 64, 64)
    tok = m.tokenize(["small left pleural effusion", "cardiomegaly"])
    m2 = load_checkpoint(res.model_dir)
    with torch.no_grad():
        a, b = m.encode_image(x), m2.encode_image(x)
        ta, tb = (mm.encode_text(tok["input_ids"], tok["attention_mask"]) for mm in (m, m2))
    assert torch.equal(a.patch_emb, b.patch_emb) and torch.equal(ta.global_emb, tb.global_emb)
    # resume: a second run with more steps continues from OUT/last
    cfg2 = _tiny_cfg(root, out, **{"train.max_steps": 28})
    res2 = train(cfg2)
    assert res2.resumed_from_step == 24 and res2.steps == 28 and len(res2.losses) == 4


def test_resume_after_crash_mid_epoch(phantom, tmp_path, monkeypatch):
    from elvis_core.training import trainer

    out = tmp_path / "crash"
    real_row = trainer._Logger.row

    def crashing_row(self, **kw):
        if kw.get("step") == 7:
            raise RuntimeError("simulated crash")
        return real_row(self, **kw)

    monkeypatch.setattr(trainer._Logger, "row", crashing_row)
    cfg = _tiny_cfg(phantom, out, **{"train.max_steps": 9, "train.checkpoint_every": 5, "train.batch_size": 3})
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train(cfg)
    assert (out / "last" / "trainer_state.json").is_file() and not (out / "model").exists()
    monkeypatch.setattr(trainer._Logger, "row", real_row)
    res = trainer.train(cfg)
    assert res.resumed_from_step == 5 and res.steps == 9 and len(res.losses) == 4
    import json
    meta = json.loads((out / "last" / "trainer_state.json").read_text())["meta"]
    assert meta["step"] == 9
    # 24 pairs / batch 3 = 8 steps per epoch: the resumed run skipped the 5 batches already done in epoch 0
    rows = [r.split(",") for r in (out / "log.csv").read_text().strip().splitlines()[1:]]
    assert [(int(r[0]), int(r[1])) for r in rows if r[3]][-4:] == [(6, 0), (7, 0), (8, 0), (9, 1)]


def test_train_with_pretrained_minilm_text_encoder(phantom, tmp_path):
    from elvis_core.model import minilm_path
    from elvis_core.model.checkpoint import load_checkpoint
    from elvis_core.training.trainer import train

    over = f"{{text = {{source = 'pretrained', path = {minilm_path()!r}, max_length = 32}}}}"
    cfg = _tiny_cfg(phantom, tmp_path / "minilm", **{"model.overrides": over, "train.max_steps": 2,
                                                     "train.batch_size": 4, "train.text_lr": 1e-5})
    res = train(cfg)
    assert res.steps == 2
    m = load_checkpoint(res.model_dir)
    assert m.text_hidden == 384 and m.tokenizer.cls_token_id == 101


def test_lr_schedule_warmup_then_cosine():
    from elvis_core.training.trainer import lr_lambda

    assert [lr_lambda(s, 4, 20, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_lambda(4, 4, 20, 0.1) == pytest.approx(1.0)
    assert lr_lambda(12, 4, 20, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert lr_lambda(20, 4, 20, 0.1) == pytest.approx(0.1)
    assert lr_lambda(50, 4, 20, 0.1) == pytest.approx(0.1)


def test_gradient_accumulation_counts_optimizer_steps(phantom, tmp_path):
    from elvis_core.training.trainer import train

    # 24 pairs, batch 4 -> 6 micro-batches per epoch; accumulating 2 -> 3 optimizer steps per epoch
    res = train(_tiny_cfg(phantom, tmp_path / "acc", **{"train.batch_size": 4, "train.grad_accum": 2,
                                                        "train.max_steps": 4}))
    assert res.steps == 4
    rows = [r.split(",") for r in (tmp_path / "acc" / "log.csv").read_text().strip().splitlines()[1:]]
    assert [(int(r[0]), int(r[1])) for r in rows if r[3]] == [(1, 0), (2, 0), (3, 0), (4, 1)]


def test_mimic_jpg_views_from_metadata(tmp_path):
    """MIMIC-CXR-JPG: JPGs have no view tag; the metadata CSV decides (lateral dropped)."""
    import cv2
    import numpy as np

    from elvis_core.training.data import find_pairs, read_mimic_views

    study = tmp_path / "files" / "p10" / "p10000001" / "s50000001"
    study.mkdir(parents=True)
    img = (np.random.default_rng(0).random((64, 60)) * 255).astype(np.uint8)
    for stem in ("aaa", "bbb"):
        cv2.imwrite(str(study / f"{stem}.jpg"), img)
    (study.parent / "s50000001.txt").write_text("FINDINGS: Small left effusion.\n\nIMPRESSION: Effusion.\n")
    meta = tmp_path / "meta.csv"
    meta.write_text("dicom_id,subject_id,study_id,ViewPosition\naaa,1,1,PA\nbbb,1,1,LATERAL\n")
    pairs, stats = find_pairs(str(tmp_path), view_of=read_mimic_views(str(meta)))
    assert [os.path.basename(p.image_path) for p in pairs] == ["aaa.jpg"] and stats.wrong_view == 1
    assert pairs[0].text == "Small left effusion. Effusion." and pairs[0].patient == "p10000001"
    pairs, stats = find_pairs(str(tmp_path))  # without metadata both are kept, and counted as view unknown
    assert len(pairs) == 2 and stats.unknown_view_kept == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="needs columns dicom_id and ViewPosition"):
        read_mimic_views(str(bad))


def test_sentence_level_objectives_train_with_separately_encoded_sentences(phantom, tmp_path):
    """elvis + region_sentence + local over sentences encoded alone: losses finite, every term logged, the sentence
    batch reaches the objectives (loss differs from the span-based one)."""
    from elvis_core.training.trainer import train

    sets = {"objectives.weights.global": 1.0, "objectives.weights.local": 0.5, "objectives.weights.intra": 0.0,
            "objectives.weights.elvis": 0.5, "objectives.weights.region_sentence": 0.25,
            "objectives.weights.negation": 0.5,
            "objectives.sentences": "'separate'", "objectives.local.units": "'sentences'", "train.max_steps": 2}
    res = train(_tiny_cfg(phantom, tmp_path / "sep", **sets))
    assert res.steps == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    header = (tmp_path / "sep" / "log.csv").read_text().splitlines()[0].split(",")
    rows = [dict(zip(header, r.split(","))) for r in (tmp_path / "sep" / "log.csv").read_text().splitlines()[1:]]
    assert rows and all(r["elvis"] and r["region_sentence"] and r["local"] and r["negation"] for r in rows
                        if r["loss"])
    spans = dict(sets, **{"objectives.sentences": "'spans'", "objectives.local.units": "'tokens'",
                          "objectives.weights.negation": 0.0})
    res2 = train(_tiny_cfg(phantom, tmp_path / "spans", **spans))
    assert res2.first_loss != pytest.approx(res.first_loss, rel=1e-4)


def test_anatomy_objective_trains_from_the_phantom_anatomy_csv(phantom, tmp_path):
    from elvis_core.training.trainer import train

    sets = {"objectives.weights.anatomy": 0.5, "objectives.weights.intra": 0.0, "objectives.sentences": "'separate'",
            "data.anatomy": repr(str(phantom / "anatomy.csv")), "augment.enabled": "true", "train.max_steps": 2}
    res = train(_tiny_cfg(phantom, tmp_path / "an", **sets))
    header = (tmp_path / "an" / "log.csv").read_text().splitlines()[0].split(",")
    rows = [dict(zip(header, r.split(","))) for r in (tmp_path / "an" / "log.csv").read_text().splitlines()[1:]]
    assert res.steps == 2 and all(float(r["anatomy"]) > 0 for r in rows if r["loss"])
    with pytest.raises(ConfigError, match="data.anatomy"):
        train(_tiny_cfg(phantom, tmp_path / "an2", **{"objectives.weights.anatomy": 0.5,
                                                      "objectives.sentences": "'separate'"}))


def test_mirror_objective_trains_with_negations_and_logs_its_term(phantom, tmp_path):
    """The mirror-consistency term with the negation term in one batch: the collate adds swapped copies after the
    negated ones, both reach their objectives, every term is logged and finite."""
    from elvis_core.training.trainer import train

    sets = {"objectives.weights.mirror": 1.0, "objectives.weights.negation": 0.5, "objectives.weights.intra": 0.0,
            "objectives.sentences": "'separate'", "augment.enabled": "true", "train.max_steps": 2}
    res = train(_tiny_cfg(phantom, tmp_path / "mir", **sets))
    header = (tmp_path / "mir" / "log.csv").read_text().splitlines()[0].split(",")
    rows = [dict(zip(header, r.split(","))) for r in (tmp_path / "mir" / "log.csv").read_text().splitlines()[1:]]
    assert res.steps == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    assert all(0.0 < float(r["mirror"]) <= 2.0 and r["negation"] for r in rows if r["loss"])


def test_init_from_with_weight_preserving_overrides(phantom, tmp_path):
    """model.init_from + model.overrides.image.dilate_stages: the same weights on a 2x finer grid (how the demo
    model's second stage was trained); an override that would change a weight's shape is refused by name."""
    from elvis_core.model.checkpoint import load_checkpoint
    from elvis_core.training.trainer import train

    base = train(_tiny_cfg(phantom, tmp_path / "base", **{"train.max_steps": 1}))
    coarse = load_checkpoint(base.model_dir)
    sets = {"model.init_from": repr(str(base.model_dir)), "train.max_steps": 1,
            "model.overrides": "{image = {dilate_stages = 1, mirror_average = true}}"}
    res = train(_tiny_cfg(phantom, tmp_path / "fine", **sets))
    fine = load_checkpoint(res.model_dir)
    assert fine.config["image"]["dilate_stages"] == 1 and fine.config["image"]["mirror_average"] is True
    assert fine.grid_shape()[0] == 2 * coarse.grid_shape()[0]
    assert set(coarse.known_words["words"]) <= set(fine.known_words["words"])  # trained further: keeps its words
    assert fine.known_words["source"].endswith("+ " + coarse.known_words["source"])
    with pytest.raises(ConfigError, match="projection"):
        train(_tiny_cfg(phantom, tmp_path / "bad", **{"model.init_from": repr(str(base.model_dir)),
                                                       "model.overrides": "{projection = {dim = 64}}"}))
