"""URL-registered built-ins: fetched once into the cache, verified, and never half-written."""
from __future__ import annotations

import json

import pytest

from napari_cellclass import zoo
from napari_cellclass.engine.checkpoint import build_from_checkpoint
from napari_cellclass.errors import InputError
from zoo_utils import add, make_zoo, tiny_checkpoint


@pytest.fixture
def url_model(tmp_path, monkeypatch):
    folder = make_zoo(tmp_path, monkeypatch)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    ck = tiny_checkpoint(tmp_path / "trained.safetensors")
    served = mirror / "wbc-remote.safetensors"
    card = add(ck, "wbc-remote", folder, url=served.as_uri(), export=served)
    return folder, served, card, tmp_path / "cache"


def test_url_card_ships_without_weights(url_model):
    folder, served, card, cache = url_model
    assert sorted(p.name for p in folder.iterdir()) == ["wbc-remote.json"]
    assert card["url"] == served.as_uri() and card["size_bytes"] == served.stat().st_size
    assert [c["name"] for c in zoo.list_models("wbc")] == ["wbc-remote"]


def test_fetched_once_into_the_cache_and_verified(url_model):
    folder, served, card, cache = url_model
    path = zoo.resolve_model("wbc-remote", task="wbc")
    assert path.parent == cache and path.is_file()
    assert path.read_bytes() == served.read_bytes()
    build_from_checkpoint(path, task="wbc")
    served.unlink()  # the source is gone (offline): the cached copy is used
    assert zoo.resolve_model("wbc-remote") == path
    assert sorted(p.name for p in cache.iterdir()) == [path.name]


def test_offline_and_uncached_names_url_and_cache(tmp_path, monkeypatch):
    folder = make_zoo(tmp_path, monkeypatch)
    ck = tiny_checkpoint(tmp_path / "t.safetensors")
    url = "http://127.0.0.1:9/models/wbc-off.safetensors"  # nothing listens on the discard port
    add(ck, "wbc-off", folder, url=url, export=tmp_path / "upload.safetensors")
    cache = tmp_path / "cache"
    with pytest.raises(InputError) as err:
        zoo.resolve_model("wbc-off")
    msg = str(err.value)
    assert url in msg and str(cache) in msg and "not in the cache" in msg
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing half-written


def test_wrong_bytes_at_the_url_are_refused_and_not_kept(url_model):
    folder, served, card, cache = url_model
    served.write_bytes(served.read_bytes()[:-10])  # truncated upload
    with pytest.raises(InputError, match="could not be fetched"):
        zoo.resolve_model("wbc-remote")
    assert not cache.exists() or list(cache.iterdir()) == []


def test_damaged_cache_entry_is_fetched_again(url_model):
    folder, served, card, cache = url_model
    path = zoo.resolve_model("wbc-remote")
    path.write_bytes(b"garbage")
    again = zoo.resolve_model("wbc-remote")
    assert again == path and again.read_bytes() == served.read_bytes()


def test_cache_dir_default_is_the_user_cache(monkeypatch):
    import platformdirs

    monkeypatch.delenv("CELLCLASS_CACHE_DIR", raising=False)
    assert zoo.cache_dir() == zoo.Path(platformdirs.user_cache_dir("napari-cellclass")) / "models"
    monkeypatch.setenv("CELLCLASS_CACHE_DIR", "/x/y")
    assert str(zoo.cache_dir()) == "/x/y"


def test_a_local_file_of_the_same_name_wins_over_the_url(url_model):
    """A card registered by URL later shipped locally: the shipped file is used (and verified)."""
    folder, served, card, cache = url_model
    (folder / "wbc-remote.safetensors").write_bytes(served.read_bytes())
    assert zoo.resolve_model("wbc-remote") == folder / "wbc-remote.safetensors"
    assert not cache.exists()
    json.loads((folder / "wbc-remote.json").read_text())  # card untouched
