"""``edge-run``: the daemon's command line.

    edge-run --config /etc/edge-anomaly/config.toml
    edge-run --config edge.toml --set mqtt.port=1884 --set cameras.0...   (see --help)
    edge-run --config edge.toml --check-config      # verify all a start would: the verdict, one line a check
    edge-run --config edge.toml --check-config --verbose   # ... and the effective config as JSON (***)
    edge-run --config edge.toml --max-frames 100    # demo / tests: stop after 100 scored frames
    edge-run --config edge.toml --keep-running      # stay up after every video file has ended
    edge-run --config edge.toml --save-overlays overlays   # JPEGs of the anomalous frames, mask and verdict
    edge-run install-bundle BUNDLE --config edge.toml [--name RECIPE]   # verify, copy into model.store
    edge-run install-bundle --rollback RECIPE --config edge.toml   # back to the version it replaced
    edge-run --init-config edge.toml --bundle bundles/line1 --source 0   # a first config, with comments

SIGHUP (``systemctl reload``) re-reads the config and the bundle store and switches the cameras whose
recipe changed, without a restart (see edge/service/changeover.py).

Exit codes: 0 clean stop (including SIGTERM/SIGINT and every video file played to its end) with every
result delivered; 2 invalid configuration (nothing was started); 3 the daemon could not start (bundle,
backend, camera set-up); 4 it stopped, but results never reached the broker (dropped while it was
unreachable or not acknowledging, or still unacknowledged at the stop; the log names the broker and why, and
its last line says ``stopped with exit status 4``); 1 unexpected error.
``--check-config`` exits 2 for an invalid configuration and 3 when any check a start implies fails (bundle
hashes, signature and numbers, password and TLS files, camera sources, each camera opened briefly unless
``--no-camera-open``); it prints its verdict, then one ``ok``/``FAILED`` line per check on stderr, and with
``--verbose`` the effective config as JSON on stdout. ``--init-config PATH`` writes a small commented config
(local broker, one camera or video file) and exits 0, or 2 when PATH exists.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from edge.util.redact import redact

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 3
EXIT_UNDELIVERED = 4  # the same value as edge.service.daemon.EXIT_UNDELIVERED (a test holds them together)

log = logging.getLogger("edge.cli")
INIT_ONLY = {
    "--bundle": "bundle",
    "--source": "source",
    "--trusted-key": "trusted_key",
    "--host": "host",
    "--port": "port",
    "--ca-file": "ca_file",
    "--cert-file": "cert_file",
    "--key-file": "key_file",
}

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> Dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS and not k.startswith("_")}


class KeyValueFormatter(logging.Formatter):
    """``ts=… level=… logger=… msg="…"`` plus any ``extra=`` fields: greppable in journald.

    Every line goes through :func:`edge.util.redact.redact`, so a camera URL's password never reaches the
    journal
    whichever module logged it (the JSON formatter does the same)."""

    def format(self, record: logging.LogRecord) -> str:
        fields: Dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update(_extras(record))
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return redact(" ".join(f"{k}={_kv(v)}" for k, v in fields.items()))


def _kv(value: Any) -> str:
    text = str(value)
    if text and not any(ch in text for ch in ' "=\n\t'):
        return text
    return json.dumps(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        doc: Dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(
            {
                k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                for k, v in _extras(record).items()
            }
        )
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(doc))


_handler: Optional[logging.Handler] = None


def configure_logging(level: str, fmt: str) -> None:
    """One stderr handler (journald collects it) with the chosen format; replaces only the one it added."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root.addHandler(_handler)
    root.setLevel(level)
    logging.getLogger("edge.mqtt.paho").setLevel(max(logging.INFO, logging.getLevelName(level)))
    from edge.capture.opencv_log import set_opencv_log_level

    set_opencv_log_level(level)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-run",
        description="Score camera frames with an edge-anomaly bundle and publish results over MQTT.",
        epilog="Precedence: --set > environment (EDGE_..., nested with __, e.g. EDGE_MQTT__PORT=1884) > "
        "--config file > defaults. Exit codes: 0 ok, 1 other error, 2 bad config, 3 cannot start (or a check "
        "failed), 4 results not delivered to the broker; docs/troubleshooting.md has the common errors and "
        "fixes.",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="TOML config file (--init-config writes a first one; every key: deploy/config.example.toml)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, dotted path (mqtt.port=1884, model.precision=int8); a list or table as "
        'JSON (cameras=\'[{"name":"a","source":"0"}]\'). Repeatable.',
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        help="verify everything a start would (bundle hashes, signature and numbers; password and TLS files; "
        "each camera opened briefly), print the verdict and one ok/FAILED line per check (--verbose: and the "
        "effective config as JSON), exit (0 all ok, 2 bad config, 3 a check failed)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="with --check-config: also print the effective config as JSON (secrets ***) after the checks",
    )
    p.add_argument(
        "--no-camera-open",
        action="store_true",
        help="with --check-config: only parse the camera sources, do not open them (e.g. while the running "
        "service holds the cameras)",
    )
    p.add_argument(
        "--init-config",
        type=Path,
        metavar="PATH",
        help="write a small commented config for a broker on this machine and one camera to PATH, and exit "
        "(never overwrites); with --bundle, --source and --trusted-key",
    )
    p.add_argument(
        "--bundle", type=Path, help="with --init-config: the bundle edge-export wrote (default: bundle)"
    )
    p.add_argument(
        "--trusted-key",
        type=Path,
        help="with --init-config: the .pub file (edge-keygen) whose signature the bundle must carry",
    )
    p.add_argument(
        "--source",
        help="with --init-config: the camera (device index, video file, rtsp:// URL; "
        "default 0 = /dev/video0)",
    )
    p.add_argument(
        "--host", help="with --init-config: the MQTT broker's host name or address (default localhost)"
    )
    p.add_argument(
        "--port", type=_tcp_port, help="with --init-config: the broker's port (default 1883, 8883 with TLS)"
    )
    p.add_argument(
        "--ca-file", type=Path, help="with --init-config: TLS: the CA certificate (PEM) of the broker"
    )
    p.add_argument(
        "--cert-file", type=Path, help="with --init-config: TLS: a client certificate (mutual TLS)"
    )
    p.add_argument("--key-file", type=Path, help="with --init-config: TLS: the private key of --cert-file")
    p.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="shortcut for --set log_level="
    )
    p.add_argument("--log-format", choices=["text", "json"], help="shortcut for --set log_format=")
    p.add_argument("--max-frames", type=_positive_int, help="stop cleanly after this many scored frames")
    p.add_argument("--duration", type=_positive_float, help="stop cleanly after this many seconds")
    p.add_argument(
        "--save-overlays",
        type=Path,
        metavar="DIR",
        help="save the anomalous frames (mask, score, threshold and verdict drawn) as JPEGs into DIR",
    )
    p.add_argument(
        "--overlay-every",
        type=int,
        default=0,
        metavar="N",
        help="with --save-overlays: also save every N-th frame of each camera, ok or not (default: only "
        "anomalous)",
    )
    p.add_argument(
        "--overlay-limit",
        type=_positive_int,
        default=200,
        metavar="M",
        help="with --save-overlays: save at most M images (default 200)",
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="keep running after every camera's video file has ended (by default edge-run then exits 0; "
        "live cameras and loop = true files never end)",
    )
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _tcp_port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1 to 65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _overrides(args: argparse.Namespace) -> List[str]:
    items = list(args.overrides)
    if args.log_level:
        items.append(f"log_level={args.log_level}")
    if args.log_format:
        items.append(f"log_format={args.log_format}")
    return items


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["install-bundle"]:
        return install_main(argv[1:])
    p = parser()
    args = p.parse_args(argv)
    if args.init_config is not None:
        bundle = args.bundle if args.bundle is not None else Path("bundle")
        return _init_config(args.init_config, bundle, args.source or "0", args.trusted_key, _broker(args))
    given = [flag for flag, value in INIT_ONLY.items() if getattr(args, value) is not None]
    if given:
        p.error(f"{', '.join(given)} only go with --init-config PATH (a running daemon reads --config)")
    from edge.config import ConfigError, load_config

    try:
        config = load_config(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"edge-run: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_level, config.log_format)
    from edge.service.checks import secret_warnings

    for warning in secret_warnings(config, args.config, _overrides(args)):
        log.warning("%s", warning)
    if args.check_config:
        return _check(config, open_cameras=not args.no_camera_open, verbose=args.verbose)
    return _run(
        config,
        args.max_frames,
        args.duration,
        lambda: load_config(args.config, _overrides(args)),
        until_ended=not args.keep_running,
        overlays=_overlays(args),
    )


def _overlays(args: argparse.Namespace) -> Any:
    if args.save_overlays is None:
        return None
    from edge.results.overlays import OverlaySaver

    return OverlaySaver(args.save_overlays, max(0, args.overlay_every), args.overlay_limit)


def _broker(args: argparse.Namespace) -> Any:
    from edge.service.init_config import Broker

    files = {"ca_file": args.ca_file, "cert_file": args.cert_file, "key_file": args.key_file}
    return Broker(host=args.host or "localhost", port=args.port, **files)


def _init_config(
    path: Path, bundle: Path, source: str, trusted_key: Optional[Path], broker: Any = None
) -> int:
    from edge.service.init_config import Broker, InitConfigError, write_initial_config

    broker = broker or Broker()
    try:
        write_initial_config(path, bundle, source, trusted_key=trusted_key, broker=broker)
    except InitConfigError as exc:
        print(f"edge-run: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    where = f"{broker.host}:{broker.effective_port}" + (" with TLS" if broker.tls else "")
    print(f"edge-run: wrote {path} (broker {where}, bundle {bundle}, camera {redact(source)})")
    if not (bundle / "manifest.json").is_file():
        print(f"edge-run: note: {bundle} holds no bundle yet; edge-export --out {bundle} writes one")
    print(f"edge-run: next: edge-run --config {path} --check-config, then edge-run --config {path}")
    return EXIT_OK


def _check(config: Any, open_cameras: bool = True, verbose: bool = False) -> int:
    """The verdict first, then one line per check; the effective config (JSON, stdout) only with --verbose."""
    from edge.service.checks import run_checks
    from edge.util.redact import redact

    checks = run_checks(config, open_cameras=open_cameras)
    failed = [c.name for c in checks if not c.ok]
    if failed:
        print(redact(f"edge-run: {len(failed)} check(s) FAILED: {', '.join(failed)}"), file=sys.stderr)
    else:
        print(f"edge-run: all {len(checks)} checks ok", file=sys.stderr)
    for check in checks:
        print(check.line(), file=sys.stderr)
    if verbose:
        sys.stderr.flush()  # the verdict stays above the JSON in a terminal
        print(json.dumps(config.masked_dict(), indent=2))
    return EXIT_STARTUP if failed else EXIT_OK


def _run(
    config: Any,
    max_frames: Optional[int],
    duration: Optional[float],
    reloader: Any = None,
    until_ended: bool = False,
    overlays: Any = None,
) -> int:
    from edge.config import ConfigError
    from edge.service.daemon import StartupError, build

    try:
        daemon = build(config, overlays=overlays)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except StartupError as exc:
        log.error("%s", exc)
        return EXIT_STARTUP
    if daemon.changeover is not None:
        daemon.changeover.reloader = reloader
    previous = _install_signal_handlers(daemon)
    try:
        return daemon.run_until_stopped(max_frames=max_frames, duration_s=duration, until_ended=until_ended)
    except Exception:
        log.exception("the daemon failed")
        return EXIT_ERROR
    finally:
        _restore_signal_handlers(previous)


def _install_signal_handlers(daemon: Any) -> Dict[int, Any]:
    def handler(signum: int, frame: Any) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        daemon.stop()

    def reload(signum: int, frame: Any) -> None:
        daemon.reload()  # only sets a flag: the changeover thread re-reads config and store

    previous: Dict[int, Any] = {}
    for sig, action in ((signal.SIGTERM, handler), (signal.SIGINT, handler), (signal.SIGHUP, reload)):
        try:
            previous[sig] = signal.signal(sig, action)
        except ValueError:  # not the main thread (embedded use): the caller stops the daemon itself
            break
    return previous


def _restore_signal_handlers(previous: Dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)


def install_main(argv: List[str]) -> int:
    """``edge-run install-bundle BUNDLE --config FILE [--name RECIPE]`` (or ``--rollback RECIPE``)."""
    p = argparse.ArgumentParser(
        prog="edge-run install-bundle",
        description="Verify a bundle (hashes, signature with the config's trusted keys, numbers) and install "
        "it "
        "into model.store as a recipe; a running daemon switches to it on systemctl reload (SIGHUP) when a "
        "camera runs that recipe, or on <camera>/model/set. --rollback RECIPE puts back the version the last "
        "install replaced (verified the same way); the two swap places, so a second --rollback undoes it.",
    )
    p.add_argument("bundle", type=Path, nargs="?")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", help="recipe name (default: the bundle's folder name)")
    p.add_argument("--rollback", metavar="RECIPE", help="reinstall the version of RECIPE that was replaced")
    p.add_argument(
        "--verify-only",
        action="store_true",
        help="verify BUNDLE exactly as a start would with this config, change nothing (install.sh runs this "
        "before it replaces the installed bundle)",
    )
    args = p.parse_args(argv)
    if (args.bundle is None) == (args.rollback is None):
        p.error("give a BUNDLE to install, or --rollback RECIPE (not both)")
    if args.verify_only and args.bundle is None:
        p.error("--verify-only needs a BUNDLE")
    from edge.config import ConfigError, load_config
    from edge.service.checks import verified_manifest
    from edge.stores.recipes import RecipeError, install_bundle, rollback_bundle
    from edge.trust.manifest import BundleError

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"edge-run: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_level, config.log_format)

    def verify(path: Path) -> Any:
        return verified_manifest(config.model.model_copy(update={"bundle": path}))

    try:
        if args.verify_only:
            manifest = verify(args.bundle)
            print(f"verified {args.bundle}: {manifest.model_id()}, signed by {manifest.signer or 'nobody'}")
            return EXIT_OK
        if args.rollback is not None:
            target = rollback_bundle(config, args.rollback, verify)
        else:
            target = install_bundle(args.bundle, config, args.name, verify)
    except (RecipeError, BundleError, OSError) as exc:
        print(f"edge-run install-bundle: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    done = "rolled back" if args.rollback is not None else "installed"
    print(f"{done} {target}; apply with: systemctl reload edge-anomaly (or <camera>/model/set {target.name})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
