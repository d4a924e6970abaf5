"""The synthetic phantom: the embedded default dataset (numpy and scipy only).

Each case is a small anisotropic 3D volume (default 32x48x48 voxels of 2.5x1x1 mm,
out-of-plane axis first): a deformed ellipsoidal "body" in air holding a deformed
ellipsoidal **core** wrapped in a **rim** shell and, with three labels, a **vessel**
(part of a torus). Unlabelled *distractor* blobs copy the intensity of a labelled
structure, and every structure's intensity is drawn per case from one overlapping
range, so no intensity threshold separates the labels: a model must use shape and
context (a rim surrounds a core; a vessel is a tube; distractors are neither).

Realism: the scene is rendered on a finer grid and averaged down (partial volume at
every boundary), then smooth tissue texture, a multiplicative bias field, Gaussian
noise and a random intensity scale per case and channel are applied. Air is exactly 0
so cropping to the nonzero region has something to do. Everything comes from one
``numpy.random.Generator``: the same seed gives the same arrays, byte for byte.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from medmamba.data.io import Geometry, staged_directory, write_image
from medmamba.data.parallel import map_with_progress
from medmamba.errors import ConfigError

DEFAULT_SHAPE = (32, 48, 48)
DEFAULT_SPACING = (2.5, 1.0, 1.0)
LABEL_NAMES = ("background", "core", "rim", "vessel")
CHANNEL_NAMES = ("T1", "T2")
_AIR, _BODY, _CORE, _RIM, _VESSEL = 0, 1, 2, 3, 4  # classes of the fine grid; distractors follow
_FINE_SPACING_MM = 0.85  # the fine grid is at least this fine (at most 4x per axis)
_SLAB = 8  # fine slices evaluated at once


def phantom_case(rng: np.random.Generator, shape: tuple[int, int, int] = DEFAULT_SHAPE,
                 spacing: tuple[float, float, float] = DEFAULT_SPACING, channels: int = 1,
                 num_labels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One phantom case in memory.

    Returns ``image`` (channels, z, y, x) float32 and ``label`` (z, y, x) uint8 with
    values 0..num_labels (1 core, 2 rim, 3 vessel). ``spacing`` is in mm, array order.
    """
    shape, spacing = _check_arguments(shape, spacing, channels, num_labels)
    grid = _FineGrid(shape, spacing)
    classes = np.full(grid.fine_shape, _AIR, dtype=np.uint8)
    half = np.array(shape) * np.array(spacing) / 2  # half extent (mm) per axis

    # Wider than the volume in-plane (corners cut) and along z (slices cut): mostly body.
    body_radii = half * np.array([rng.uniform(1.3, 1.6), rng.uniform(1.0, 1.15), rng.uniform(1.0, 1.15)])
    grid.paint(classes, _BODY, _Ellipsoid(rng, np.zeros(3), body_radii, deform_mm=2.0, in_plane=True))
    inner = half * 0.6  # centres of structures stay well inside the volume

    kinds = [_CORE, _RIM] + ([_VESSEL] if num_labels == 3 else [])
    num_distractors = int(rng.integers(1, 4))
    distractor_kinds = [kinds[int(i)] for i in rng.integers(0, len(kinds), num_distractors)]
    for index in range(num_distractors):
        radii = rng.uniform(3.0, 6.0, 3) * np.array([1.3, 1.0, 1.0])
        grid.paint(classes, 5 + index, _Ellipsoid(rng, _point_in(rng, inner), radii, deform_mm=1.0))
    core_radii = rng.uniform(6.0, 10.0, 3) * np.array([1.4, 1.0, 1.0])
    rim_mm = rng.uniform(2.0, 4.0)
    core = _Ellipsoid(rng, _point_in(rng, inner * 0.8), core_radii, deform_mm=1.5)
    if num_labels == 3:
        grid.paint(classes, _VESSEL, _TorusArc(rng, _away_from(rng, inner, core.centre, core_radii.max())))
    grid.paint(classes, _RIM, core.grown(rim_mm))
    grid.paint(classes, _CORE, core)

    num_classes = 5 + num_distractors
    occupancy = grid.occupancy(classes, num_classes)  # (classes, z, y, x) fractions summing to 1
    label = _majority_label(occupancy, num_labels)

    bias = _bias_field(rng, shape)
    image = np.empty((channels, *shape), dtype=np.float32)
    for channel in range(channels):
        means = _structure_means(rng)  # core, rim, vessel relative to background 1.0
        intensity = np.zeros(num_classes)
        intensity[_BODY] = 1.0
        intensity[_CORE:_VESSEL + 1] = means
        for index, kind in enumerate(distractor_kinds):
            intensity[5 + index] = intensity[kind]
        mixed = np.tensordot(intensity, occupancy, axes=1)  # partial volume mixing
        texture = gaussian_filter(rng.standard_normal(shape), sigma=(1.0, 2.5, 2.5))
        texture *= rng.uniform(0.06, 0.12) / max(float(texture.std()), 1e-12)
        tissue = 1.0 - occupancy[_AIR]
        noise = rng.normal(0.0, rng.uniform(0.03, 0.08), shape) * tissue
        scale = 100.0 * rng.uniform(0.5, 2.0)
        image[channel] = (scale * (mixed * (1.0 + texture) * bias + noise)).astype(np.float32)
    return image, label


