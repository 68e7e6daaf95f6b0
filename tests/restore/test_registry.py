import json
import pickle

import numpy as np
import pytest
import torch

from stemquant.restore import (
    CGRDN,
    CGRDNConfig,
    build_model,
    list_models,
    load_model,
    model_card,
    restore,
    weights_path,
)
from stemquant.restore._registry import WEIGHTS_DIR


def _card(name):
    return {"architecture": name, "data": "test", "command": "pytest", "seed": 0, "metrics": {}}


def _save(tmp_path, name, model):
    path = weights_path(name, weights_dir=tmp_path)  # gambini-ae -> gambini.pt
    torch.save(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(_card(name)))


def test_list_models():
    names = list_models()
    assert {"hrstem", "hrstem-lite", "gambini-ae", "mohan-bf-unet", "katsuno-resnet-unet"} <= set(names)
    assert names == sorted(names)


def test_build_model_is_offline_and_random(monkeypatch):
    # building must not read any file: point the weights folder at nothing and build every model
    monkeypatch.setattr("stemquant.restore._registry.WEIGHTS_DIR", WEIGHTS_DIR / "does-not-exist")
    for name in ("hrstem-lite", "gambini-ae"):  # the large ones are built in other tests
        assert not build_model(name).training
    assert isinstance(build_model("hrstem"), CGRDN)


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="hrstem-lite.pt"):
        load_model("hrstem-lite", device="cpu", weights_dir=tmp_path)
    assert weights_path("hrstem").parent == WEIGHTS_DIR
    with pytest.raises(ValueError, match="unknown model"):
        load_model("nope")


def test_round_trip(tmp_path, rng):
    torch.manual_seed(0)
    model = build_model("hrstem-lite")
    _save(tmp_path, "hrstem-lite", model)
    loaded = load_model("hrstem-lite", device="cpu", weights_dir=tmp_path)
    assert model_card("hrstem-lite", weights_dir=tmp_path)["seed"] == 0
    img = rng.normal(size=(40, 50))
    np.testing.assert_array_equal(restore(img, model, tile=64, overlap=8),
                                  restore(img, loaded, tile=64, overlap=8))


def test_card_required_and_checked(tmp_path):
    torch.save(build_model("gambini-ae").state_dict(), tmp_path / "gambini.pt")
    with pytest.raises(FileNotFoundError, match="gambini.json"):
        load_model("gambini-ae", device="cpu", weights_dir=tmp_path)
    (tmp_path / "gambini.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model("gambini-ae", device="cpu", weights_dir=tmp_path)
    card = _card("gambini-ae")
    del card["seed"]
    (tmp_path / "gambini.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="seed"):
        load_model("gambini-ae", device="cpu", weights_dir=tmp_path)
    card = _card("gambini-ae")
    card["architecture"] = ""
    (tmp_path / "gambini.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="architecture"):
        load_model("gambini-ae", device="cpu", weights_dir=tmp_path)


def test_wrong_architecture_weights(tmp_path):
    _save(tmp_path, "hrstem-lite", build_model("gambini-ae"))
    with pytest.raises(ValueError, match="CGRDN state_dict"):
        load_model("hrstem-lite", device="cpu", weights_dir=tmp_path)
    _save(tmp_path, "gambini-ae", build_model("hrstem-lite"))
    with pytest.raises(ValueError, match="do not fit"):
        load_model("gambini-ae", device="cpu", weights_dir=tmp_path)


@pytest.mark.parametrize("config", [CGRDNConfig.lite(), CGRDNConfig(n_grdb=3, n_rdb=1, n_layers=2, growth=4,
                                                                    features=8)])
def test_cgrdn_size_is_read_from_the_weight_file(tmp_path, rng, config):
    # e.g. a lite network trained for HR-STEM shipped as hrstem.pt (the published size is only the default)
    torch.manual_seed(1)
    model = CGRDN(config).eval()
    _save(tmp_path, "hrstem", model)
    loaded = load_model("hrstem", device="cpu", weights_dir=tmp_path)
    assert loaded.config == config
    img = rng.normal(size=(40, 50))
    np.testing.assert_allclose(restore(img, model, tile=64, overlap=8), restore(img, loaded, tile=64, overlap=8),
                               rtol=1e-6, atol=1e-6)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    torch.save({"x": _Evil()}, tmp_path / "hrstem-lite.pt")
    (tmp_path / "hrstem-lite.json").write_text(json.dumps(_card("hrstem-lite")))
    with pytest.raises(pickle.UnpicklingError):
        load_model("hrstem-lite", device="cpu", weights_dir=tmp_path)


def test_gambini_weights_file_is_gambini_pt(tmp_path):
    assert weights_path("gambini-ae").name == "gambini.pt"
    assert weights_path("hrstem").name == "hrstem.pt"


@pytest.mark.parametrize("make", [
    lambda: CGRDN(CGRDNConfig(n_grdb=1, n_rdb=2, n_layers=3, growth=4, features=8)),
    lambda: __import__("stemquant.restore", fromlist=["x"]).GambiniAutoencoder(8),
    lambda: __import__("stemquant.restore", fromlist=["x"]).BiasFreeUNet(scales=3, channels=4),
    lambda: __import__("stemquant.restore", fromlist=["x"]).ResNetUNet((16, 8, 8, 4, 4)),
])
def test_network_from_state_rebuilds_every_architecture(make):
    from stemquant.restore._registry import network_from_state

    net = make()
    state = net.state_dict()
    rebuilt = network_from_state(state)
    assert type(rebuilt) is type(net)
    rebuilt.load_state_dict(state, strict=True)  # same shapes and keys: the size was read correctly


def test_network_from_state_rejects_unknown_layouts():
    from stemquant.restore._registry import network_from_state

    with pytest.raises(ValueError, match="no known architecture"):
        network_from_state({"foo.weight": torch.zeros(1)})


def test_shipped_hrstem_weights_still_rebuild():
    # backward compatibility: the shipped plain state_dict is read by the layout inference
    from stemquant.restore._registry import network_from_state

    path = weights_path("hrstem")
    if not path.is_file():
        pytest.skip("no shipped hrstem.pt")
    state = torch.load(path, weights_only=True)
    net = network_from_state(state)
    assert isinstance(net, CGRDN)
    net.load_state_dict(state, strict=True)
