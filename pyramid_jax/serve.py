"""The studio: watch a video being generated in the browser, steer it, see the cache.

  python -m pyramid_jax.serve --config=configs/demo.py [--port 8000] [--host 127.0.0.1] [--config.F=V ...]

Loads the config's models once, then serves http://HOST:PORT/ (127.0.0.1 unless told
otherwise). `/?prompt=...&seed=...&policy=...` starts generating when the page loads, so a
link shares a generation. The work is `pyramid_jax.studio`.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys

import uvicorn

from pyramid_jax import compile_cache, logs, pipeline, video
from pyramid_jax.config import parse_config
from pyramid_jax.errors import UserError, os_reason
from pyramid_jax.studio.app import create_app

log = logging.getLogger("pyramid_jax")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="pyramid_jax.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    args, rest = p.parse_known_args(argv[1:])
    return args, parse_config([argv[0], *rest])


def load_models(c):
    """The config's models, checked for what the studio needs (prompts in, frames out)."""
    pipeline.check_config(c)
    if c.prompt_embeds or c.replay or c.text_encoder.kind == "none":
        raise UserError("the studio generates from typed prompts: set text_encoder (umt5 or placeholder) "
                        "and unset prompt_embeds and replay")
    models = pipeline.load(c)
    if video.video_decoder(c, 1, pipeline.latent_size(c, models.dit.cfg), models.vae) is None:
        raise UserError("the studio shows decoded frames: set vae.checkpoint (or vae.random, or a pixel model)")
    return models


def check_port(host: str, port: int) -> None:
    """The address can be listened on (checked before the models load)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    logs.setup()
    compile_cache.enable()
    try:
        args, c = parse_args(argv)
        if not 0 < args.port < 65536:
            raise UserError(f"--port must be 1-65535, got {args.port}")
        check_port(args.host, args.port)
        models = load_models(c)
    except UserError as e:
        print(f"serve: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"serve: error: {os_reason(e)}", file=sys.stderr)
        return 2
    log.info("studio on http://%s:%d/ (Ctrl-C stops it)", args.host, args.port)
    config = uvicorn.Config(create_app(c, models), host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit:  # uvicorn could not bind after all (taken since the check)
        return 2
    return 0 if server.started else 2


if __name__ == "__main__":
    sys.exit(main())
