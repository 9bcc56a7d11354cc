"""The studio: watch a video being generated in the browser, steer it, see the cache.

  python -m pyramid_jax.serve --config=configs/demo.py [--port 8000] [--host 127.0.0.1] [--config.F=V ...]
  pyramid-serve --config=configs/demo.py [...]

Loads the config's models once, then serves http://HOST:PORT/ (127.0.0.1 unless told
otherwise). `/?prompt=...&seed=...&policy=...` starts generating when the page loads, so a
link shares a generation. One video at a time: mesh.model splits its heads over devices
(mesh.data must be 0 or 1). The work is `pyramid_jax.studio`.
"""

from __future__ import annotations

import logging
import socket
import sys

import uvicorn

from pyramid_jax import pipeline, video
from pyramid_jax.cli import harness
from pyramid_jax.errors import UserError
from pyramid_jax.studio.app import create_app

NAME = "serve"
log = logging.getLogger("pyramid_jax")


def parse_args(argv):
    """(host/port flags, the run spec) of the arguments after the program name."""
    p = harness.parser(NAME, __doc__)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    args, rest = p.parse_known_args(argv)
    return args, harness.run_spec(NAME, rest)


def load_models(spec):
    """The config's models, checked for what the studio needs (prompts in, frames out)."""
    pipeline.check_config(spec)
    if spec.inputs.prompt_embeds or spec.inputs.replay or spec.text.kind == "none":
        raise UserError("the studio generates from typed prompts: set text_encoder (umt5 or placeholder) "
                        "and unset prompt_embeds and replay")
    models = pipeline.load_models(spec)
    if video.video_decoder(spec, 1, pipeline.latent_size(spec, models.dit.cfg), models.vae) is None:
        raise UserError("the studio shows decoded frames: set vae.checkpoint (or vae.random, or a pixel model)")
    return models


def check_port(host: str, port: int) -> None:
    """The address can be listened on (checked before the models load)."""
    if not 0 < port < 65536:
        raise UserError(f"--port must be 1-65535, got {port}")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def body(argv: list[str]) -> int:
    args, spec = parse_args(argv)
    check_port(args.host, args.port)
    models = load_models(spec)
    mesh = harness.mesh(spec, 1, models.dit.cfg)
    log.info("studio on http://%s:%d/ (Ctrl-C stops it)%s", args.host, args.port,
             f"; mesh {dict(mesh.shape)}" if mesh is not None else "")
    server = uvicorn.Server(uvicorn.Config(create_app(spec, models, mesh), host=args.host, port=args.port,
                                           log_level="warning"))
    try:
        server.run()
    except SystemExit:  # uvicorn could not bind after all (taken since the check)
        return harness.BAD_INPUT
    return harness.OK if server.started else harness.BAD_INPUT


def main(argv=None) -> int:
    """argv: the arguments after the program name (sys.argv[1:] when None)."""
    return harness.run(NAME, body, argv)


if __name__ == "__main__":
    sys.exit(main())
