"""Model names are checked before a library loads them: a missing folder or an unreachable hub is a one-line
error at once, and a cached hub model loads from the cache alone when the hub cannot be reached."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from embedkit import hub
from embedkit.encoders import load_encoder, locate, sentence_transformer
from embedkit.encoders.generators import load_generator
from embedkit.encoders.reward import load_reward_model
from embedkit.errors import EmbedkitError


@pytest.fixture
def hub_state(monkeypatch):
    """Sets whether the hub answers and whether a model is cached; records whether the hub was asked."""
    state = {"reachable": True, "cached": False, "asked": 0}

    def reachable() -> bool:
        state["asked"] += 1
        return state["reachable"]

    monkeypatch.setattr(locate, "hub_reachable", reachable)
    monkeypatch.setattr(locate, "hub_model_cached", lambda name: state["cached"])
    return state


def test_folders_are_never_looked_up_on_the_hub(hub_state, tiny_model_path, tmp_path) -> None:
    assert locate.cache_only(str(tiny_model_path)) is False
    for missing in (tmp_path / "no" / "model", "./model", "runs/x/best"):
        with pytest.raises(EmbedkitError, match=f"^model folder not found: {missing}$"):
            locate.cache_only(str(missing))
    assert hub_state["asked"] == 0


def test_hub_ids_load_online_from_the_cache_offline_or_fail_at_once(hub_state) -> None:
    assert locate.cache_only("org/name") is False and hub_state["asked"] == 1
    hub_state.update(reachable=False, cached=True)
    assert locate.cache_only("org/name") is True
    hub_state["cached"] = False
    with pytest.raises(EmbedkitError, match="^generator model 'org/name': no such folder here, not in the Hugging "
                                            "Face cache, and the hub cannot be reached$"):
        locate.cache_only("org/name", "generator model")


def test_loaders_fail_before_any_library_is_asked(hub_state, monkeypatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the model library must not be asked")

    monkeypatch.setattr(sentence_transformer, "SentenceTransformer", never)
    hub_state["reachable"] = False
    with pytest.raises(EmbedkitError, match="^model 'org/missing': no such folder here"):
        load_encoder("org/missing")
    with pytest.raises(EmbedkitError, match="^model 'org/missing': no such folder here"):
        load_reward_model("org/missing")
    with pytest.raises(EmbedkitError, match="^generator model 'org/missing': no such folder here"):
        load_generator("org/missing")


def test_a_cached_model_loads_offline_from_the_cache_alone(hub_state, monkeypatch) -> None:
    calls = []

    def recorded(path, **kwargs):
        calls.append(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(sentence_transformer, "SentenceTransformer", recorded)
    hub_state.update(reachable=False, cached=True)
    with pytest.raises(EmbedkitError, match="^cannot load model 'org/cached': stop here$"):
        load_encoder("org/cached", device="cpu")
    hub_state["reachable"] = True
    with pytest.raises(EmbedkitError):
        load_encoder("org/cached", device="cpu")
    assert [call["local_files_only"] for call in calls] == [True, False]


def test_hub_reachable_sends_one_head_request_per_call_and_honours_offline_mode(monkeypatch) -> None:
    from huggingface_hub import constants

    answers = []

    def urlopen(request, timeout):
        answers.append(request.get_method())
        raise answer

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    answer = urllib.error.URLError("[Errno -2] Name or service not known")
    assert hub.hub_reachable() is False
    answer = TimeoutError("timed out")
    assert hub.hub_reachable() is False
    answer = urllib.error.HTTPError(constants.ENDPOINT, 503, "Service Unavailable", {}, None)
    assert hub.hub_reachable() is True  # an error status is still an answer
    assert answers == ["HEAD", "HEAD", "HEAD"]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.hub_reachable() is False and len(answers) == 3


def test_invalid_hub_ids_are_not_cached() -> None:
    assert hub.hub_model_cached("org/no-such-model-in-any-cache") is False
    assert hub.hub_model_cached("not a valid id//") is False
