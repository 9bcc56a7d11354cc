"""Chunk-by-chunk autoregressive rollout (the schedule and chunk loop of Self Forcing).

Per chunk: for each denoising step i, x0 = model(x, t_i); unless last, x = add_noise(x0,
fresh N(0, 1), t_{i+1}) (with `renoise_eta` < 1, partly the noise the model's x0 implies).
The last x0 is the output; one more model pass on x0 at t = context_noise writes the chunk
into the cache: each layer first lets the policy stage its keys (`policy.stage`) and attends
what the policy then plans, and the policy commits the rest after the pass (`policy.commit`).

Classifier-free guidance (`Sampler.guidance_scale` > 1) runs the conditional and the
unconditional model as one batch of 2B: the text K/V hold the prompts' rows then B rows of
the empty context (`text_kv_of(..., sampler)`), the cache holds 2B rows, and every pass sees
the same frames twice; the denoising steps combine the two flows as u + g (c - u), and the
cache-writing pass writes the guided x0 into both halves, each under its own text. So each
branch attends what it would have computed itself from the frames actually made, and the
unconditional branch never sees the prompt.

`chunk_step` is that whole chunk, written once. `step` jits it as one function of (params,
cache, text K/V, noise, re-noise, chunk index) with the model's graph, the policy and the
sampler static and the cache donated: the chunk index is traced and every shape is static,
so a rollout of any length compiles once. `ChunkLoop` is the one host loop, a chunk at a
time (one device or a mesh: arrays placed by their declared layouts, the compiler partitions
the step); it can start from given frames (`prefill`, upstream's initial_latent path), change
the text between chunks and re-write the cache of the frames made so far under a new text
(`recache`, LongLive's prompt switch). `rollout` runs it to the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from pyramid_jax import sharding
from pyramid_jax.attention.plan import PagePlan
from pyramid_jax.cache import trace as trace_lib
from pyramid_jax.cache.pool import CacheState
from pyramid_jax.models.wan.modeling import Committed, Staging
from pyramid_jax.sampling.schedule import FlowSchedule

TEXT_KV_AXES = P(None, "batch", "heads")  # [L, B, H, Lt, Dh]


@dataclasses.dataclass(frozen=True)
class Sampler:
    """How one chunk is denoised. timesteps: the (warped) denoising timesteps."""

    timesteps: tuple[float, ...] = (1000.0, 937.5, 833.3333, 625.0)
    context_noise: float = 0.0
    frames_per_chunk: int = 3
    schedule: FlowSchedule = FlowSchedule()
    guidance_scale: float = 1.0  # classifier-free guidance; 1 = the conditional model alone
    # share of fresh noise in each re-noise: 1 = Self Forcing's sampler (all fresh), 0 = the
    # deterministic DDIM step (the noise the model's own x0 implies); between, mixed so the
    # noise keeps unit variance
    renoise_eta: float = 1.0

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def guided(self) -> bool:
        """Whether the model runs as a conditional + unconditional pair (batch 2B)."""
        return self.guidance_scale != 1.0

    def model_batch(self, batch: int) -> int:
        """Rows the model and the cache hold for `batch` videos."""
        return 2 * batch if self.guided else batch


def flow_of(model, sampler: Sampler, x, t, text_kv, pool, plan):
    """The (guided) flow [B, F, C, h, w] float32 of x [B, F, C, h, w] at timesteps t [B, F]."""
    if not sampler.guided:
        return model(x, t, text_kv, Committed(pool, plan)).flow.astype(jnp.float32)
    both = model(jnp.concatenate([x, x]), jnp.concatenate([t, t]), text_kv, Committed(pool, plan)).flow.astype(
        jnp.float32)
    cond, uncond = jnp.split(both, 2)
    return uncond + sampler.guidance_scale * (cond - uncond)


def chunk_step(model, policy, sampler: Sampler, cache, text_kv, noise, renoise, chunk, *,
               probe_frame: int | None = None):
    """One chunk: plan, denoise against the committed cache, the cache-writing pass, commit.

    cache: the policy's CacheState; text_kv: (k, v) [L, B, H, Lt, Dh]; noise: [B, F, C, h, w];
    renoise: [n_steps - 1, B, F, C, h, w] in draw order; chunk: int32 scalar (may be traced).
    probe_frame: also return that frame's queries from the cache-writing pass ([L, B, T, H, Dh],
    head calibration).
    Returns (x0 [B, F, C, h, w], new cache) and the probe if asked.
    """
    plan = policy.plan(cache, chunk)
    x0 = denoise(model, sampler, text_kv, cache.pool(), plan, noise, renoise)
    out = write_pass(model, policy, sampler, cache, text_kv, x0, chunk, plan, probe_frame=probe_frame)
    return (x0,) + out


def write_pass(model, policy, sampler: Sampler, cache, text_kv, x0, chunk, plan, *, probe_frame=None,
               record: bool = False):
    """The cache-writing pass of a chunk's x0 [B, F, C, h, w] at t = context_noise, then the
    commit. plan: the chunk's plan over `cache`. Returns (new cache,), then the probe if asked,
    then, with `record`, what the pass attended (`PassRecord`: each layer's plan and the
    stores it read)."""
    def stage(carry, layer, k, v, q):
        state, seen = carry
        state, pool, lp = policy.stage(state, plan, layer, k, v, chunk, q)
        if seen is not None:  # every layer's plan, in the noisy plan's shapes
            seen = seen._replace(slot=seen.slot.at[layer].set(jnp.broadcast_to(lp.slot, seen.slot.shape[1:])),
                                 valid=seen.valid.at[layer].set(jnp.broadcast_to(lp.valid, seen.valid.shape[1:])),
                                 time_shift=seen.time_shift.at[layer].set(
                                     0 if lp.time_shift is None else jnp.broadcast_to(lp.time_shift,
                                                                                      seen.time_shift.shape[1:])))
        return (state, seen), pool, lp

    seen = record_plan(plan) if record else None
    staging = Staging((cache, seen), stage, plan.frame0)
    if sampler.guided:  # both branches write the frames made
        x0 = jnp.concatenate([x0, x0])
    out = model(x0, clean_t(sampler, x0), text_kv, staging, probe_frame=probe_frame)
    staged, seen = out.state
    new_cache = policy.commit(staged, out.chunk_kv, chunk)
    new_cache = sharding.constrain(new_cache, new_cache.logical_axes())
    return ((new_cache,) + (() if probe_frame is None else (out.probe,))
            + ((PassRecord(seen, trace_lib.SlotTables.of(staged)),) if record else ()))


class PassRecord(NamedTuple):
    """What a pass attended: its plan (fields [L, C, H, P], time_shift zeros when no entry
    moves) and the slot tables of the cache it read (which frame each page holds)."""

    plan: PagePlan
    state: "trace_lib.SlotTables"


def record_plan(plan: PagePlan) -> PagePlan:
    """A plan with every field materialised (time_shift zeros when None; the slot shape)."""
    shift = jnp.zeros(plan.slot.shape, jnp.int32) if plan.time_shift is None else jnp.broadcast_to(
        plan.time_shift, plan.slot.shape)
    return PagePlan(plan.frame0, plan.slot, shift, jnp.broadcast_to(plan.valid, plan.slot.shape))


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "sampler"), donate_argnames=("cache",))
def step(graphdef, policy, sampler: Sampler, params, cache, text_kv, noise, renoise, chunk):
    """`chunk_step` of the model (graphdef, params), jitted; the cache is updated in place.
    Returns (x0, cache)."""
    return chunk_step(nnx.merge(graphdef, params), policy, sampler, cache, text_kv, noise, renoise, chunk)


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "sampler"))
def probed_step(graphdef, policy, sampler: Sampler, params, cache, text_kv, noise, renoise, chunk):
    """`step` that also returns the queries of the chunk's last frame from its cache-writing
    pass ([L, B, T, H, Dh], online head typing); the cache is not donated (the caller profiles
    against it). Returns (x0, new cache, probe)."""
    return chunk_step(nnx.merge(graphdef, params), policy, sampler, cache, text_kv, noise, renoise, chunk,
                      probe_frame=sampler.frames_per_chunk - 1)


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "sampler"), donate_argnames=("cache",))
def traced_step(graphdef, policy, sampler: Sampler, params, cache, text_kv, noise, renoise, chunk):
    """`step` that also returns what it attended: (x0, cache, noisy PassRecord, clean
    PassRecord) (`--config.trace_cache`; the records hold slot tables, not pages)."""
    model = nnx.merge(graphdef, params)
    plan = policy.plan(cache, chunk)
    x0 = denoise(model, sampler, text_kv, cache.pool(), plan, noise, renoise)
    noisy = PassRecord(record_plan(plan), trace_lib.SlotTables.of(cache))
    new_cache, clean = write_pass(model, policy, sampler, cache, text_kv, x0, chunk, plan, record=True)
    return x0, new_cache, noisy, clean


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "sampler"), donate_argnames=("cache",))
def write_step(graphdef, policy, sampler: Sampler, params, cache, text_kv, x0, chunk):
    """`write_pass` of a chunk already made (x0 [B, F, C, h, w]), jitted. Returns the cache."""
    model = nnx.merge(graphdef, params)
    x0 = x0.astype(model.cfg.jnp_dtype)
    return write_pass(model, policy, sampler, cache, text_kv, x0, chunk, policy.plan(cache, chunk))[0]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _text_kv(graphdef, params, context):
    return nnx.merge(graphdef, params).text_kv(context)


def text_kv_of(model, context, mesh=None, sampler: Sampler | None = None):
    """The per-layer text K/V of encoded prompts [B, Lt, text_dim], once per prompt (on the
    mesh when given). With a guided sampler, B rows of the empty context (all zero: every row
    padding, as the captions dropped in training) follow: the unconditional branch."""
    if sampler is not None and sampler.guided:
        context = np.concatenate([np.asarray(context), np.zeros(np.shape(context), np.float32)])
    graphdef, params = nnx.split(model)
    with on_mesh(mesh):
        if mesh is not None:
            params = sharding.put(params, mesh, nnx.get_partition_spec(params))
            context = sharding.put(jnp.asarray(context), mesh, P("batch"))
        return _text_kv(graphdef, params, jnp.asarray(context))


def on_mesh(mesh):
    """The context the step runs in: `jax.set_mesh(mesh)`, or nothing for one device."""
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def clean_t(sampler: Sampler, x):
    """Per-frame timesteps [B, F] of the clean (cache-writing) pass."""
    return jnp.full(x.shape[:2], sampler.context_noise, jnp.float32)


def denoise(model, sampler: Sampler, text_kv, pool, plan, noise, renoise):
    """The denoising steps of one chunk against fixed cache pages. Returns the last x0.

    noise: [B, F, C, h, w]; renoise: [n_steps - 1, B, F, C, h, w] in draw order.
    """
    sched = sampler.schedule
    ts = np.asarray(sampler.timesteps, np.float32)
    b, f = noise.shape[:2]
    full = lambda v: jnp.full((b, f), v, jnp.float32)
    # the last step's re-noise is never used: pad so every step has the same shape
    eps = jnp.concatenate([renoise, jnp.zeros_like(noise)[None]], axis=0)
    t_next = np.concatenate([ts[1:], ts[-1:]])

    def one_step(x, xs):
        t_i, t_n, e = xs
        flow = flow_of(model, sampler, x, full(t_i), text_kv, pool, plan)
        x0 = sched.flow_to_x0(x, flow, full(t_i))
        if sampler.renoise_eta != 1.0:  # static: eta 1 is upstream's step, bit for bit
            implied = x0.astype(jnp.float32) + flow.astype(jnp.float32)  # flow = noise - x0
            eta = sampler.renoise_eta
            e = (eta * e.astype(jnp.float32) + float(np.sqrt(1.0 - eta * eta)) * implied).astype(e.dtype)
        return sched.add_noise(x0, e, full(t_n)), x0

    dtype = model.cfg.jnp_dtype
    _, x0s = jax.lax.scan(one_step, noise.astype(dtype), (jnp.asarray(ts), jnp.asarray(t_next), eps.astype(dtype)))
    return x0s[-1]


class RandomNoise:
    """Noise from jax.random, one seed per sample: sample i of chunk k draws from
    fold_in(key(seeds[i]), k), so a video depends only on its seed, not on its batch."""

    def __init__(self, seeds, shape: tuple[int, ...], sampler: Sampler):
        b, _, c, h, w = shape
        if isinstance(seeds, int):
            seeds = [seeds + i for i in range(b)]
        if len(seeds) != b:
            raise ValueError(f"{len(seeds)} seeds for a batch of {b}")
        self.seeds = jnp.asarray(np.asarray(seeds, np.uint32))
        self.chw, self.f, self.n = (c, h, w), sampler.frames_per_chunk, sampler.num_steps

    def chunk(self, k: int):
        return _draw(self.seeds, jnp.int32(k), chw=self.chw, f=self.f, n=self.n)


@functools.partial(jax.jit, static_argnames=("chw", "f", "n"))
def _draw(seeds, k, *, chw, f, n):
    """noise [B, f, *chw] and renoise [n - 1, B, f, *chw] of chunk k, per-sample seeds."""
    def draw_one(seed):
        k0, k1 = jax.random.split(jax.random.fold_in(jax.random.key(seed), k))
        return (jax.random.normal(k0, (f, *chw), jnp.float32),
                jax.random.normal(k1, (n - 1, f, *chw), jnp.float32))

    noise, renoise = jax.vmap(draw_one)(seeds)
    return noise, jnp.moveaxis(renoise, 0, 1)


class ReplayNoise:
    """Noise from a replay file: noise [B, F, C, h, w], renoise [N, B, F_chunk, C, h, w]."""

    def __init__(self, noise: np.ndarray, renoise: np.ndarray, sampler: Sampler):
        f, n = sampler.frames_per_chunk, sampler.num_steps
        chunks = noise.shape[1] // f
        want = (chunks * (n - 1),) + noise.shape[:1] + (f,) + noise.shape[2:]
        if noise.shape[1] % f:
            raise ValueError(f"replay noise has {noise.shape[1]} frames, not a multiple of the chunk ({f})")
        if tuple(renoise.shape) != want:
            raise ValueError(f"replay renoise has shape {list(renoise.shape)}, expected {list(want)} "
                             f"({chunks} chunks x {n - 1} re-noise draws)")
        self.noise, self.renoise, self.f, self.n = noise, renoise, f, n

    def chunk(self, k: int):
        f, r = self.f, self.n - 1
        return (jnp.asarray(self.noise[:, k * f:(k + 1) * f], jnp.float32),
                jnp.asarray(self.renoise[k * r:(k + 1) * r], jnp.float32))


@dataclasses.dataclass(frozen=True)
class Rollout:
    """What `rollout` returns; it unpacks as (latents, noise, renoise, cache).

    latents: [B, F, C, h, w] float32 (the given frames first, when it continued some); noise
    [B, F_made, C, h, w] and renoise [N, B, F_chunk, C, h, w] as drawn (with record_noise, else
    None); cache: the state after the last chunk (with keep_cache, else None); trace: every
    cache entry each pass attended (with trace, rows as cache.trace.COLUMNS, else None).
    """

    latents: np.ndarray
    noise: np.ndarray | None = None
    renoise: np.ndarray | None = None
    cache: CacheState | None = None
    trace: np.ndarray | None = None

    def __iter__(self):
        return iter((self.latents, self.noise, self.renoise, self.cache))


class ChunkLoop:
    """A rollout on the host, one chunk at a time; params, cache and text K/V stay on the
    device(s). text_kv: (k, v) [L, B, H, Lt, Dh]; noise_source: RandomNoise or ReplayNoise;
    mesh: `sharding.make_mesh` or None (one device)."""

    def __init__(self, model, policy, sampler: Sampler, text_kv, noise_source, mesh=None, trace: bool = False):
        self.graphdef, params = nnx.split(model)
        self.trace = [] if trace else None  # rows of cache.trace per chunk made
        self.policy, self.sampler, self.noise_source, self.mesh = policy, sampler, noise_source, mesh
        self.base_policy = policy  # the policy a re-written cache starts from (before any re-layout)
        self.batch = noise_source.chunk(0)[0].shape[0]
        self.dtype = model.cfg.jnp_dtype
        with on_mesh(mesh):
            self.params = params if mesh is None else sharding.put(params, mesh, nnx.get_partition_spec(params))
        self.cache = self._empty_cache()
        self.set_text(text_kv)
        self.chunk = 0  # the next chunk to make
        self.given = 0  # chunks of given frames (prefill) before the first one made

    @property
    def head_groups(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape[sharding.MODEL]

    def _empty_cache(self) -> CacheState:
        return self._placed(self.policy.init(self.sampler.model_batch(self.batch), self.dtype,
                                             head_groups=self.head_groups))

    def _placed(self, cache: CacheState) -> CacheState:
        if self.mesh is None:  # committed, as every later cache is: the step compiles once, not twice
            return jax.device_put(cache, next(iter(jax.tree.leaves(self.params)[0].devices())))
        with on_mesh(self.mesh):
            return sharding.put(cache, self.mesh, cache.logical_axes())

    def _after(self, chunk: int) -> None:
        """A policy that changes its layout after a chunk (Dummy Forcing after typing: its
        `relayout_at`, `relayout`) does so now; one host read, one more step shape."""
        if getattr(self.policy, "relayout_at", None) == chunk:
            with on_mesh(self.mesh):
                self.policy, cache = self.policy.relayout(self.cache, self.head_groups)
            self.cache = self._placed(cache)

    def set_text(self, text_kv) -> None:
        """The text K/V the chunks from the next one on attend."""
        with on_mesh(self.mesh):
            self.text_kv = text_kv if self.mesh is None else sharding.put(
                text_kv, self.mesh, (TEXT_KV_AXES, TEXT_KV_AXES))

    def next(self):
        """Make the next chunk. Returns (x0 [B, F, C, h, w] float32 numpy, noise, renoise)."""
        x0, noise, renoise = self.next_on_device()
        return np.asarray(x0, np.float32), noise, renoise

    def next_on_device(self):
        """`next` without waiting: x0 stays a device array (the step is dispatched, so the host
        can queue the decode of this chunk and the next step before anything finishes)."""
        k = self.chunk
        noise, renoise = self.noise_source.chunk(k - self.given)
        with on_mesh(self.mesh):
            if self.mesh is not None:
                noise, renoise = sharding.put((noise, renoise), self.mesh, (P("batch"), P(None, "batch")))
            args = (self.graphdef, self.policy, self.sampler, self.params, self.cache, self.text_kv, noise, renoise,
                    jnp.int32(k))
            if self.trace is None:
                x0, self.cache = step(*args)
            else:
                x0, self.cache, noisy, clean = traced_step(*args)
                self.trace.append(trace_lib.chunk_rows(self.policy, k, noisy, clean, self.sampler.num_steps,
                                                       self.batch))
        self._after(k)
        self.chunk += 1
        return x0, noise, renoise

    def next_probed(self):
        """`next`, also returning the last frame's queries and the cache the chunk read:
        (x0 [B, F, C, h, w] numpy, noise, renoise, probe [L, B, T, H, Dh], cache before the chunk)."""
        k = self.chunk
        noise, renoise = self.noise_source.chunk(k - self.given)
        before = self.cache
        with on_mesh(self.mesh):
            if self.mesh is not None:
                noise, renoise = sharding.put((noise, renoise), self.mesh, (P("batch"), P(None, "batch")))
            x0, self.cache, probe = probed_step(self.graphdef, self.policy, self.sampler, self.params, self.cache,
                                                self.text_kv, noise, renoise, jnp.int32(k))
        self._after(k)
        self.chunk += 1
        return np.asarray(x0, np.float32), noise, renoise, probe, before

    def switch_policy(self, policy, latents) -> None:
        """Go on under another policy: its cache re-written from the chunks made so far
        (latents [B, F_done, C, h, w]), as `recache` does."""
        self.base_policy = policy
        self.recache(latents)

    def prefill(self, latents) -> None:
        """Start from given frames (latents [B, F0, C, h, w], F0 a multiple of the chunk): each
        chunk's cache-writing pass at t = 0, in order, as upstream's initial_latent path runs
        them; generation then continues after them, its noise drawn from chunk 0 on."""
        f = self.sampler.frames_per_chunk
        if latents.shape[1] % f:
            raise ValueError(f"{latents.shape[1]} given frames are not a whole number of chunks of {f}")
        at_zero = dataclasses.replace(self.sampler, context_noise=0.0)
        self.cache = self._write(at_zero, latents, self.cache, first_chunk=self.chunk)
        self.chunk += latents.shape[1] // f
        self.given = self.chunk

    def _write(self, sampler, latents, cache, first_chunk: int = 0):
        """The cache-writing pass of each chunk of latents, from chunk first_chunk on."""
        f = sampler.frames_per_chunk
        with on_mesh(self.mesh):
            for k in range(latents.shape[1] // f):
                x0 = jnp.asarray(latents[:, k * f:(k + 1) * f])
                if self.mesh is not None:
                    x0 = sharding.put(x0, self.mesh, P("batch"))
                self.cache = write_step(self.graphdef, self.policy, sampler, self.params, cache, self.text_kv, x0,
                                        jnp.int32(first_chunk + k))
                self._after(first_chunk + k)
                cache = self.cache
        return cache

    def recache(self, latents) -> None:
        """Re-write the cache from the chunks made so far (latents [B, F_done, C, h, w], their
        x0s) under the current text: each chunk's cache-writing pass again, from an empty
        cache, so what every policy keeps is what it would hold had the video been made with
        this text's cache passes (LongLive's re-cache at a prompt switch)."""
        self.policy = self.base_policy
        self.cache = self._write(self.sampler, latents[:, :self.chunk * self.sampler.frames_per_chunk],
                                 self._empty_cache())


def rollout(model, policy, sampler: Sampler, text_kv, noise_source, num_chunks: int, *,
            on_chunk: Callable | None = None, record_noise: bool = False, keep_cache: bool = False,
            mesh=None, initial=None, trace: bool = False, typing=None) -> Rollout:
    """Generate num_chunks chunks; on a mesh (`sharding.make_mesh`) when given.

    text_kv: (k, v) [L, B, H, Lt, Dh], or a function chunk -> (k, v) (a prompt schedule: it is
    asked before every chunk made, and a new value is used from that chunk on).
    on_chunk(k, x0_numpy, seconds) is called after each chunk made (progress, streaming).
    initial: given frames to continue (latents [B, F0, C, h, w], whole chunks), written into
    the cache first (`ChunkLoop.prefill`); the returned latents start with them.
    trace: record every cache entry each pass attends (Rollout.trace; cache.trace).
    typing: types heads online (heads.online.OnlineTyping): `policy` runs until chunk
    typing.chunk, whose probe types the heads; typing(probe, cache) is the policy from then on,
    its cache re-written from the chunks made so far.
    """
    text_at = text_kv if callable(text_kv) else (lambda k: text_kv)
    current = text_at(0)
    loop = ChunkLoop(model, policy, sampler, current, noise_source, mesh, trace=trace)
    outs, noises, renoises = [], [], []
    if initial is not None:
        loop.prefill(initial)
        outs.append(np.asarray(initial, np.float32))
    for k in range(num_chunks):
        t0 = time.perf_counter()
        if k and text_at(k) is not current:
            current = text_at(k)
            loop.set_text(current)
        if typing is not None and loop.chunk == typing.chunk:
            x0, noise, renoise, probe, before = loop.next_probed()
            outs.append(x0)
            loop.switch_policy(typing(probe, before, loop.batch), np.concatenate(outs, axis=1))
        else:
            x0, noise, renoise = loop.next()
            outs.append(x0)
        if record_noise:
            noises.append(np.asarray(noise))
            renoises.append(np.asarray(renoise))
        if on_chunk is not None:
            on_chunk(k, x0, time.perf_counter() - t0)
    latents = np.concatenate(outs, axis=1)
    cache = loop.cache if keep_cache else None
    rows = None if loop.trace is None else np.concatenate(loop.trace)
    if record_noise:
        return Rollout(latents, np.concatenate(noises, axis=1), np.concatenate(renoises, axis=0), cache, rows)
    return Rollout(latents, cache=cache, trace=rows)
