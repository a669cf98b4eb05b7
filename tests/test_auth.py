"""studio.auth (users file), studio.cli_users and studio.security (names, safe_path). Offline, ~3 s."""
from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.errors import UserError
from studio import auth, cli_users
from studio.security import is_owned_path, safe_path, user_outputs_dir, validate_username

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BAD_NAMES = ["", "a/b", "a\\b", "..", ".", ".hidden", "../etc", "a" * 65, "a b", "é", "x\x00y", "jobs.sqlite3", None, 7]


# -- passwords and the users file --------------------------------------------------------------------------

def test_hash_is_salted_and_verifies():
    h1, h2 = auth.hash_password("correct horse"), auth.hash_password("correct horse")
    assert h1 != h2 and h1.startswith("scrypt$")
    assert "correct horse" not in h1
    assert auth.verify_password("correct horse", h1) and auth.verify_password("correct horse", h2)
    assert not auth.verify_password("correct hors", h1)
    assert not auth.verify_password("correct horse", "garbage")
    assert not auth.verify_password("correct horse", "pbkdf2$1$2$3$4$5")


def test_add_user_and_check(tmp_path):
    users = tmp_path / "conf" / "users.json"
    auth.add_user(users, "alice", "alice-password")
    auth.add_user(users, "bob.smith-2", "bob-password!")
    assert auth.check(users, "alice", "alice-password")
    assert auth.check(users, "bob.smith-2", "bob-password!")
    assert not auth.check(users, "alice", "bob-password!")  # someone else's password
    assert not auth.check(users, "alice", "")
    assert not auth.check(users, "carol", "alice-password")  # unknown user
    assert not auth.check(users, None, "alice-password")  # type: ignore[arg-type]
    assert not auth.check(tmp_path / "missing.json", "alice", "alice-password")

    text = users.read_text()
    assert "alice-password" not in text and "bob-password" not in text
    data = json.loads(text)
    assert data["version"] == 1 and sorted(data["users"]) == ["alice", "bob.smith-2"]
    salts = {entry["hash"].split("$")[4] for entry in data["users"].values()}
    assert len(salts) == 2
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert [p.name for p in users.parent.iterdir()] == ["users.json"]  # no temp file left behind
    assert auth.list_users(users) == ["alice", "bob.smith-2"]


def test_add_user_refuses_duplicates_short_passwords_and_bad_names(tmp_path):
    users = tmp_path / "users.json"
    auth.add_user(users, "alice", "alice-password")
    with pytest.raises(UserError, match="already exists"):
        auth.add_user(users, "alice", "other-password")
    assert auth.check(users, "alice", "alice-password")
    auth.add_user(users, "alice", "new-password", overwrite=True)
    assert auth.check(users, "alice", "new-password") and not auth.check(users, "alice", "alice-password")
    with pytest.raises(UserError, match="too short"):
        auth.add_user(users, "bob", "short")
    for name in BAD_NAMES:
        with pytest.raises(UserError):
            auth.add_user(users, name, "long-enough-password")  # type: ignore[arg-type]
    assert auth.list_users(users) == ["alice"]
    assert auth.remove_user(users, "alice") and not auth.remove_user(users, "alice")
    assert not auth.check(users, "alice", "new-password")


def test_broken_users_file_is_a_user_error(tmp_path):
    users = tmp_path / "users.json"
    users.write_text("{not json")
    assert not auth.check(users, "alice", "whatever-password")
    with pytest.raises(UserError, match="cannot be read"):
        auth.add_user(users, "alice", "alice-password")


def test_authenticator_is_a_gradio_auth_callable_and_sees_new_users(tmp_path):
    users = tmp_path / "users.json"
    with pytest.raises(UserError, match="does not exist"):
        auth.Authenticator(users)
    auth.add_user(users, "alice", "alice-password")
    check = auth.Authenticator(users)
    assert check("alice", "alice-password") is True
    assert check("alice", "wrong-password") is False
    assert check("../alice", "alice-password") is False
    auth.add_user(users, "bob", "bob-password")  # added while the server runs
    assert check("bob", "bob-password") is True


def test_owner_name():
    assert auth.owner_name(None) == auth.LOCAL_USER == "local"
    assert auth.owner_name("") == "local"
    assert auth.owner_name("alice") == "alice"
    with pytest.raises(UserError):
        auth.owner_name("../alice")


# -- the command -------------------------------------------------------------------------------------------

