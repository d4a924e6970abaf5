"""Reading and writing images with their geometry.

Arrays are in numpy axis order (z, y, x) as SimpleITK returns them; ``Geometry.spacing``
is in the same array order, while ``origin`` and ``direction`` keep SimpleITK's
(x, y, z) convention so that a written mask carries the input's geometry exactly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from medmamba.errors import DatasetError

#: File endings SimpleITK reads and writes that we accept in a raw dataset.
SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """Where an image's voxels lie in physical space."""

    spacing: tuple[float, ...]  # array axis order (z, y, x)
    origin: tuple[float, ...]  # SimpleITK order (x, y, z)
    direction: tuple[float, ...]  # SimpleITK row-major direction cosines
    shape: tuple[int, ...]  # array axis order (z, y, x)

    def to_dict(self) -> dict:
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "shape": list(self.shape),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        return cls(
            spacing=tuple(float(v) for v in data["spacing"]),
            origin=tuple(float(v) for v in data["origin"]),
            direction=tuple(float(v) for v in data["direction"]),
            shape=tuple(int(v) for v in data["shape"]),
        )


def file_ending(path: Path) -> str:
    """The supported ending of ``path`` ('.nii.gz' counts as one ending)."""
    name = path.name.lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    raise DatasetError(
        f"unsupported file type; expected one of {', '.join(SUPPORTED_ENDINGS)}", path
    )


def _sitk():
    import SimpleITK as sitk

    return sitk


def read_sitk(path: Path):
    """The SimpleITK image in ``path``; DatasetError naming the file when it cannot be read."""
    try:
        return _sitk().ReadImage(str(path))
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        raise DatasetError(f"cannot read image ({lines[-1].strip() if lines else ''})", path) from None


def read_image(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read one 3D (or 2D) single-channel image in its stored dtype."""
    sitk = _sitk()
    image = read_sitk(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(
            f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "expected one channel per file (convert 4D/vector images with convert-msd)",
            path,
        )
    array = sitk.GetArrayFromImage(image)
    geometry = Geometry(
        spacing=tuple(float(v) for v in reversed(image.GetSpacing())),
        origin=tuple(float(v) for v in image.GetOrigin()),
        direction=tuple(float(v) for v in image.GetDirection()),
        shape=tuple(int(v) for v in array.shape),
    )
    return array, geometry


_SITK_DTYPES = {
    "sitkUInt8": np.uint8, "sitkInt8": np.int8, "sitkUInt16": np.uint16, "sitkInt16": np.int16,
    "sitkUInt32": np.uint32, "sitkInt32": np.int32, "sitkUInt64": np.uint64, "sitkInt64": np.int64,
    "sitkFloat32": np.float32, "sitkFloat64": np.float64,
}


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, without reading its voxels."""

    geometry: Geometry
    dtype: np.dtype | None  # None for pixel types numpy has no plain dtype for (complex, vector)
    components: int


def read_header(path: Path) -> ImageHeader:
    """Geometry, voxel type and components per voxel of an image, from its header only."""
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise DatasetError(f"cannot read image header ({first_line.strip()})", path) from None
    names = {getattr(sitk, name): dtype for name, dtype in _SITK_DTYPES.items()}
    dtype = names.get(reader.GetPixelID())
    geometry = Geometry(
        spacing=tuple(float(v) for v in reversed(reader.GetSpacing())),
        origin=tuple(float(v) for v in reader.GetOrigin()),
        direction=tuple(float(v) for v in reader.GetDirection()),
        shape=tuple(int(v) for v in reversed(reader.GetSize())),
    )
    return ImageHeader(geometry, np.dtype(dtype) if dtype is not None else None,
                       int(reader.GetNumberOfComponents()))


def read_channels(paths: list[Path] | tuple[Path, ...]) -> tuple[np.ndarray, Geometry]:
    """Read a case's channel files into one float32 array (C, z, y, x).

    The geometry is the first channel's; channels must have the same shape.
    """
    arrays = []
    geometry = None
    for path in paths:
        array, this_geometry = read_image(path)
        if geometry is None:
            geometry = this_geometry
        elif array.shape != geometry.shape:
            raise DatasetError(
                f"shape {array.shape} differs from channel 0 {geometry.shape}", path
            )
        arrays.append(array.astype(np.float32, copy=False))
    if geometry is None:
        raise DatasetError("case has no image channels")
    return np.stack(arrays), geometry


def temporary_sibling(path: Path) -> Path:
    """A unique name next to ``path`` keeping its ending (writers choose by ending)."""
    try:
        ending = file_ending(path)
    except DatasetError:
        ending = path.suffix
    stem = path.name[: len(path.name) - len(ending)] if ending else path.name
    return path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.tmp{ending}")


def write_image(array: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write ``array`` with ``geometry`` atomically (temporary name, then rename)."""
    sitk = _sitk()
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(geometry.spacing)))
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        sitk.WriteImage(image, str(temporary), useCompression=True)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary sibling, fsync it, then rename it onto ``path``.

    A reader (or a resume after SIGKILL) sees the old file or the new one, never a
    half-written one; a leftover ``.tmp`` file from a killed writer is never read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                                  dir=path.parent)
    temporary = Path(temporary_name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    # Makes the rename itself durable; not every platform/filesystem allows it.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_link(source: Path, path: Path) -> bool:
    """Make ``path`` a hard link to ``source``, replacing it atomically (a temporary link
    renamed into place). False, with ``path`` untouched, where hard links are refused."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.link.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        return False
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return True


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write bytes to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(payload))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def staged_directory(path: Path) -> Iterator[Path]:
    """Build a new folder under a hidden temporary sibling name, renamed to ``path`` at the end.

    ``path`` must not exist (an empty folder is replaced). If the block raises, the
    temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DatasetError("already exists and is not empty; choose a new folder", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    stage.mkdir()
    try:
        yield stage
        if path.exists():
            path.rmdir()
        os.replace(stage, path)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
