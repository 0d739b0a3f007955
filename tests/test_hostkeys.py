"""Host key checking: fab against the real sshd (the pure helpers: test_hostkeys_unit.py).

Each test runs fab with its own HOME and its own ssh_config (-S), so
known_hosts files live in tmp_path and root's own ~/.ssh is never touched.
"""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, free_port, fresh_key, keygen_fingerprint, wait_for

ALIAS = "hk"


@pytest.fixture
def host(target):
    """What the sshd offers: its key line, fingerprint and known_hosts name."""
    pub = target.ssh_config.parent / "host_ed25519.pub"
    kind, blob = pub.read_text().split()[:2]
    return {"key": f"{kind} {blob}", "fingerprint": f"{kind} {keygen_fingerprint(pub)}",
            "name": f"[127.0.0.1]:{target.port}"}


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    path.mkdir()
    return path


def ssh_config(target, tmp_path, *extra, head=()):
    path = tmp_path / "ssh_config"
    lines = [*head, f"Host {ALIAS}", "    HostName 127.0.0.1", f"    Port {target.port}", f"    User {target.user}",
             f"    IdentityFile {target.key}", "    IdentitiesOnly yes", *(f"    {line}" for line in extra)]
    path.write_text("\n".join(lines) + "\n")
    return path


def fab(home, config, *args, env=None, alias=ALIAS):
    """`fab -S config -H alias status` with HOME=home; exit 3 (not running) means it got through."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("FABRIC_")}
    return subprocess.run(
        [sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(config), "-H", alias, "status",
         "--project", "/nonexistent/site", "--port", str(free_port()), *args],
        cwd=REPO, env=clean | {"HOME": str(home)} | (env or {}),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def sshd_log_during(target, action):
    """Run `action`; return its result and what sshd logged meanwhile, once sshd is done with it."""
    offset = target.sshd_log.stat().st_size
    result = action()

    def logged():
        with target.sshd_log.open() as log:
            log.seek(offset)
            return log.read()

    # Either the end of the session or the disconnect before authentication.
    wait_for(lambda: "Closing connection" in logged() or "[preauth]" in logged(), timeout=10)
    return result, logged()


def assert_refused_before_login(target, run):
    result, logged = sshd_log_during(target, run)
    assert "Connection from 127.0.0.1" in logged, logged
    assert "[preauth]" in logged and "Accepted publickey" not in logged, logged
    return result


def test_unknown_host_refused_under_strict_setting_and_strict_ssh_config(target, tmp_path, home, host):
    refusal = (f"{ALIAS}: status failed: unknown host key for {host['name']} ({host['fingerprint']}), refused by "
               "{why}; if that is the host's key, add it with: ssh-keyscan -p " + str(target.port)
               + f" 127.0.0.1 >> {home}/.ssh/known_hosts")
    # The setting wins even over ssh_config's "accept anything".
    config = ssh_config(target, tmp_path, "StrictHostKeyChecking no")
    result = assert_refused_before_login(
        target, lambda: fab(home, config, env={"FABRIC_FABSERVE_STRICT_HOST_KEYS": "1"}))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == refusal.format(why="fabserve.strict_host_keys")
    assert not (home / ".ssh").exists()

    config = ssh_config(target, tmp_path, "StrictHostKeyChecking yes")
    result = assert_refused_before_login(target, lambda: fab(home, config, "--json"))
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"] == refusal.format(why="StrictHostKeyChecking yes").split(": ", 2)[2]
    assert not (home / ".ssh").exists()


def stale_known_hosts(home, tmp_path, host):
    """~/.ssh/known_hosts holding another key for the host, as after a reinstall."""
    known = home / ".ssh" / "known_hosts"
    known.parent.mkdir()
    stale = f"{host['name']} {fresh_key(tmp_path)}\n"
    known.write_text(stale)
    return known, stale


def test_changed_key_refused_even_under_accept_new(target, tmp_path, home, host):
    known, stale = stale_known_hosts(home, tmp_path, host)
    config = ssh_config(target, tmp_path)
    result = assert_refused_before_login(target, lambda: fab(home, config))
    assert result.returncode == 1
    assert host["fingerprint"].endswith(keygen_fingerprint(target.ssh_config.parent / "host_ed25519.pub"))
    assert result.stderr.strip() == (
        f"{ALIAS}: status failed: host key for {host['name']} has CHANGED: it offered {host['fingerprint']}, "
        f"not the key in {known}; refused. If the change is expected, remove the old key with: "
        f"ssh-keygen -R '{host['name']}' -f {known}")
    assert known.read_text() == stale
    # The fix it names works: remove the stale key, and accept-new records the real one.
    subprocess.run(["ssh-keygen", "-R", host["name"], "-f", str(known)], check=True, capture_output=True)
    assert fab(home, config).returncode == 3
    assert known.read_text() == f"{host['name']} {host['key']}\n"


def test_accept_new_records_in_the_named_file_then_verifies(target, tmp_path, home, host):
    named = tmp_path / "pinned" / "hosts"
    config = ssh_config(target, tmp_path, f"UserKnownHostsFile {named} ~/.ssh/second")
    result, logged = sshd_log_during(target, lambda: fab(home, config))
    assert result.returncode == 3, result.stderr
    assert "Accepted publickey" in logged  # the control for the refusals' "before any login"
    assert named.read_text() == f"{host['name']} {host['key']}\n"
    assert not (home / ".ssh").exists()
    assert fab(home, config).returncode == 3
    assert named.read_text() == f"{host['name']} {host['key']}\n"


def test_accept_new_records_in_home_known_hosts_by_default_and_hashes_if_asked(target, tmp_path, home, host):
    known = home / ".ssh" / "known_hosts"
    config = ssh_config(target, tmp_path, "StrictHostKeyChecking accept-new")
    assert fab(home, config).returncode == 3
    assert (known.parent.stat().st_mode & 0o777, known.read_text()) == (0o700, f"{host['name']} {host['key']}\n")
    known.unlink()
    config = ssh_config(target, tmp_path, "HashKnownHosts yes")
    assert fab(home, config).returncode == 3
    hashed, kind, blob = known.read_text().split()
    assert hashed.startswith("|1|") and f"{kind} {blob}" == host["key"]
    # OpenSSH finds it under the name it would look up.
    subprocess.run(["ssh-keygen", "-F", host["name"], "-f", str(known)], check=True, capture_output=True)
    assert fab(home, config).returncode == 3
    assert len(known.read_text().splitlines()) == 1


@pytest.mark.parametrize("hashed", [False, True], ids=["plain", "hashed"])
def test_known_key_from_ssh_keyscan_is_accepted_under_strict(target, tmp_path, home, host, hashed):
    scan = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(target.port), "127.0.0.1"],
                          check=True, capture_output=True, text=True, timeout=30)
    known = tmp_path / "known_hosts"
    known.write_text(scan.stdout)
    assert known.read_text() == f"{host['name']} {host['key']}\n"
    if hashed:
        subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
        assert known.read_text().startswith("|1|")
    before = known.read_text()
    config = ssh_config(target, tmp_path, "StrictHostKeyChecking yes", f"UserKnownHostsFile {known}")
    result = fab(home, config)
    assert result.returncode == 3, result.stderr
    assert known.read_text() == before


def test_global_known_hosts_file_is_read_not_written(target, tmp_path, home, host):
    shared = tmp_path / "ssh_known_hosts"
    shared.write_text(f"{host['name']} {host['key']}\n")
    config = ssh_config(target, tmp_path, "StrictHostKeyChecking yes", f"GlobalKnownHostsFile {shared}")
    assert fab(home, config).returncode == 3
    assert not (home / ".ssh").exists()


def test_strict_host_key_checking_no_accepts_and_records_nothing(target, tmp_path, home, host):
    known, stale = stale_known_hosts(home, tmp_path, host)
    result = fab(home, ssh_config(target, tmp_path, "StrictHostKeyChecking no"))
    assert result.returncode == 3, result.stderr
    # The fixture's own ssh_config (no, plus UserKnownHostsFile /dev/null), as the other test modules use it.
    result = fab(home, target.ssh_config, alias=target.alias)
    assert result.returncode == 3, result.stderr
    assert known.read_text() == stale
    assert os.listdir(known.parent) == ["known_hosts"]


def test_proxy_jump_hop_is_checked_too(target, tmp_path, home, host):
    # The jump host is the same sshd under another name, so its key is filed separately.
    jump = f"[localhost]:{target.port}"
    common = [f"    Port {target.port}", f"    User {target.user}", f"    IdentityFile {target.key}",
              "    IdentitiesOnly yes"]
    config = ssh_config(target, tmp_path, "ProxyJump localhost", head=["Host localhost", *common])
    known = home / ".ssh" / "known_hosts"
    assert fab(home, config).returncode == 3
    assert sorted(known.read_text().splitlines()) == sorted(f"{name} {host['key']}" for name in (jump, host["name"]))
    known.write_text(f"{host['name']} {host['key']}\n{jump} {fresh_key(tmp_path)}\n")
    result = fab(home, config)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{ALIAS}: status failed: host key for {jump} has CHANGED: it offered "
                                    f"{host['fingerprint']}"), result.stderr
