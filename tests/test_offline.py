"""No network, no hang: every path that could download fails fast offline and says what to do.

No test here reaches the network: sockets are replaced by fakes that fail at once (offline) or
block far longer than the course may wait (a hanging DNS lookup or connection).
"""
from __future__ import annotations

import socket
import threading
import time

import pytest
import sklearn.datasets  # (imported here so the timings below measure waiting, not importing)

from helpers import runtime
from helpers.models import backbones
from helpers.models.backbones import BackboneUnavailable, load_backbone
from helpers.data.folders import FaceDataError, load_faces, load_lfw

HANG_S = 30.0  # a "hanging" network call blocks this long, whatever timeout it was given


@pytest.fixture
def online_mode(monkeypatch, tmp_path):
    """FACE_COURSE_OFFLINE unset (as at a learner's home) and an empty TORCH_HOME."""
    monkeypatch.delenv("FACE_COURSE_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


@pytest.fixture
def dns_fails(monkeypatch, online_mode):
    """No internet: every lookup fails at once, as on this machine ('Name or service not known')."""
    calls = []

    def fail(*args, **kwargs):
        calls.append(args[:1])
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    monkeypatch.setattr(socket, "create_connection", fail)
    return calls


@pytest.fixture
def network_hangs(monkeypatch, online_mode):
    """Lookups and connections block for 30 s and ignore their timeout (a hanging DNS resolver)."""
    calls = []

    def hang(*args, **kwargs):
        calls.append(args[:1])
        time.sleep(HANG_S)
        raise socket.timeout("timed out")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    monkeypatch.setattr(socket, "create_connection", hang)
    return calls


@pytest.fixture
def no_download(monkeypatch):
    """Downloading weights at all is a failure: the offline paths must decide before that."""
    import torch.hub

    def refuse(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs), None, time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001
        return None, e, time.perf_counter() - t0


# ------------------------------------------------------------------ LFW

def test_lfw_without_internet_fails_fast_and_says_what_to_do(dns_fails, tmp_path):
    data_home = tmp_path / "sk_data"
    _, err, seconds = _timed(load_lfw, data_home=data_home)
    assert isinstance(err, FaceDataError), err
    msg = str(err)
    assert "LFW is not downloaded yet" in msg and "cannot be reached" in msg
    assert "source='orl'" in msg and "your own folder" in msg
    assert seconds < 5, seconds             # no retries with pauses between them
    assert dns_fails, "the network was never asked: was a cached copy used?"
    assert not [p for p in data_home.rglob("*") if p.is_file()]  # no half-downloaded file left


def test_lfw_with_offline_flag_never_touches_the_network(dns_fails, monkeypatch, tmp_path):
    monkeypatch.setenv("FACE_COURSE_OFFLINE", "1")
    with pytest.raises(FaceDataError, match="FACE_COURSE_OFFLINE=1 is set"):
        load_faces("lfw", data_home=tmp_path / "sk_data")
    assert dns_fails == []


def test_lfw_with_a_hanging_network_gives_up_in_seconds(network_hangs, tmp_path):
    _, err, seconds = _timed(load_lfw, data_home=tmp_path / "sk_data", timeout_s=2.0)
    assert isinstance(err, FaceDataError) and "cannot be reached" in str(err), err
    assert seconds < 4.5, seconds           # timeout_s + 0.5, not the 30 s the lookup takes


def test_lfw_uses_a_copy_already_on_disk_without_the_network(dns_fails, monkeypatch, tmp_path):
    """A learner who downloaded LFW once works offline: the copy is read, no network asked."""
    import numpy as np
    from sklearn.utils import Bunch

    seen = []

    def fake_fetch(**kwargs):
        seen.append(kwargs)
        if kwargs["download_if_missing"]:
            raise AssertionError("tried to download although a copy is on disk")
        return Bunch(images=np.zeros((4, 8, 8, 3), np.float32), target=np.array([0, 0, 1, 1]),
                     target_names=np.array(["A", "B"]))

    monkeypatch.setattr(sklearn.datasets, "fetch_lfw_people", fake_fetch)
    faces = load_lfw(data_home=tmp_path / "sk_data")
    assert faces.names == ["A", "B"] and len(faces) == 4
    assert seen[0]["data_home"] == str(tmp_path / "sk_data") and dns_fails == []


# ------------------------------------------------------------------ backbones

def test_auto_backbone_with_a_hanging_network_falls_back_within_seconds(network_hangs, no_download, capsys):
    """'auto' waits at most ~3.5 s for the network, then takes the packaged EfficientNet-Lite0."""
    _, _, load_only = _timed(backbones._efficientnet_lite0, True)  # the part that is not waiting
    bb, err, seconds = _timed(load_backbone, "auto")
    assert err is None, err
    assert bb.name == "efficientnet_lite0"
    assert "fell back to EfficientNet-Lite0" in capsys.readouterr().out
    assert network_hangs, "the network was never probed"
    assert seconds - load_only < 5, (seconds, load_only)   # network wait bounded, not 30 s


def test_resnet18_with_a_hanging_network_says_what_to_do_within_seconds(network_hangs, no_download):
    _, err, seconds = _timed(load_backbone, "resnet18")
    assert isinstance(err, BackboneUnavailable), err
    assert "backbone='efficientnet_lite0'" in str(err) and "resnet18-f37072fd.pth" in str(err)
    assert seconds < 5, seconds


def test_resnet18_without_internet_fails_at_once(dns_fails, no_download):
    _, err, seconds = _timed(load_backbone, "resnet18")
    assert isinstance(err, BackboneUnavailable), err
    assert seconds < 2, seconds


def test_packaged_backbone_needs_no_network(dns_fails, no_download):
    bb = load_backbone("efficientnet_lite0", verbose=False)
    assert bb.feature_dim == 1280 and dns_fails == []


def test_hanging_probe_threads_do_not_block_exit(network_hangs):
    """The probe runs in a daemon thread: a hung lookup cannot keep Python from exiting."""
    before = set(threading.enumerate())
    assert runtime.internet_reachable(timeout_s=0.2) is False
    probes = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert probes and all(t.daemon for t in probes)
