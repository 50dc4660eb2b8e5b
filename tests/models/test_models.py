"""Encoders of cmp_utils.models: shapes, offline weights, the Bi-LSTM's reading order, padding."""

from __future__ import annotations

import warnings

import pytest
import torch

from cmp_utils import models

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _padded(sentences: list[list[int]], total_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in sentences])
    width = total_length or int(lengths.max())
    token_ids = torch.zeros(len(sentences), width, dtype=torch.long)
    for row, sentence in enumerate(sentences):
        token_ids[row, : len(sentence)] = torch.tensor(sentence)
    return token_ids, lengths


def test_mobilenet_v1_shapes_and_width():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random init"):
        backbone = models.build_backbone("mobilenet_v1")
    assert backbone.out_channels == 1024 and backbone.normalisation == "mobilenet"
    depthwise = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13  # 13 depthwise-separable blocks
    encoder = models.ImageEncoder(backbone).eval()
    features = encoder(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, 1024) and features.dtype == torch.float32
    assert backbone(torch.randn(1, 3, 224, 224)).shape == (1, 1024, 7, 7)  # 224 input -> 7x7x1024
    parameters = sum(p.numel() for p in backbone.parameters())
    assert 3.1e6 < parameters < 3.3e6  # MobileNet v1 1.0 without classifier: about 3.2M


def test_mobilenet_v2_loads_offline_imagenet_weights():
    path = models.mobilenet_v2_weights_path()
    assert path.name == "mobilenet_v2-b0353104.pth" and path.is_file()
    reference = torch.load(path, map_location="cpu", weights_only=True)
    backbone = models.build_backbone("mobilenet_v2")
    loaded = backbone.trunk[0][0].weight  # first conv
    torch.testing.assert_close(loaded, reference["features.0.0.weight"])
    torch.manual_seed(0)
    random_init = models.build_backbone("mobilenet_v2", pretrained=False).trunk[0][0].weight
    assert not torch.allclose(loaded, random_init)
    assert backbone.normalisation == "unit"
    assert backbone.eval()(torch.rand(2, 3, 64, 32)).shape == (2, 1280, 2, 1)


def test_mobilenet_v2_cut_after_a_stage_is_the_same_network_up_to_there():
    """backbone_blocks=11 keeps the ImageNet weights of the first 11 stages and returns their 64-channel
    stride-16 map: the same numbers as running the whole trunk's first 11 stages."""
    whole = models.build_backbone("mobilenet_v2").eval()
    cut = models.build_backbone("mobilenet_v2", blocks=11).eval()
    assert cut.out_channels == 64 and len(cut.trunk) == 11
    images = torch.rand(2, 3, 128, 64)
    with torch.no_grad():
        expected = whole.trunk[:11]((images - whole.mean) / whole.std)
        torch.testing.assert_close(cut(images), expected)
    assert expected.shape == (2, 64, 8, 4)
    encoder = models.ImageEncoder(cut, (8, 4))
    assert encoder.output_dim == 64 * 8 * 4
    with pytest.raises(ValueError, match="backbone_blocks=11 is supported for backbone 'mobilenet_v2' only"):
        models.build_backbone("small_cnn", pretrained=False, blocks=11)
    with pytest.raises(ValueError, match="backbone_blocks=40: mobilenet_v2 has 19 stages"):
        models.build_backbone("mobilenet_v2", blocks=40)


def test_backbone_blocks_setting_is_checked_and_set_for_quick_person_data():
    from cmp_utils import training

    with pytest.raises(ValueError, match="backbone_blocks=11 needs backbone='mobilenet_v2'"):
        training.make_config("quick", "cuhk_pedes", backbone="small_cnn")
    cfg = training.make_config("quick", "cuhk_pedes")
    assert (cfg.backbone, cfg.backbone_blocks, cfg.pool_grid) == ("mobilenet_v2", 11, (8, 4))
    assert training.make_config("quick", "flickr30k").backbone_blocks is None


