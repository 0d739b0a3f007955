"""The payload word is built once per version of the agent's sources and kept
in the user's cache directory: a later client reads it instead of blanking
the modules again, a kept word that does not match its hash or sits where others
can write is ignored, and the hosts' threads of one run build it once."""

import os
import threading

import pytest

from tasks import agent, payload


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache" / "fabserve"
    monkeypatch.setattr(payload, "CACHE_DIR", folder)
    payload.built.cache_clear()
    yield folder
    payload.built.cache_clear()


def blanking_counted(monkeypatch):
    calls = []
    real = payload.blanked

    def counted(source):
        calls.append(source)
        return real(source)

    monkeypatch.setattr(payload, "blanked", counted)
    return calls


def test_a_later_client_reads_the_word_kept_by_the_first_and_blanks_nothing(cache, monkeypatch):
    calls = blanking_counted(monkeypatch)
    word = payload.payload()
    assert len(calls) == len(agent.MODULES)
    (kept,) = cache.iterdir()
    assert kept.name.startswith(payload.CACHE_PREFIX) and kept.read_text() == " ".join(word)
    payload.built.cache_clear()
    assert payload.payload() == word and len(calls) == len(agent.MODULES)


def test_a_kept_word_that_does_not_match_its_hash_is_built_again_and_replaced(cache, monkeypatch):
    word = payload.payload()
    (entry,) = cache.iterdir()
    entry.write_text("0123456789abcdef " + word[1])
    payload.built.cache_clear()
    calls = blanking_counted(monkeypatch)
    assert payload.payload() == word and len(calls) == len(agent.MODULES)
    assert entry.read_text() == " ".join(word)


def test_a_word_kept_where_others_can_write_is_not_read(cache, monkeypatch):
    word = payload.payload()
    os.chmod(cache, 0o777)
    payload.built.cache_clear()
    calls = blanking_counted(monkeypatch)
    assert payload.payload() == word and len(calls) == len(agent.MODULES)


def test_new_versions_of_the_sources_keep_the_newest_few_entries(cache, monkeypatch):
    """A checkout and an installed copy used in turn each find their own word kept;
    past CACHE_KEEP versions, the oldest entries go."""
    versions = [f"version-{index}" for index in range(payload.CACHE_KEEP + 2)]
    for index, version in enumerate(versions):
        monkeypatch.setattr(payload, "sources_key", lambda sources, version=version: version)
        payload.built.cache_clear()
        payload.payload()
        for entry in cache.iterdir():  # a distinct mtime each, as versions written over days have
            os.utime(entry, ns=(0, 10 ** 9 * (versions.index(entry.name[len(payload.CACHE_PREFIX):]) + 1)))
    kept = sorted(entry.name[len(payload.CACHE_PREFIX):] for entry in cache.iterdir())
    assert kept == versions[-payload.CACHE_KEEP:]


def test_the_threads_of_a_run_on_many_hosts_build_the_word_once(cache, monkeypatch):
    calls = blanking_counted(monkeypatch)
    words = []
    threads = [threading.Thread(target=lambda: words.append(payload.payload())) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(words) == 10 and len(set(words)) == 1 and len(calls) == len(agent.MODULES)
