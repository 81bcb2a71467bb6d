"""``facegate console serve``: the store, the MQTT subscriber and the web app, together."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from device.console.auth import Lockout
from device.console.config import ConsoleConfig
from device.console.ingest import Subscriber, Subscriptions
from device.console.store import SQLITE_PREFIX, Store, open_store
from device.console.web import WebSettings, build_app
from device.errors import ConfigError
from device.events.config import read_secret
from device.storage import PRIVATE_FILE_MODE

logger = logging.getLogger(__name__)


def check_exposure(config: ConsoleConfig, behind_proxy: bool) -> None:
    """Refuse to listen off loopback without TLS, unless a TLS proxy is in front.

    Raises:
        ConfigError: Off loopback with neither TLS files nor ``behind_proxy``.
    """
    web = config.web
    if (web.tls_cert is None) != (web.tls_key is None):
        raise ConfigError("[web] tls_cert and tls_key go together")
    if not web.loopback and web.tls_cert is None and not behind_proxy:
        raise ConfigError(
            f"refusing to serve on {web.host} without TLS: set [web] tls_cert and tls_key, "
            "or pass --behind-proxy when a TLS-terminating proxy is in front")


def session_secret(config: ConsoleConfig) -> str:
    """The cookie-signing secret: read from its file, made (0600) when missing.

    Raises:
        ConfigError: The file is unreadable or cannot be created.
    """
    path = config.web.session_secret_file
    if path is None:
        url = config.store.url
        base = (Path(url[len(SQLITE_PREFIX):]).parent if url.startswith(SQLITE_PREFIX)
                else Path.cwd())
        path = base / "console-session.secret"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48) + "\n")
    except FileExistsError:
        pass  # another replica made it first
    except OSError as exc:
        raise ConfigError(f"session secret {path}: {exc}") from exc
    text = read_secret(str(path), "session secret").strip()
    if len(text) < 32:
        raise ConfigError(f"session secret {path} is shorter than 32 characters")
    return text


def web_settings(config: ConsoleConfig, secret: str) -> WebSettings:
    web = config.web
    return WebSettings(session_secret=secret, https_only=web.tls_cert is not None,
                       session_max_age_s=web.session_max_age_s,
                       lockout=Lockout(web.lockout_attempts, web.lockout_s),
                       health_stale_s=web.health_stale_s, audit_stale_s=web.audit_stale_s)


def start_subscriber(store: Store, config: ConsoleConfig) -> Subscriber:
    broker = config.broker
    subscriber = Subscriber(store, broker.login(), broker.client_id,
                            subscriptions=Subscriptions(broker.shared_group))
    subscriber.start(broker.keepalive, broker.session_expiry_s)
    return subscriber


def serve(config: ConsoleConfig, *, behind_proxy: bool = False) -> None:
    """Run the console until interrupted.

    Raises:
        ConfigError: The configuration is unusable (exposure, store, broker, secret).
    """
    import uvicorn

    check_exposure(config, behind_proxy)
    secret = session_secret(config)
    store = open_store(config.store.url)
    subscriber = start_subscriber(store, config)
    app = build_app(store, web_settings(config, secret), subscriber)
    web = config.web
    logger.info("console: serving on %s://%s:%d (store %s, broker %s)",
                "https" if web.tls_cert else "http", web.host, web.port,
                config.store.url.split("@")[-1], config.broker.url)
    try:
        uvicorn.run(app, host=web.host, port=web.port, log_level="warning",
                    access_log=False, proxy_headers=behind_proxy,
                    ssl_certfile=str(web.tls_cert) if web.tls_cert else None,
                    ssl_keyfile=str(web.tls_key) if web.tls_key else None)
    finally:
        subscriber.stop()
        store.close()
