"""Host key checking: the pure helpers of tasks/hostkeys.py (fab against a real sshd:
test_hostkeys.py)."""

import base64

import pytest
from paramiko.hostkeys import HostKeys

from helpers import fresh_key, keygen_fingerprint
from tasks import hostkeys


def test_fingerprint_matches_ssh_keygen(tmp_path):
    blob = base64.b64decode(fresh_key(tmp_path).split()[1])
    assert hostkeys.fingerprint(blob) == keygen_fingerprint(tmp_path / "fresh_ed25519.pub")


def test_known_hosts_name_is_bracketed_only_off_port_22():
    assert hostkeys.known_hosts_name("web1", 22) == "web1"
    assert hostkeys.known_hosts_name("127.0.0.1", 2222) == "[127.0.0.1]:2222"
    assert hostkeys.known_hosts_name("::1", 2222) == "[::1]:2222"


def test_default_is_accept_new_with_openssh_files(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    rules = hostkeys.rules_for({}, strict=False)
    user = [str(tmp_path / ".ssh" / name) for name in ("known_hosts", "known_hosts2")]
    assert rules == hostkeys.Rules("accept-new", "StrictHostKeyChecking accept-new",
                                   (*user, "/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"),
                                   user[0], False)


@pytest.mark.parametrize("setting, mode", [
    ("yes", "yes"), ("Ask", "yes"), ("true", "yes"), ("accept-new", "accept-new"),
    ("no", "no"), ("off", "no"), ("false", "no"),
])
def test_strict_host_key_checking_values(setting, mode):
    assert hostkeys.rules_for({"stricthostkeychecking": setting}, strict=False).mode == mode


def test_strict_setting_overrides_ssh_config():
    rules = hostkeys.rules_for({"stricthostkeychecking": "no"}, strict=True)
    assert (rules.mode, rules.why) == ("yes", "fabserve.strict_host_keys")


def test_no_checks_nothing_and_records_nothing():
    assert hostkeys.rules_for({"stricthostkeychecking": "no"}, strict=False) == \
        hostkeys.Rules("no", "StrictHostKeyChecking no", (), None, False)


def test_bad_strict_host_key_checking_is_refused():
    with pytest.raises(hostkeys.HostKeyError, match="'maybe' is not one of"):
        hostkeys.rules_for({"stricthostkeychecking": "maybe"}, strict=False)


def test_named_files_expand_tilde_and_dev_null_records_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = {"userknownhostsfile": "~/a /srv/b", "globalknownhostsfile": "/etc/g", "hashknownhosts": "yes"}
    rules = hostkeys.rules_for(config, strict=False)
    assert (rules.known, rules.record, rules.hashed) == ((f"{tmp_path}/a", "/srv/b", "/etc/g"), f"{tmp_path}/a", True)
    rules = hostkeys.rules_for({"userknownhostsfile": "/dev/null", "globalknownhostsfile": "none"}, strict=False)
    assert (rules.known, rules.record) == ((), None)


def test_messages_are_one_line_with_the_fix():
    offered = "ssh-ed25519 SHA256:abc"
    assert hostkeys.unknown_message("127.0.0.1", 2222, offered, "StrictHostKeyChecking yes", "/h/.ssh/known_hosts") == (
        "unknown host key for [127.0.0.1]:2222 (ssh-ed25519 SHA256:abc), refused by StrictHostKeyChecking yes; "
        "if that is the host's key, add it with: ssh-keyscan -p 2222 127.0.0.1 >> /h/.ssh/known_hosts")
    assert "ssh-keyscan web1 >>" in hostkeys.unknown_message("web1", 22, offered, "x", "f")
    assert hostkeys.changed_message("[127.0.0.1]:2222", offered, "/h/known hosts") == (
        "host key for [127.0.0.1]:2222 has CHANGED: it offered ssh-ed25519 SHA256:abc, not the key in "
        "/h/known hosts; refused. If the change is expected, remove the old key with: "
        "ssh-keygen -R '[127.0.0.1]:2222' -f '/h/known hosts'")


def test_load_skips_lines_paramiko_would_choke_on(tmp_path):
    key = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    known = tmp_path / "known_hosts"
    known.write_text(f"@cert-authority *.example.com ssh-ed25519 {key}\n# comment\n\ngarbage\n"
                     f"bad ssh-ed25519 !!!\nodd ssh-unknown {key}\nweb1,web2 ssh-ed25519 {key}\n")
    keys = HostKeys()
    hostkeys.load(str(known), keys)
    assert sorted(keys.keys()) == ["web1", "web2"]
    assert hostkeys.holder([str(tmp_path / "missing"), str(known)], "web2") == str(known)
    assert hostkeys.holder([str(known)], "web3") is None


def test_record_creates_a_private_directory_and_keeps_the_last_line_whole(tmp_path):
    path = tmp_path / ".ssh" / "known_hosts"
    hostkeys.record(str(path), "a ssh-ed25519 AAAA\n")
    assert (path.parent.stat().st_mode & 0o777, path.read_text()) == (0o700, "a ssh-ed25519 AAAA\n")
    path.write_text("a ssh-ed25519 AAAA")
    hostkeys.record(str(path), "b ssh-ed25519 BBBB\n")
    assert path.read_text() == "a ssh-ed25519 AAAA\nb ssh-ed25519 BBBB\n"


def test_each_host_gets_its_own_entries_from_a_file_parsed_once_per_version(tmp_path, monkeypatch):
    from paramiko.client import SSHClient
    key = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    known = tmp_path / "known_hosts"
    known.write_text("".join(f"[10.0.0.{i}]:2222 ssh-ed25519 {key}\n" for i in range(20)) + f"web1 ssh-ed25519 {key}\n")
    parses = []
    real = hostkeys.load
    monkeypatch.setattr(hostkeys, "load", lambda path, into: (parses.append(path), real(path, into)))
    hostkeys.parsed.cache_clear()
    rules = hostkeys.Rules("yes", "test", (str(known), str(tmp_path / "missing")), None, False)
    clients = {}
    for host, port in (("10.0.0.3", 2222), ("10.0.0.4", 2222), ("web1", 22), ("web2", 22)):
        clients[host] = SSHClient()
        hostkeys.install(clients[host], rules, host, port)
    assert parses == [str(known)]
    assert sorted(clients["10.0.0.3"].get_host_keys().keys()) == ["[10.0.0.3]:2222"]
    assert sorted(clients["web1"].get_host_keys().keys()) == ["web1"]
    assert clients["web2"].get_host_keys().keys() == []
    with known.open("a") as handle:  # a key recorded meanwhile (accept-new): the file is read again
        handle.write(f"web2 ssh-ed25519 {key}\n")
    again = SSHClient()
    hostkeys.install(again, rules, "web2", 22)
    assert len(parses) == 2 and sorted(again.get_host_keys().keys()) == ["web2"]
    hostkeys.parsed.cache_clear()
