"""Each recipe option does exactly what its name says; the defaults are the authors' release.

Release = the TensorFlow code of YingZhangDUT/Cross-Modal-Projection-Learning (docs/fidelity.md);
the non-default values are deviations of public ports, kept so their effect can be measured.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cmp_utils import data, models, training
from cmp_utils.evaluation import evaluate
from cmp_utils.data.text import TOKENISATION, Vocabulary

from data_fixtures import write_all


def _padded(sentences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in sentences])
    token_ids = torch.zeros(len(sentences), int(lengths.max()), dtype=torch.long)
    for row, sentence in enumerate(sentences):
        token_ids[row, : len(sentence)] = torch.tensor(sentence)
    return token_ids, lengths


def _glorot_bound(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


# ---------------------------------------------------------------------- release defaults everywhere
def test_defaults_are_the_release_and_paper_profile_is_fp32():
    cfg = training.make_config("paper", "cuhk_pedes")
    assert (
        cfg.word_embedding_init,
        cfg.lstm_init,
        cfg.lstm_backward,
        cfg.bn_style,
        cfg.joint_embedding,
        cfg.ema_scope,
        cfg.num_classes_from,
    ) == ("xavier", "tf", "time", "tf", "linear_bn", "release", "all_splits")
    assert cfg.vocab_case_sensitive is False and cfg.pad_shares_most_frequent is False
    assert cfg.amp == "off" and cfg.ema_decay == 0.9999 and cfg.padded_steps == "zeros"  # as the release trains
    # the fast profiles' few hundred steps need PyTorch's BN momentum (docs/fidelity.md)
    assert training.make_config("quick", "cuhk_pedes").bn_style == "pytorch"
    assert all(training.make_config("paper", name).amp == "off" for name in ("flickr30k", "mscoco", "cub", "flowers"))
    # every option is a settings field, so --set reaches it
    assert training.make_config("smoke", "cuhk_pedes", lstm_backward="batch_reversed").lstm_backward == "batch_reversed"


# ---------------------------------------------------------------------- word embedding
def test_word_embedding_init_xavier_is_glorot_uniform_and_normal_is_unit_gaussian():
    torch.manual_seed(0)
    vocab_size, word_dim = 12000, 512  # the paper's table
    xavier = models.TextEncoder(vocab_size, word_dim, 8).word_embedding.weight.detach()
    bound = _glorot_bound(vocab_size, word_dim)
    assert float(xavier[1:].abs().max()) <= bound
    assert float(xavier[1:].std()) == pytest.approx(bound / math.sqrt(3.0), rel=0.01)  # uniform(-b, b): std b/sqrt 3
    assert torch.all(xavier[0] == 0)  # padding row
    normal = models.TextEncoder(vocab_size, word_dim, 8, word_embedding_init="normal").word_embedding.weight.detach()
    assert float(normal[1:].std()) == pytest.approx(1.0, rel=0.01)
    assert 75 < float(normal[1:].std() / xavier[1:].std()) < 85  # "about 80x larger" at 12000 x 512
    with pytest.raises(ValueError, match="word_embedding_init"):
        models.TextEncoder(30, word_embedding_init="glove")


# ---------------------------------------------------------------------- LSTM init
def _tf_basic_lstm_step(inputs, hidden, cell, kernel, bias, forget_bias=1.0):
    """One step of TF's BasicLSTMCell: gates = [x, h] @ kernel + bias split as (i, j, f, o)."""
    gates = torch.cat([inputs, hidden], dim=1) @ kernel + bias
    gate_i, gate_j, gate_f, gate_o = gates.chunk(4, dim=1)
    new_cell = cell * torch.sigmoid(gate_f + forget_bias) + torch.sigmoid(gate_i) * torch.tanh(gate_j)
    return torch.tanh(new_cell) * torch.sigmoid(gate_o), new_cell