def test_weights_path_round_trip_and_errors(tmp_path):
    torch.manual_seed(1)
    small = models.build_backbone("small_cnn", pretrained=False)
    path = tmp_path / "small.pt"
    torch.save(small.state_dict(), path)
    again = models.build_backbone("small_cnn", weights_path=path)
    for a, b in zip(small.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(FileNotFoundError, match="weights_path"):
        models.build_backbone("resnet152", weights_path=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="lacks"):
        models.build_backbone("mobilenet_v1", weights_path=path)  # a small_cnn state dict
    with pytest.raises(ValueError, match="backbone"):
        models.build_backbone("vgg16")


def test_resnet152_trunk_shape():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = models.build_backbone("resnet152")
    assert backbone.out_channels == 2048
    with torch.no_grad():
        assert backbone.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 2048, 1, 1)


def test_grid_pooling_keeps_rows_apart():
    feature_map = torch.arange(12.0).view(1, 1, 6, 2)  # one channel, 6 rows x 2 cols
    pooled = models.grid_average_pool(feature_map, (3, 1))
    torch.testing.assert_close(pooled, torch.tensor([[1.5, 5.5, 9.5]]))
    encoder = models.ImageEncoder(models.build_backbone("small_cnn", pretrained=False), (3, 1))
    assert encoder.output_dim == 256 * 3
    assert encoder(torch.rand(2, 3, 64, 32)).shape == (2, 768)


def test_text_encoder_shapes_and_dtype():
    encoder = models.TextEncoder(vocab_size=30, word_dim=16, hidden_size=8).eval()
    token_ids, lengths = _padded([[1, 5, 6, 7], [1, 9]])
    features = encoder(token_ids, lengths)
    assert features.shape == (2, 16) and features.dtype == torch.float32
    with pytest.raises(ValueError, match="padded_steps"):
        models.TextEncoder(30, padded_steps="ignore")


def test_both_lstm_directions_read_in_time_order():
    torch.manual_seed(0)
    encoder = models.TextEncoder(vocab_size=30, word_dim=8, hidden_size=4, dropout=0.0).eval()
    base = [1, 5, 6, 7, 8]
    changed_last = [1, 5, 6, 7, 20]
    token_ids, lengths = _padded([base, changed_last, [1, 5, 6]], total_length=7)
    with torch.no_grad():
        outputs = encoder.step_outputs(token_ids, lengths)  # (3, 7, 8): forward half, backward half
    forward, backward = outputs[..., :4], outputs[..., 4:]
    # forward direction at step t sees tokens <= t: changing the last token leaves steps 0..3 alone
    torch.testing.assert_close(forward[0, :4], forward[1, :4])
    assert not torch.allclose(forward[0, 4], forward[1, 4])
    # backward direction starts at the sentence's own last token: its step-0 output depends on it
    assert not torch.allclose(backward[0, 0], backward[1, 0])
    # and it starts at the real end, not at padding: a 3-token sentence equals it run alone
    alone_ids, alone_lengths = _padded([[1, 5, 6]])
    with torch.no_grad():
        alone = encoder.step_outputs(alone_ids, alone_lengths)
    torch.testing.assert_close(outputs[2, :3], alone[0])
    assert torch.all(outputs[2, 3:] == 0)  # padded steps output zeros