def _check_arguments(shape, spacing, channels, num_labels):
    shape = tuple(int(v) for v in shape)
    spacing = tuple(float(v) for v in spacing)
    if len(shape) != 3 or min(shape) < 8:
        raise ConfigError(f"phantom shape must be 3 sizes of at least 8 voxels, got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ConfigError(f"phantom spacing must be 3 positive numbers (mm), got {spacing}")
    if channels not in (1, 2):
        raise ConfigError(f"phantom channels must be 1 or 2, got {channels}")
    if num_labels not in (2, 3):
        raise ConfigError(f"phantom labels must be 2 or 3, got {num_labels}")
    return shape, spacing


def _point_in(rng: np.random.Generator, radii: np.ndarray) -> np.ndarray:
    """A uniform random point inside the axis-aligned ellipsoid ``radii`` about 0."""
    while True:
        point = rng.uniform(-1.0, 1.0, 3)
        if point @ point <= 1.0:
            return point * radii


def _away_from(rng: np.random.Generator, radii: np.ndarray, centre: np.ndarray, distance: float) -> np.ndarray:
    """A point as in ``_point_in`` at least ``distance`` from ``centre`` where one of 20
    tries allows (so the core and rim, painted over the vessel, rarely hide it)."""
    for _ in range(20):
        point = _point_in(rng, radii)
        if np.linalg.norm(point - centre) >= distance:
            break
    return point


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _rotation_about_z(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _structure_means(rng: np.random.Generator) -> np.ndarray:
    """Core, rim and vessel intensity: visible against the background (1.0) and each other
    where they touch, yet drawn from one range so their order changes from case to case."""
    while True:
        core, rim, vessel = rng.uniform(0.5, 1.5, 3)
        if min(abs(core - 1), abs(rim - 1), abs(vessel - 1), abs(core - rim)) >= 0.2:
            return np.array([core, rim, vessel])


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """exp(linear + quadratic) over the volume: a smooth +-20-30% gain, like a coil's."""
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    coords = (z, y, x)
    field = sum(rng.uniform(-0.2, 0.2) * c for c in coords)
    for i in range(3):
        for j in range(i, 3):
            field = field + rng.uniform(-0.1, 0.1) * coords[i] * coords[j]
    return np.exp(field)


def _majority_label(occupancy: np.ndarray, num_labels: int) -> np.ndarray:
    """Per voxel, the labelled structure covering most of it (else background)."""
    labelled = occupancy[_CORE:_CORE + num_labels]
    unlabelled = 1.0 - labelled.sum(axis=0)
    stacked = np.concatenate([unlabelled[None], labelled])
    return np.argmax(stacked, axis=0).astype(np.uint8)


@dataclass
class _Deformation:
    """A smooth random displacement field (sum of a few plane waves), defined everywhere."""

    directions: np.ndarray  # (modes, 3) unit displacement directions
    wave_vectors: np.ndarray  # (modes, 3) rad/mm
    phases: np.ndarray
    amplitudes: np.ndarray  # mm

    @classmethod
    def random(cls, rng: np.random.Generator, amplitude_mm: float, modes: int = 3) -> _Deformation:
        directions = rng.standard_normal((modes, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        waves = rng.standard_normal((modes, 3))
        waves /= np.linalg.norm(waves, axis=1, keepdims=True)
        waves *= (2 * np.pi / rng.uniform(12.0, 30.0, modes))[:, None]
        return cls(directions, waves, rng.uniform(0, 2 * np.pi, modes),
                   amplitude_mm * rng.uniform(0.5, 1.0, modes))

    def apply(self, p: list[np.ndarray]) -> list[np.ndarray]:
        """p + d(p) for sparse (broadcastable) float32 coordinate arrays; returns dense arrays."""
        shape = np.broadcast_shapes(*(a.shape for a in p))
        out = [np.broadcast_to(a, shape).astype(np.float32) for a in p]
        step = np.empty(shape, dtype=np.float32)
        for u, k, phase, amplitude in zip(self.directions, self.wave_vectors, self.phases, self.amplitudes):
            wave = (np.float32(k[0]) * p[0] + np.float32(k[1]) * p[1]) + np.float32(k[2]) * p[2]
            wave += np.float32(phase)
            np.sin(wave, out=wave)
            wave *= np.float32(amplitude)
            for a in range(3):
                np.multiply(wave, np.float32(u[a]), out=step)
                out[a] += step
        return out


class _Shape:
    """An implicit solid: ``inside(p)`` for fine-grid coordinates p = [z, y, x] in mm."""

    centre: np.ndarray
    bound: float  # radius (mm) of a ball about ``centre`` holding the solid
    rotation: np.ndarray  # world -> solid frame
    deformation: _Deformation

    def inside(self, p: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _local(self, p: list[np.ndarray]) -> list[np.ndarray]:
        """Coordinates in the solid's own frame: shifted, deformed, rotated (float32)."""
        moved = self.deformation.apply([p[a] - np.float32(self.centre[a]) for a in range(3)])
        r = self.rotation.astype(np.float32)
        local = []
        for i in range(3):
            q = moved[0] * r[i, 0]
            q += moved[1] * r[i, 1]
            q += moved[2] * r[i, 2]
            local.append(q)
        return local


class _Ellipsoid(_Shape):
    def __init__(self, rng: np.random.Generator, centre: np.ndarray, radii: np.ndarray,
                 deform_mm: float, in_plane: bool = False) -> None:
        """``in_plane``: rotate about the z axis only (keeps the long axis of a body along z)."""
        self.centre, self.radii, self.scale = centre, np.asarray(radii, dtype=float), 1.0
        self.rotation = _rotation_about_z(rng) if in_plane else _rotation(rng)
        self.deformation = _Deformation.random(rng, deform_mm)
        self.bound = float(self.radii.max()) + 3 * float(self.deformation.amplitudes.sum())

    def grown(self, margin_mm: float) -> _Ellipsoid:
        """The same ellipsoid enlarged by about ``margin_mm`` (the rim around a core)."""
        grown = copy.copy(self)
        grown.scale = self.scale + margin_mm / float(self.radii.mean())
        grown.bound = self.bound + margin_mm * float(self.radii.max() / self.radii.mean())
        return grown

    def inside(self, p: list[np.ndarray]) -> np.ndarray:
        q = self._local(p)
        rho = sum((q[i] / self.radii[i]) ** 2 for i in range(3))
        return rho < self.scale ** 2


class _TorusArc(_Shape):
    """A tube of radius ``minor`` along 180-360 degrees of a circle of radius ``major``."""

    def __init__(self, rng: np.random.Generator, centre: np.ndarray) -> None:
        self.centre = centre
        self.major, self.minor = rng.uniform(7.0, 12.0), rng.uniform(2.0, 3.5)
        self.start, self.arc = rng.uniform(0, 2 * np.pi), rng.uniform(np.pi, 2 * np.pi)
        self.rotation = _rotation(rng)
        self.deformation = _Deformation.random(rng, 1.0)
        self.bound = self.major + self.minor + 3 * float(self.deformation.amplitudes.sum())

    def inside(self, p: list[np.ndarray]) -> np.ndarray:
        q = self._local(p)
        ring = np.sqrt(q[0] ** 2 + q[1] ** 2) - self.major
        angle = np.mod(np.arctan2(q[1], q[0]) - self.start, 2 * np.pi)
        return (ring ** 2 + q[2] ** 2 < self.minor ** 2) & (angle < self.arc)


class _FineGrid:
    """The supersampled grid the scene is painted on; ``occupancy`` averages it down."""

    def __init__(self, shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
        self.shape = shape
        self.factors = tuple(int(np.clip(np.ceil(s / _FINE_SPACING_MM), 1, 4)) for s in spacing)
        self.fine_shape = tuple(n * f for n, f in zip(shape, self.factors))
        # Fine sample j of voxel i sits at (i + (j + 0.5) / f - 0.5) voxels; mm about the centre.
        self.axes = [(((np.arange(n * f) + 0.5) / f - 0.5 - (n - 1) / 2) * s).astype(np.float32)
                     for n, f, s in zip(shape, self.factors, spacing)]

    def paint(self, classes: np.ndarray, value: int, solid: _Shape) -> None:
        """Set ``classes`` to ``value`` inside ``solid`` (only its bounding box is evaluated)."""
        box = []
        for axis, centre in zip(self.axes, solid.centre):
            low, high = np.searchsorted(axis, [centre - solid.bound, centre + solid.bound])
            if low >= high:
                return
            box.append(slice(int(low), int(high)))
        # Slabs of a few fine slices keep the temporaries in cache (3x faster than whole boxes).
        z_axis, y_axis, x_axis = (axis[s] for axis, s in zip(self.axes, box))
        y, x = y_axis[None, :, None], x_axis[None, None, :]
        for start in range(0, len(z_axis), _SLAB):
            z = z_axis[start:start + _SLAB, None, None]
            region = classes[box[0].start + start:box[0].start + start + len(z), box[1], box[2]]
            region[solid.inside([z, y, x])] = value

    def occupancy(self, classes: np.ndarray, num_classes: int) -> np.ndarray:
        """Fraction of each coarse voxel covered by each class: (num_classes, z, y, x)."""
        (nz, ny, nx), (fz, fy, fx) = self.shape, self.factors
        # Bring each voxel's fine samples together, then count classes per voxel at once.
        blocks = classes.reshape(nz, fz, ny, fy, nx, fx).transpose(0, 2, 4, 1, 3, 5)
        per_voxel = blocks.reshape(nz * ny * nx, fz * fy * fx).astype(np.intp)
        keys = per_voxel + (np.arange(nz * ny * nx) * num_classes)[:, None]
        counts = np.bincount(keys.ravel(), minlength=nz * ny * nx * num_classes)
        fractions = counts.reshape(nz, ny, nx, num_classes) / (fz * fy * fx)
        return np.moveaxis(fractions, -1, 0)


@dataclass(frozen=True)
class _CaseJob:
    folder: Path
    case_id: str
    seed: np.random.SeedSequence
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    channels: int
    num_labels: int


def write_phantom_dataset(out: Path, cases: int = 20, seed: int = 0, channels: int = 1,
                          shape: tuple[int, int, int] = DEFAULT_SHAPE,
                          spacing: tuple[float, float, float] = DEFAULT_SPACING, num_labels: int = 3,
                          workers: int | None = None, progress: bool = False) -> Path:
    """Write ``cases`` phantom cases as a new nnU-Net v2 raw dataset at ``out``.

    Case i depends only on (seed, i, shape, spacing, channels, labels), not on ``cases``.
    """
    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
        raise ConfigError(f"phantom cases must be a positive integer, got {cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"phantom seed must be a non-negative integer, got {seed!r}")
    shape, spacing = _check_arguments(shape, spacing, channels, num_labels)
    out = Path(out)
    seeds = np.random.SeedSequence(seed).spawn(cases)
    with staged_directory(out) as stage:
        jobs = [_CaseJob(stage, f"phantom_{i:03d}", seeds[i], shape, spacing, channels, num_labels)
                for i in range(cases)]
        map_with_progress(_write_case, jobs, workers, "phantom", progress)
        dataset = {
            "name": "Phantom",
            "description": "Synthetic phantom generated by medmamba make-phantom "
                           f"(seed {seed}, shape {list(shape)}, spacing {list(spacing)} mm)",
            "licence": "CC0 (synthetic)",
            "channel_names": {str(c): CHANNEL_NAMES[c] for c in range(channels)},
            "labels": {name: value for value, name in enumerate(LABEL_NAMES[:num_labels + 1])},
            "numTraining": cases,
            "file_ending": ".nii.gz",
        }
        (stage / "dataset.json").write_text(json.dumps(dataset, indent=4) + "\n")
    return out


def _write_case(job: _CaseJob) -> None:
    rng = np.random.default_rng(job.seed)
    image, label = phantom_case(rng, job.shape, job.spacing, job.channels, job.num_labels)
    # Scanners place volumes anywhere: vary the origin (x, y, z order), keep the direction.
    origin = tuple(float(v) for v in np.round(rng.uniform(-40.0, 40.0, 3), 2))
    geometry = Geometry(spacing=job.spacing, origin=origin,
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), shape=job.shape)
    for channel in range(job.channels):
        write_image(image[channel], geometry, job.folder / "imagesTr" / f"{job.case_id}_{channel:04d}.nii.gz")
    write_image(label, geometry, job.folder / "labelsTr" / f"{job.case_id}.nii.gz")