def test_cli_add_list_remove(tmp_path, monkeypatch, capsys):
    users = tmp_path / "users.json"
    monkeypatch.setattr(sys, "stdin", io.StringIO("alice-password\n"))
    assert cli_users.main(["add", str(users), "alice", "--password-stdin"]) == 0
    assert auth.check(users, "alice", "alice-password")

    monkeypatch.setattr(sys, "stdin", io.StringIO("x\n"))
    assert cli_users.main(["add", str(users), "alice", "--password-stdin"]) == 2
    assert "already exists" in capsys.readouterr().err

    monkeypatch.setattr(sys, "stdin", io.StringIO("bob-password\n"))
    assert cli_users.main(["add", str(users), "../bob", "--password-stdin"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: user name") and "Traceback" not in err

    prompts = iter(["first-password", "other-password"])
    monkeypatch.setattr(cli_users.getpass, "getpass", lambda prompt="": next(prompts))
    assert cli_users.main(["add", str(users), "carol"]) == 2
    assert "differ" in capsys.readouterr().err
    prompts = iter(["carol-password", "carol-password"])
    assert cli_users.main(["add", str(users), "carol"]) == 0
    assert auth.check(users, "carol", "carol-password")

    capsys.readouterr()
    assert cli_users.main(["list", str(users)]) == 0
    assert capsys.readouterr().out.split() == ["alice", "carol"]
    assert cli_users.main(["remove", str(users), "carol"]) == 0
    assert cli_users.main(["remove", str(users), "carol"]) == 2


def test_cli_runs_as_a_module(tmp_path):
    users = tmp_path / "users.json"
    proc = subprocess.run(
        [sys.executable, "-m", "studio.cli_users", "add", str(users), "dave", "--password-stdin"],
        input="dave-password\n", capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert auth.check(users, "dave", "dave-password")


# -- names and paths ---------------------------------------------------------------------------------------

def test_validate_username():
    for good in ("alice", "Bob_2", "a.b-c", "x" * 64, "local"):
        assert validate_username(good) == good
    for bad in BAD_NAMES:
        with pytest.raises(UserError):
            validate_username(bad)  # type: ignore[arg-type]


@pytest.fixture
def roots(tmp_path):
    models, outputs = tmp_path / "models", tmp_path / "outputs"
    (models / "loras").mkdir(parents=True)
    (outputs / "alice" / "job1").mkdir(parents=True)
    (outputs / "bob" / "job2").mkdir(parents=True)
    (models / "loras" / "union.safetensors").write_bytes(b"w")
    (outputs / "alice" / "job1" / "video.mp4").write_bytes(b"v")
    (outputs / "bob" / "job2" / "video.mp4").write_bytes(b"v")
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    (tmp_path / "models_evil").mkdir()
    (tmp_path / "models_evil" / "x.safetensors").write_bytes(b"w")
    return models, outputs, secret


def test_safe_path_accepts_paths_inside_roots(roots):
    models, outputs, _ = roots
    allowed = [models, outputs]
    assert safe_path("loras/union.safetensors", allowed) == models / "loras" / "union.safetensors"
    assert safe_path(str(outputs / "alice" / "job1" / "video.mp4"), allowed, must_exist=True).is_file()
    assert safe_path(models / "loras" / ".." / "loras" / "union.safetensors", allowed).is_file()
    assert safe_path(str(models), allowed) == models.resolve()
    assert safe_path("  loras/new.safetensors ", models) == models / "loras" / "new.safetensors"
    os.symlink(outputs / "alice" / "job1" / "video.mp4", models / "link.mp4")  # link to another allowed root
    assert safe_path("link.mp4", allowed) == outputs / "alice" / "job1" / "video.mp4"


def test_safe_path_refuses_escapes(roots, tmp_path):
    models, outputs, secret = roots
    allowed = [models, outputs]
    refused = [
        "../../etc/passwd",
        "../secret.txt",
        "loras/../../secret.txt",
        "/etc/passwd",
        str(secret),
        str(tmp_path / "models_evil" / "x.safetensors"),  # shares the prefix "models" but is another folder
        "~/.ssh/id_rsa",  # not expanded: resolved under models/, a harmless missing path -> must_exist refuses
        "",
        "   ",
        "loras/\x00.safetensors",
    ]
    os.symlink(secret, models / "innocent.safetensors")  # file symlink escaping the root
    os.symlink("/etc", models / "etc")  # folder symlink escaping the root
    refused += ["innocent.safetensors", "etc/passwd", str(models / "etc" / "hostname")]
    for path in refused:
        with pytest.raises(UserError):
            safe_path(path, allowed, must_exist=True)
    with pytest.raises(UserError, match="outside the folders"):
        safe_path("../../etc/passwd", allowed)
    loop = models / "loop"
    os.symlink(loop, loop)
    with pytest.raises(UserError):
        safe_path("loop", allowed)
    with pytest.raises(ValueError):
        safe_path("x", [])


def test_is_owned_path_for_file_routes(roots):
    _, outputs, secret = roots
    alice_video = outputs / "alice" / "job1" / "video.mp4"
    bob_video = outputs / "bob" / "job2" / "video.mp4"
    assert user_outputs_dir(outputs, "alice") == outputs / "alice"
    assert is_owned_path(alice_video, outputs, "alice")
    assert not is_owned_path(bob_video, outputs, "alice")
    assert not is_owned_path(outputs / "alice" / ".." / "bob" / "job2" / "video.mp4", outputs, "alice")
    assert not is_owned_path("alice/job1/video.mp4", outputs, "alice")  # relative: refused
    assert not is_owned_path(secret, outputs, "alice")
    assert not is_owned_path(alice_video, outputs, "../alice")
    os.symlink(bob_video, outputs / "alice" / "job1" / "stolen.mp4")
    assert not is_owned_path(outputs / "alice" / "job1" / "stolen.mp4", outputs, "alice")