def test_tf_kernel_mapping_reproduces_a_tf_basic_lstm_cell_step():
    torch.manual_seed(1)
    input_size, units = 5, 3
    kernel, bias = torch.randn(input_size + units, 4 * units), torch.randn(4 * units)
    lstm = nn.LSTM(input_size, units, batch_first=True)
    with torch.no_grad():
        for name, value in models.tf_lstm_kernel_to_torch(kernel, bias, input_size).items():
            getattr(lstm, f"{name}_l0").copy_(value)
    inputs, hidden, cell = torch.randn(4, input_size), torch.randn(4, units), torch.randn(4, units)
    expected_hidden, expected_cell = _tf_basic_lstm_step(inputs, hidden, cell, kernel, bias)
    with torch.no_grad():
        _, (torch_hidden, torch_cell) = lstm(inputs[:, None], (hidden[None], cell[None]))
    torch.testing.assert_close(torch_hidden[0], expected_hidden)
    torch.testing.assert_close(torch_cell[0], expected_cell)
    with pytest.raises(ValueError, match="input_size"):
        models.tf_lstm_kernel_to_torch(kernel, bias, input_size + 1)


def test_lstm_init_tf_has_glorot_kernels_and_forget_bias_one():
    torch.manual_seed(0)
    word_dim, units = 256, 128
    lstm = models.TextEncoder(50, word_dim, units).lstm
    bound = _glorot_bound(word_dim + units, 4 * units)  # TF's fused kernel (input + units, 4 units)
    for suffix in ("", "_reverse"):
        weight_ih, weight_hh = getattr(lstm, f"weight_ih_l0{suffix}"), getattr(lstm, f"weight_hh_l0{suffix}")
        kernel = torch.cat([weight_ih, weight_hh], dim=1).detach()
        assert float(kernel.abs().max()) <= bound
        assert float(kernel.std()) == pytest.approx(bound / math.sqrt(3.0), rel=0.02)
        bias_ih, bias_hh = getattr(lstm, f"bias_ih_l0{suffix}").detach(), getattr(lstm, f"bias_hh_l0{suffix}").detach()
        # PyTorch gate order (i, f, g, o): the forget slice is [units, 2 units)
        assert torch.all(bias_ih[units : 2 * units] == 1.0)
        assert torch.all(bias_ih[:units] == 0) and torch.all(bias_ih[2 * units :] == 0) and torch.all(bias_hh == 0)
    pytorch = models.TextEncoder(50, word_dim, units, lstm_init="pytorch").lstm.requires_grad_(False)
    assert float(pytorch.weight_ih_l0.abs().max()) <= 1 / math.sqrt(units)
    assert float(pytorch.bias_ih_l0[units : 2 * units].abs().max()) <= 1 / math.sqrt(units)  # no forget bias


# ---------------------------------------------------------------------- backward direction
def test_lstm_backward_batch_reversed_is_the_reverse_weights_read_forwards_on_the_flipped_batch():
    torch.manual_seed(0)
    encoder = models.TextEncoder(30, 8, 4, dropout=0.0, lstm_backward="batch_reversed").eval()
    token_ids, lengths = _padded([[1, 5, 6, 7, 8], [1, 9, 4], [1, 2, 3, 4], [1, 20]])
    with torch.no_grad():
        outputs = encoder.step_outputs(token_ids, lengths)  # (4, 5, 8)
        # the port: reverse the batch, run the "backward" cell forwards in time, reverse the batch back
        cell = nn.LSTM(8, 4, batch_first=True)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, f"{name}_l0").copy_(getattr(encoder.lstm, f"{name}_l0_reverse"))
        words = encoder.word_embedding(token_ids).flip(0)
        packed = pack_padded_sequence(words, lengths.flip(0), batch_first=True, enforce_sorted=False)
        initial = (
            encoder.initial_hidden[1:].expand(-1, 4, -1).contiguous(),
            encoder.initial_cell[1:].expand(-1, 4, -1).contiguous(),
        )
        expected, _ = pad_packed_sequence(cell(packed, initial)[0], batch_first=True, total_length=5)
        torch.testing.assert_close(outputs[..., 4:], expected.flip(0))
        # so it reads forwards in time: its step 0 ignores a changed last token, unlike a true backward LSTM
        changed = token_ids.clone()
        changed[0, 4] = 21
        assert torch.equal(encoder.step_outputs(changed, lengths)[0, 0, 4:], outputs[0, 0, 4:])
        encoder.lstm_backward = "time"
        assert not torch.equal(
            encoder.step_outputs(changed, lengths)[0, 0, 4:], encoder.step_outputs(token_ids, lengths)[0, 0, 4:]
        )
        # the forward direction is the same under both settings
        torch.testing.assert_close(encoder.step_outputs(token_ids, lengths)[..., :4], outputs[..., :4])


