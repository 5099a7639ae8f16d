"""`aekit serve MODEL`: the upload page and HTTP API (FastAPI + uvicorn), contributed to the aekit CLI.

    aekit serve models/fmnist-r4 --port 8000 [--learn] [--calibration data/fmnist/test]
Heavy imports (fastapi, uvicorn, onnxruntime, torch) happen only when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal

from aekit.serve.config import MB, ServeConfig


def register(sub: argparse._SubParsersAction) -> None:
    from aekit.export.manifest import model_arg
    d = ServeConfig()
    p = sub.add_parser("serve", help="serve an upload page and HTTP API (compress, reconstruct, screen, learn)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Serve MODEL over HTTP: page at /, API under /v1, OpenAPI at /openapi.json.")
    p.add_argument("model", type=model_arg,
                   help="exported model folder (manifest.json + encoder/decoder ONNX) or shipped model's name")
    p.add_argument("--host", default=d.host, help="address to listen on (loopback by default)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--learn", action="store_true",
                   help="train on the images the operator posts to /v1/learn (marked normal; never on other "
                        "uploads) and swap in new versions")
    p.add_argument("--learn-token", help="require this token in the X-Learn-Token header of /v1/learn")
    p.add_argument("--checkpoint", help="PyTorch checkpoint for --learn (default: the one the manifest names)")
    p.add_argument("--keep-uploads", metavar="DIR", help="keep accepted uploads in DIR (default: none kept)")
    p.add_argument("--workdir", help="the server's own folder (default: a fresh temp folder, removed at exit)")
    p.add_argument("--calibration", metavar="DIR",
                   help="normal images (class subfolders or flat) to calibrate the model and each learned version")
    p.add_argument("--calibration-limit", type=int, default=d.calibration_limit, help="images per class")
    p.add_argument("--alpha", type=float, default=d.alpha, help="screening false-positive rate (default: calibrated)")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / MB, help="largest request body")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="largest image (width x height)")
    p.add_argument("--timeout", type=float, default=d.request_timeout_s, help="seconds before a request answers 503")
    p.add_argument("--max-concurrent", type=int, default=d.max_concurrent,
                   help="heavy requests computing at once (memory grows with this)")
    p.add_argument("--max-waiting", type=int, default=d.max_waiting, help="requests queued for a slot; more: 503")
    p.add_argument("--tile-above", type=int, default=d.tile_above_pixels,
                   help="images above this many pixels are coded in 512 x 512 tiles (bounded memory per request)")
    p.add_argument("--queue-size", type=int, default=d.queue_size, help="training queue (full: uploads dropped)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per training step")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of online updates")
    p.add_argument("--swap-every", type=float, default=d.swap_every_s, help="seconds between new versions")
    p.add_argument("--swap-min-steps", type=int, default=d.swap_min_steps, help="training steps per new version")
    p.add_argument("--keep-versions", type=int, default=d.keep_versions, help="learned versions kept for decompress")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this origin (repeatable; default: CORS off)")
    p.add_argument("--device", default=d.device, choices=("auto", "cuda", "cpu"))
    p.add_argument("--threads", type=int, default=d.threads, help="onnxruntime threads per session")
    p.set_defaults(func=cmd_serve)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        model=args.model, host=args.host, port=args.port, workdir=args.workdir,
        max_upload_bytes=int(args.max_upload_mb * MB), max_pixels=args.max_pixels, request_timeout_s=args.timeout,
        device=args.device, threads=args.threads, alpha=args.alpha, calibration=args.calibration,
        calibration_limit=args.calibration_limit, cors_origins=args.cors_origin, keep_uploads=args.keep_uploads,
        learn=args.learn, learn_token=args.learn_token, max_concurrent=args.max_concurrent,
        max_waiting=args.max_waiting, tile_above_pixels=args.tile_above, checkpoint=args.checkpoint, queue_size=args.queue_size, batch_size=args.batch_size,
        lr=args.lr, swap_every_s=args.swap_every, swap_min_steps=args.swap_min_steps,
        keep_versions=args.keep_versions,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as e:
        raise ValueError(f"aekit serve needs the serve extra ({e}); pip install -e \".[serve]\"") from None
    from aekit.serve.app import create_app

    cfg = config_from_args(args)
    _check_port(cfg.host, cfg.port)  # before the model loads: one line, exit 2 (uvicorn would exit 3 later)
    server_cls = _server_class()
    app = create_app(cfg)
    log = logging.getLogger(__name__)  # diagnostics on stderr (aekit -q hides them); stdout carries no results here
    log.info("aekit serve: model %s at http://%s:%s/ (learning %s)", app.state.server.store.current.model_id,
             cfg.host, cfg.port, "on" if cfg.learn else "off")
    server = server_cls(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_keep_alive=5))
    server.run()
    log.info("aekit serve: stopped")
    return 0


def _check_port(host: str, port: int) -> None:
    """ValueError (exit 2) when host:port cannot be listened on (in use, or not an address of this machine)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"--host {host}: not an address to listen on ({e.strerror or e})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            sock.bind(addr)
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None


def _server_class():
    import uvicorn

    class QuietServer(uvicorn.Server):
        """uvicorn.Server whose Ctrl-C/SIGTERM ends the run gracefully (no re-raised signal, no traceback)."""

        @contextlib.contextmanager
        def capture_signals(self):
            def stop(*_: object) -> None:
                self.should_exit = True

            old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    return QuietServer