def test_padding_does_not_change_a_sentence_feature_and_zeros_option():
    torch.manual_seed(0)
    encoder = models.TextEncoder(vocab_size=30, word_dim=8, hidden_size=4, dropout=0.0)
    short = [1, 5, 6]
    alone_ids, alone_lengths = _padded([short])
    batch_ids, batch_lengths = _padded([short, [1, 2, 3, 4, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        alone = encoder(alone_ids, alone_lengths)[0]
        torch.testing.assert_close(encoder(batch_ids, batch_lengths)[0], alone)
        encoder.padded_steps = "zeros"  # the release in training: padded zeros take part in the max
        in_batch = encoder(batch_ids, batch_lengths)[0]
        torch.testing.assert_close(in_batch, alone.clamp(min=0))
        assert bool((alone < 0).any())  # so the clamp above really changed something
        # evaluation never lets padding in (the release encodes test captions one at a time)
        encoder.eval()
        torch.testing.assert_close(encoder(batch_ids, batch_lengths)[0], alone)


def test_learned_initial_states_are_used():
    encoder = models.TextEncoder(vocab_size=30, word_dim=8, hidden_size=4, dropout=0.0).eval()
    token_ids, lengths = _padded([[1, 5, 6]])
    with torch.no_grad():
        before = encoder(token_ids, lengths)
        encoder.initial_hidden.fill_(0.5)
        after = encoder(token_ids, lengths)
    assert not torch.allclose(before, after)
    loss = encoder.train()(token_ids, lengths).sum()
    loss.backward()
    assert encoder.initial_hidden.grad is not None and encoder.initial_cell.grad is not None


def test_cross_modal_model_and_joint_embedding():
    torch.manual_seed(0)
    model = models.build_model(
        vocab_size=40, backbone="small_cnn", embedding_dim=32, word_dim=16, hidden_size=8, pretrained=False
    )
    assert model.image_embedding.projection.bias is None
    assert isinstance(model.image_embedding.batch_norm, torch.nn.BatchNorm1d)
    token_ids, lengths = _padded([[1, 5, 6], [1, 7], [1, 8, 9, 10]])
    image_embeddings, text_embeddings = model(torch.rand(3, 3, 32, 16), token_ids, lengths)
    assert image_embeddings.shape == (3, 32) and text_embeddings.shape == (3, 32)
    cached = models.build_model(vocab_size=40, embedding_dim=32, word_dim=16, hidden_size=8, cached_feature_dim=60)
    assert cached.takes_features
    x, z = cached(torch.randn(3, 60), token_ids, lengths)
    assert x.shape == z.shape == (3, 32)


def _naive_direction(lstm, suffix, tokens, h, c):
    """The LSTM recurrence step by step over one sentence's word vectors (T, word_dim): (T, hidden)."""
    w_ih, w_hh = getattr(lstm, f"weight_ih_l0{suffix}"), getattr(lstm, f"weight_hh_l0{suffix}")
    bias = getattr(lstm, f"bias_ih_l0{suffix}") + getattr(lstm, f"bias_hh_l0{suffix}")
    outputs = []
    for x in tokens:
        i, f, g, o = (w_ih @ x + w_hh @ h + bias).chunk(4)  # PyTorch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs)


def test_fused_padded_lstm_equals_a_loop_over_each_sentence_alone():
    """The two fused directions over a padded batch are the recurrence run on each sentence by itself:
    forward from its first token, backward from its own last token, zeros on padded steps."""
    torch.manual_seed(0)
    encoder = models.TextEncoder(vocab_size=30, word_dim=6, hidden_size=5, dropout=0.0).eval()
    with torch.no_grad():
        encoder.initial_hidden.normal_()
        encoder.initial_cell.normal_()
    sentences = [[1, 5, 6, 7, 8, 9], [3, 4], [2, 2, 9, 11]]
    token_ids, lengths = _padded(sentences, total_length=8)
    with torch.no_grad():
        outputs = encoder.step_outputs(token_ids, lengths)  # (3, 8, 10)
        for row, sentence in enumerate(sentences):
            words = encoder.word_embedding(torch.tensor(sentence))  # (L, word_dim)
            forward = _naive_direction(
                encoder.lstm, "", words, encoder.initial_hidden[0, 0], encoder.initial_cell[0, 0]
            )
            backward = _naive_direction(
                encoder.lstm, "_reverse", words.flip(0), encoder.initial_hidden[1, 0], encoder.initial_cell[1, 0]
            ).flip(0)
            torch.testing.assert_close(
                outputs[row, : len(sentence)], torch.cat([forward, backward], dim=1), rtol=1e-5, atol=1e-6
            )
            assert torch.all(outputs[row, len(sentence) :] == 0)


def test_mobilenet_v2_weights_match_torchvisions_published_hash(tmp_path):
    """The offline MobileNetV2 file is torchvision's: its SHA-256 starts with the prefix in torchvision's URL."""
    import hashlib

    path = models.mobilenet_v2_weights_path()  # checks the hash itself
    assert models.torchvision_published_hash() == "b0353104"
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("b0353104")
    fake = tmp_path / models.MOBILENET_V2_WEIGHTS_FILE
    fake.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="does not start with torchvision's published b0353104"):
        models.check_torchvision_hash(fake)