# ---------------------------------------------------------------------- padded steps at test time
def test_test_time_text_features_do_not_depend_on_batch_padding():
    torch.manual_seed(0)
    model = models.build_model(
        vocab_size=40, embedding_dim=6, word_dim=8, hidden_size=4, cached_feature_dim=10, padded_steps="zeros"
    )  # trained the release's way
    model.eval()
    captions = {
        "token_ids": _padded([[1, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 7]])[0],
        "lengths": torch.tensor([3, 9, 2]),
    }
    together = evaluate.encode_texts(model, captions, "cpu", batch_size=3)  # one padded batch
    for row in range(3):
        alone = {key: value[row : row + 1, ...] for key, value in captions.items()}
        alone["token_ids"] = alone["token_ids"][:, : int(alone["lengths"][0])]  # batch of one, no padding
        torch.testing.assert_close(evaluate.encode_texts(model, alone, "cpu", batch_size=1)[0], together[row])


# ---------------------------------------------------------------------- joint embedding
def test_bn_style_tf_follows_the_backbone_and_pytorch_is_torch_default():
    def batch_norm(backbone, style):
        model = models.build_model(
            40, backbone, embedding_dim=6, word_dim=8, hidden_size=4, cached_feature_dim=10, bn_style=style
        )
        norms = [model.image_embedding.batch_norm, model.text_embedding.batch_norm]
        assert {(n.eps, n.momentum) for n in norms} == {(norms[0].eps, norms[0].momentum)}
        return norms[0].eps, norms[0].momentum

    assert batch_norm("mobilenet_v1", "tf") == (1e-3, pytest.approx(0.0003))  # decay 0.9997
    assert batch_norm("resnet152", "tf") == (1e-5, pytest.approx(0.003))  # decay 0.997
    assert batch_norm("mobilenet_v1", "pytorch") == (1e-5, 0.1)
    # momentum m means running = (1 - m) running + m batch: TF's moving = decay moving + (1 - decay) batch
    norm = nn.BatchNorm1d(3, eps=1e-3, momentum=models.joint_batch_norm_settings("mobilenet_v1")[1])
    values = torch.randn(8, 3)
    norm(values)
    torch.testing.assert_close(norm.running_mean, (1 - 0.9997) * values.mean(0))


def test_joint_embedding_linear_bias_has_a_bias_and_no_batch_norm():
    torch.manual_seed(0)
    model = models.build_model(
        40, embedding_dim=6, word_dim=8, hidden_size=4, cached_feature_dim=10, joint_embedding="linear_bias"
    )
    for layer in (model.image_embedding, model.text_embedding):
        assert layer.projection.bias is not None and isinstance(layer.batch_norm, nn.Identity)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    features = torch.randn(5, 10)
    torch.testing.assert_close(
        model.image_embedding(features),
        features @ model.image_embedding.projection.weight.T + model.image_embedding.projection.bias,
    )
    release = models.build_model(40, embedding_dim=6, word_dim=8, hidden_size=4, cached_feature_dim=10)
    assert release.image_embedding.projection.bias is None and isinstance(
        release.image_embedding.batch_norm, nn.BatchNorm1d
    )


