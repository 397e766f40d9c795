"""Settings: one typed declaration, file < environment < arguments, unknown keys rejected."""

from __future__ import annotations

import pytest

from storage_api import _config
from storage_api.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in list(__import__("os").environ):
        if key.startswith("STORAGE_API_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("STORAGE_API_HOME", str(tmp_path / "home"))


def test_defaults_and_precedence(tmp_path, monkeypatch):
    path = tmp_path / "s.toml"
    path.write_text('redis_url = "redis://h:1/0"\nconnect_timeout = 5.0\nnamespace = "file"\n')
    monkeypatch.setenv("STORAGE_API_NAMESPACE", "env")
    s = _config.load(path, connect_timeout=7)
    assert (s.redis_url, s.namespace, s.connect_timeout) == ("redis://h:1/0", "env", 7.0)
    assert s.liveness_timeout == 2.0


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('redis_url = "redis://h:1/0"\nredis_ulr = "typo"\n')
    with pytest.raises(ConfigError, match="redis_ulr"):
        _config.load(path)


def test_unknown_environment_variable(monkeypatch):
    monkeypatch.setenv("STORAGE_API_TIMEOUT", "3")
    with pytest.raises(ConfigError, match="STORAGE_API_TIMEOUT"):
        _config.load()


def test_ill_typed_values(monkeypatch, tmp_path):
    monkeypatch.setenv("STORAGE_API_PORT", "eighty")
    with pytest.raises(ConfigError, match="port"):
        _config.load()
    monkeypatch.delenv("STORAGE_API_PORT")
    path = tmp_path / "s.toml"
    path.write_text("fsync = 3\n")
    with pytest.raises(ConfigError, match="fsync"):
        _config.load(path)
    with pytest.raises(ConfigError, match="positive"):
        _config.load(liveness_timeout=0)
    path.write_text("this is not toml")
    with pytest.raises(ConfigError, match="TOML"):
        _config.load(path)


def test_booleans_from_environment(monkeypatch):
    monkeypatch.setenv("STORAGE_API_FSYNC", "off")
    assert _config.load().fsync is False


def test_secret_sources(tmp_path):
    f = tmp_path / "secret"
    f.write_text("abc\n")
    assert _config.load(secret_file=str(f)).secret_bytes() == b"abc"
    assert _config.load(secret="xyz", secret_file=str(f)).secret_bytes() == b"xyz"
    with pytest.raises(ConfigError, match="secret"):
        _config.load().secret_bytes()
    with pytest.raises(ConfigError, match="cannot read"):
        _config.load(secret_file=str(tmp_path / "missing")).secret_bytes()


def test_missing_redis_is_a_clear_error():
    with pytest.raises(ConfigError, match="storage-api up"):
        _config.load().require_redis()


def test_default_file_written_by_up_is_found(tmp_path):
    path = _config.default_config_path()
    path.parent.mkdir(parents=True)
    path.write_text(_config.to_toml({"redis_url": "redis://x:9/0", "secret_file": "/s"}))
    assert _config.load().redis_url == "redis://x:9/0"


def test_describe_lists_every_field():
    text = _config.describe(_config.Settings(secret="hidden", redis_url="redis://:pw-hidden@db.example:6379/0"))
    for name in _config.FIELDS:
        assert name in text
    assert "hidden" not in text and "STORAGE_API_REDIS_URL" in text
    assert "redis://<password>@db.example:6379/0" in text  # where it is, not its password


def test_readme_documents_every_setting():
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    missing = [name for name in _config.FIELDS if f"`{name}`" not in readme]
    assert not missing, f"README.md does not document {missing}"


def test_files_named_in_a_settings_file_are_relative_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the file's folder
    folder = tmp_path / "device"
    folder.mkdir()
    (folder / "secret").write_text("s3cret\n")
    (folder / "client.toml").write_text('secret_file = "secret"\ntls_ca = "ca.pem"\n'
                                        f'tls_cert = "{tmp_path}/abs.pem"\nredis_url = "redis://h:1/0"\n')
    settings = _config.load(folder / "client.toml", use_default_file=False)
    assert settings.tls_ca == str(folder / "ca.pem") and settings.tls_cert == f"{tmp_path}/abs.pem"
    assert settings.secret_bytes() == b"s3cret"
    assert settings.redis_url == "redis://h:1/0"  # other values as written