# ---------------------------------------------------------------------- EMA scope
def _model_for_ema(scope: str) -> models.CrossModalModel:
    torch.manual_seed(0)
    return models.build_model(
        40, embedding_dim=6, word_dim=8, hidden_size=4, cached_feature_dim=10, ema_scope=scope, bn_style="pytorch"
    )


def _train_steps(model: models.CrossModalModel, ema: training.WeightAverage, steps: int = 3) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    token_ids, lengths = _padded([[1, 5, 6], [1, 7], [1, 8, 9, 10], [1, 3]])
    model.train()
    for step in range(steps):
        torch.manual_seed(step)
        x, z = model(torch.randn(4, 10) + step, token_ids, lengths)
        optimizer.zero_grad()
        (x.pow(3).sum() + z.pow(3).sum()).backward()
        optimizer.step()
        ema.update(model)


def test_ema_release_scope_averages_cnn_embeddings_and_bn_statistics_but_not_the_text_branch():
    model = _model_for_ema("release")
    ema = training.WeightAverage(model, decay=0.5, warmup=False)
    assert ema.scope == "release"
    assert (
        "image_embedding.batch_norm.running_mean" in ema.names and "text_embedding.batch_norm.running_var" in ema.names
    )
    assert "image_embedding.projection.weight" in ema.names
    assert not any(name.startswith("text_encoder.") for name in ema.names)
    assert "image_embedding.batch_norm.num_batches_tracked" not in ema.names
    initial = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    _train_steps(model, ema, steps=1)
    live = model.state_dict()
    evaluation = ema.copy_to(
        models.build_model(40, embedding_dim=6, word_dim=8, hidden_size=4, cached_feature_dim=10), model
    )
    copied = evaluation.state_dict()
    for name in ("text_encoder.lstm.weight_ih_l0", "text_encoder.word_embedding.weight", "text_encoder.initial_hidden"):
        torch.testing.assert_close(copied[name], live[name])  # live, as the release evaluates them
    for name in (
        "image_embedding.projection.weight",
        "text_embedding.batch_norm.running_mean",
        "image_embedding.batch_norm.running_var",
    ):
        assert not torch.equal(live[name], initial[name])
        torch.testing.assert_close(copied[name], 0.5 * initial[name] + 0.5 * live[name])  # one update at decay 0.5


def test_ema_all_scope_averages_every_parameter_and_keeps_buffers_live():
    model = _model_for_ema("all")
    ema = training.WeightAverage(model, decay=0.5, warmup=False)
    assert ema.names == [name for name, _ in model.named_parameters()]
    initial = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    _train_steps(model, ema, steps=1)
    copied = ema.copy_to(_model_for_ema("all"), model).state_dict()
    live = model.state_dict()
    torch.testing.assert_close(
        copied["text_encoder.lstm.weight_ih_l0"],
        0.5 * initial["text_encoder.lstm.weight_ih_l0"] + 0.5 * live["text_encoder.lstm.weight_ih_l0"],
    )
    torch.testing.assert_close(
        copied["image_embedding.batch_norm.running_mean"], live["image_embedding.batch_norm.running_mean"]
    )
    # an explicit scope wins over the model's own
    assert training.WeightAverage(model, 0.5, scope="release").names == model.averaged_tensor_names("release")


def test_ema_decay_zero_means_no_averaging_and_state_round_trips():
    model = _model_for_ema("release")
    ema = training.WeightAverage(model, decay=0.0)
    _train_steps(model, ema, steps=2)
    live = model.state_dict()
    for name, shadow in zip(ema.names, ema.shadow):
        torch.testing.assert_close(shadow, live[name])
    restored = training.WeightAverage(_model_for_ema("release"), decay=0.0)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 2 and all(torch.equal(a, b) for a, b in zip(restored.shadow, ema.shadow))
    with pytest.raises(ValueError, match="ema_scope"):
        training.WeightAverage(_model_for_ema("all"), 0.5).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="ema_scope"):
        training.WeightAverage(nn.Linear(2, 2), 0.5, scope="release")


# ---------------------------------------------------------------------- weight decay
def test_no_weight_decay_on_depthwise_kernels():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = models.build_model(40, "mobilenet_v1", embedding_dim=6, word_dim=8, hidden_size=4)
    cfg = training.make_config("smoke", "cuhk_pedes")
    groups = {group["name"]: group for group in training.param_groups(model, nn.Linear(2, 2), cfg)}
    decayed = {id(p) for p in groups["decayed"]["params"]}
    convolutions = [m for m in model.image_encoder.backbone.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convolutions if m.groups > 1]
    assert len(depthwise) == 13
    assert not any(id(m.weight) in decayed for m in depthwise)
    assert all(id(m.weight) in decayed for m in convolutions if m.groups == 1)
    assert groups["decayed"]["weight_decay"] == cfg.weight_decay and groups["others"]["weight_decay"] == 0.0


# ---------------------------------------------------------------------- data side
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("fidelity_datasets"))


def test_num_classes_from_all_splits_is_the_id_range_and_train_counts_train_ids(data_root, tmp_path):
    cache = tmp_path / "cache"
    release = data.prepare_dataset("cuhk_pedes", "paper", data_dir=data_root, cache_dir=cache, image_size=(8, 4))
    assert release.frames["train"]["label"].max() == 3 and release.frames["train"]["label"].nunique() == 3
    assert release.num_classes == 4  # train ids 1..3 used as class indices: 1 + 3 columns, as 11004 for ids 1..11003
    only_train = data.prepare_dataset(
        "cuhk_pedes", "paper", data_dir=data_root, cache_dir=cache, image_size=(8, 4), num_classes_from="train"
    )
    assert only_train.num_classes == 3
    cfg = training.make_config("smoke", "cuhk_pedes", num_classes_from="train", pretrained=False)
    with pytest.raises(ValueError, match="num_classes_from: prepared 'all_splits', settings 'train'"):
        training.build_run_model(cfg, release, feature_dim=8)
    assert training.build_run_model(cfg, only_train, feature_dim=8).takes_features
    with pytest.raises(ValueError, match="num_classes_from"):
        data.prepare_dataset("cuhk_pedes", "paper", data_dir=data_root, cache_dir=cache, num_classes_from="test")


def test_vocabulary_options_have_their_own_saved_file_and_rule_changes_rebuild(data_root, tmp_path):
    cache = tmp_path / "cache"
    kwargs = dict(data_dir=data_root, cache_dir=cache, image_size=(8, 4))
    release = data.prepare_dataset("cuhk_pedes", "paper", **kwargs)
    cased = data.prepare_dataset("cuhk_pedes", "paper", vocab_case_sensitive=True, **kwargs)
    shared = data.prepare_dataset("cuhk_pedes", "paper", pad_shares_most_frequent=True, **kwargs)
    assert release.vocabulary.options == {"case_sensitive": False, "pad_shares_most_frequent": False}
    assert cased.vocabulary.case_sensitive and "A" in cased.vocabulary.words and "a" in cased.vocabulary.words
    assert "A" in cased.frames["train"]["tokens"].iloc[0]  # tokens keep case for a case-sensitive vocabulary
    assert shared.vocabulary.id_of(shared.vocabulary.words[0]) == 0
    files = sorted(path.name for path in release.prepared_dir.glob("vocabulary*.json"))
    assert files == ["vocabulary.json", "vocabulary_cased.json", "vocabulary_padshared.json"]
    # reloading with the release options gives the release vocabulary back, not a stale other one
    assert data.prepare_dataset("cuhk_pedes", "paper", **kwargs).vocabulary == release.vocabulary
    # a vocabulary saved under another tokenisation rule is rebuilt
    path = release.prepared_dir / "vocabulary.json"
    payload = json.loads(path.read_text())
    payload["meta"]["tokenisation"] = "an older rule"
    payload["words"] = ["stale"]
    payload["counts"] = [99]
    path.write_text(json.dumps(payload))
    rebuilt = data.prepare_dataset("cuhk_pedes", "paper", **kwargs).vocabulary
    assert rebuilt == release.vocabulary and rebuilt.meta["tokenisation"] == TOKENISATION


def test_tokens_cuhk_punctuation_deleted_and_karpathy_tokens_as_given(data_root):
    cuhk = data.read_dataset("cuhk_pedes", data_root / "cuhk_pedes", "train")
    carrying = cuhk.loc[cuhk["caption"] == "A man wearing a red shirt, carrying a bag."].iloc[0]
    assert carrying["tokens"] == ["a", "man", "wearing", "a", "red", "shirt", "carrying", "a", "bag"]
    flickr_root = data_root / "flickr30k"
    payload = json.loads((flickr_root / "dataset_flickr30k.json").read_text())
    sentence = payload["images"][0]["sentences"][0]
    sentence["tokens"] = ["a", "dog", "t-shirt"]  # the file's own tokens, not what tokenize would make of raw
    (flickr_root / "dataset_flickr30k.json").write_text(json.dumps(payload))
    flickr = data.read_dataset("flickr30k", flickr_root, "train")
    assert flickr.loc[flickr["caption"] == sentence["raw"], "tokens"].iloc[0] == ["a", "dog", "t-shirt"]


def test_class_level_paper_profile_trains_on_all_trainval_classes(data_root, tmp_path):
    kwargs = dict(data_dir=data_root, cache_dir=tmp_path / "cache", image_size=(8, 8))
    paper = data.prepare_dataset("flowers", "paper", **kwargs)
    assert paper.validation_split is None and paper.splits == ("train", "test")
    assert paper.frames["train"]["label"].nunique() == 3  # every trainval class
    held_out = data.prepare_dataset("flowers", "paper", val_class_fraction=0.5, **kwargs)
    assert held_out.validation_split == "val" and held_out.frames["train"]["label"].nunique() < 3
    assert Vocabulary.build([["x"]] * 3).case_sensitive is False


def test_a_run_with_the_port_options_reaches_data_model_and_average(isolated_dirs, tmp_path):
    settings = dict(
        profile="smoke",
        dataset="cuhk_pedes",
        progress=False,
        epochs=1,
        max_steps_per_epoch=2,
        evaluate_test=False,
        output_dir=str(tmp_path / "run"),
        vocab_case_sensitive=True,
        pad_shares_most_frequent=True,
        num_classes_from="train",
        lstm_backward="batch_reversed",
        joint_embedding="linear_bias",
        ema_scope="all",
    )
    result = training.fit(settings)
    params = result.settings
    assert params["vocab_case_sensitive"] and params["pad_shares_most_frequent"] and params["ema_scope"] == "all"
    state = torch.load(result.output_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["ema"]["scope"] == "all" and any(name.startswith("text_encoder.") for name in state["ema"]["names"])
    assert "image_embedding.projection.bias" in state["model"]  # linear_bias reached the model
    cfg = training.make_config(
        **{k: v for k, v in settings.items() if k not in ("profile", "dataset")}, profile="smoke", dataset="cuhk_pedes"
    )
    prepared = data.prepare_dataset("cuhk_pedes", "smoke", **data.recipe_options(cfg))
    assert prepared.vocabulary.case_sensitive and prepared.vocabulary.pad_shares_most_frequent
    assert state["model"]["text_encoder.word_embedding.weight"].shape[0] == len(prepared.vocabulary)
