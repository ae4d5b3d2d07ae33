"""Reading and writing clips: a video file (through PyAV, which bundles FFmpeg), a GIF, or a folder of frames.

Every reader checks what a file declares (frame size, frame count) against a cap before it
decodes anything, and the frames it keeps against :data:`MAX_CLIP_BYTES`. Writers write beside
the output and rename the finished file into place, so the named output is only ever replaced
by a whole clip. PyAV is in the optional extra ``video``; GIFs and folders need only Pillow.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from nst_jax.image import fit_long_side
from nst_jax.io import MAX_IMAGE_PIXELS, load_image

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# The frames a run holds, as float32 at the working size: 4 GiB is 1900 frames of 512 x 288.
MAX_CLIP_BYTES = 4 * 2**30
MAX_FRAMES = 100_000
MAX_FPS = 1000.0
KIND = "video"  # the marker of a folder of frames nst-jax wrote (nst_jax.files.MARKER)
# The encoders tried for each container, best first (PyAV's wheels bundle libx264 and libvpx).
ENCODERS = {".mp4": ("libx264", "mpeg4"), ".mov": ("libx264", "mpeg4"), ".mkv": ("libx264", "libvpx-vp9"),
            ".webm": ("libvpx-vp9", "libvpx"), ".avi": ("mpeg4",)}  # fmt: skip


class ClipInfo(NamedTuple):
    """What a clip declares, read from its header (nothing decoded)."""

    frames: int  # frame count (for a video file, the container's count or an estimate from its duration)
    shape: tuple[int, int]  # (height, width)
    fps: float
    audio: bool  # it has an audio stream


class Clip(NamedTuple):
    frames: np.ndarray  # [T, h, w, 3] float32 in [0, 1], at the working size
    fps: float
    audio: bool


def _av(what: str):
    try:
        import av
    except ImportError:
        raise ImportError(
            f"`{what}`: video files need PyAV: pip install 'nst-jax[video]' (or use a GIF or a folder of frames)"
        ) from None
    return av


def _frame_files(folder: Path) -> list[Path]:
    """The numbered image files of ``folder``, in the order of the last number in their names."""

    def number(path: Path) -> tuple[int, str]:
        digits = re.findall(r"\d+", path.stem)
        return (int(digits[-1]) if digits else -1, path.name)

    files = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=number)


def clip_info(path: str | os.PathLike, what: str = "input") -> ClipInfo:
    """A clip's frame count, size, frame rate and audio, from headers alone; refuses what is not a readable clip."""
    from nst_jax.io import image_shape

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"`{what}`: {str(path)!r} does not exist")
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise ValueError(f"`{what}`: {str(path)!r} holds no frames ({', '.join(FRAME_SUFFIXES)} files)")
        if len(files) > MAX_FRAMES:
            raise ValueError(f"`{what}`: {str(path)!r} holds {len(files)} frames; nst-jax reads at most {MAX_FRAMES}")
        shape = image_shape(files[0], what)
        return ClipInfo(len(files), shape, 25.0, False)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as gif:
                    w, h = gif.size
                    count = getattr(gif, "n_frames", 1)
                    duration = gif.info.get("duration") or 100
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"`{what}`: {str(path)!r} is not a readable GIF ({e})") from None
        _check_frame(path, what, h, w, count)
        return ClipInfo(count, (h, w), min(MAX_FPS, 1000.0 / max(1, duration)), False)
    if suffix not in VIDEO_SUFFIXES:
        valid = ", ".join((*VIDEO_SUFFIXES, ".gif"))
        raise ValueError(f"`{what}`: {str(path)!r} is not a clip nst-jax reads ({valid}, or a folder of frames)")
    av = _av(what)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"`{what}`: {str(path)!r} has no video stream")
            stream = container.streams.video[0]
            h, w = stream.codec_context.height, stream.codec_context.width
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            count = stream.frames
            if not count and stream.duration and stream.time_base:
                count = int(float(stream.duration * stream.time_base) * rate + 0.5)
            if not count and container.duration:
                count = int(container.duration / 1e6 * rate + 0.5)
            audio = bool(container.streams.audio)
    except av.error.FFmpegError as e:
        raise ValueError(f"`{what}`: {str(path)!r} is not a readable video ({e})") from None
    _check_frame(path, what, h, w, max(1, count))
    if not (0 < rate <= MAX_FPS):
        raise ValueError(f"`{what}`: {str(path)!r} declares {rate:g} frames per second; expected 0 to {MAX_FPS:g}")
    return ClipInfo(max(1, count), (h, w), rate, audio)


def _check_frame(path: Path, what: str, h: int, w: int, count: int) -> None:
    if h < 1 or w < 1 or h * w > MAX_IMAGE_PIXELS:
        raise ValueError(f"`{what}`: {str(path)!r} declares {w} x {h} frames; nst-jax reads frames of 1 to "
                         f"{MAX_IMAGE_PIXELS // 10**6} megapixels")  # fmt: skip
    if count > MAX_FRAMES:
        raise ValueError(f"`{what}`: {str(path)!r} declares {count} frames; nst-jax reads at most {MAX_FRAMES}")


def check_span(count: int, shape: tuple[int, int], size: int, start: int, end: int | None, what: str) -> range:
    """Frames ``start..end`` (end excluded; None: to the last) of a clip of ``count``, checked against the cap."""
    if start < 0 or (end is not None and end <= start):
        raise ValueError(f"`--start`/`--end`: {start}..{end} is not a frame range (start >= 0, end > start)")
    if start >= count:
        raise ValueError(f"`--start` {start}: `{what}` has {count} frames")
    span = range(start, count if end is None else min(end, count))
    h, w = fit_long_side(shape, size)
    needed = len(span) * h * w * 3 * 4
    if needed > MAX_CLIP_BYTES:
        fits = MAX_CLIP_BYTES // (h * w * 3 * 4)
        raise ValueError(
            f"`{what}`: {len(span)} frames at {w}x{h} take {needed / 2**30:.1f} GiB; nst-jax holds at most "
            f"{MAX_CLIP_BYTES / 2**30:.0f} GiB of frames ({fits} frames at this size): use --start/--end or --size"
        )
    return span


def _resized(image: Image.Image, size: int) -> np.ndarray:
    image = image.convert("RGB")
    h, w = fit_long_side((image.height, image.width), size)
    if (h, w) != (image.height, image.width):
        image = image.resize((w, h), Image.Resampling.LANCZOS)
    return np.asarray(image, np.float32) / 255.0


def read_clip(path: str | os.PathLike, size: int, start: int = 0, end: int | None = None, what: str = "input") -> Clip:
    """The frames ``start..end`` of a clip, each resized so its long side is ``size``."""
    path = Path(path)
    info = clip_info(path, what)
    span = check_span(info.frames, info.shape, size, start, end, what)
    frames: list[np.ndarray] = []
    if path.is_dir():
        files = _frame_files(path)
        for f in files[span.start : span.stop]:
            frames.append(load_image(f, size, what=f"{what} frame {f.name}"))
        shapes = {fr.shape for fr in frames}
        if len(shapes) > 1:
            raise ValueError(f"`{what}`: the frames in {str(path)!r} differ in size: {sorted(shapes)[:2]}")
    elif path.suffix.lower() == ".gif":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as gif:
                    for index in span:
                        gif.seek(index)
                        frames.append(_resized(gif, size))
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ValueError(f"`{what}`: {str(path)!r} is not a readable GIF ({e})") from None
    else:
        av = _av(what)
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                for index, frame in enumerate(container.decode(stream)):
                    if index >= span.stop or index >= MAX_FRAMES:
                        break
                    if index >= span.start:
                        if frame.width * frame.height > MAX_IMAGE_PIXELS:
                            raise ValueError(f"`{what}`: frame {index} of {str(path)!r} is {frame.width} x "
                                             f"{frame.height}, more than the header said")  # fmt: skip
                        frames.append(_resized(frame.to_image(), size))
        except av.error.FFmpegError as e:
            raise ValueError(f"`{what}`: {str(path)!r} is not a readable video ({e})") from None
        shapes = {fr.shape for fr in frames}
        if len(shapes) > 1:
            raise ValueError(f"`{what}`: the frames of {str(path)!r} change size: {sorted(shapes)[:2]}")
    if not frames:
        raise ValueError(f"`{what}`: no frames could be read from {str(path)!r} in {span.start}..{span.stop}")
    return Clip(np.stack(frames), info.fps, info.audio)


def output_kind(path: str | os.PathLike) -> str:
    """``"folder"`` (no suffix, or an existing folder), ``"gif"``, or the video suffix; refuses anything else."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == "":
        return "folder"
    if suffix == ".gif":
        return "gif"
    if suffix in VIDEO_SUFFIXES:
        return suffix
    raise ValueError(
        f"`output`: {str(path)!r} is not a clip nst-jax writes; use {', '.join((*VIDEO_SUFFIXES, '.gif'))} "
        "or a folder (no suffix) for numbered PNG frames"
    )


def encoder(suffix: str) -> str:
    """The first encoder of :data:`ENCODERS` for ``suffix`` that this FFmpeg has; refuses when it has none."""
    av = _av("output")
    for name in ENCODERS[suffix]:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # PyAV raises its own UnknownCodecError (ValueError in older versions)
            continue
    raise ValueError(f"`output`: this FFmpeg (PyAV {av.__version__}) has no encoder for {suffix} "
                     f"({', '.join(ENCODERS[suffix])}); write .gif or a folder of frames")  # fmt: skip


def check_output_clip(path: str | os.PathLike) -> str:
    """Checks before the run that ``path`` can be written as a clip; returns :func:`output_kind`."""
    from nst_jax.files import check_output_file, check_output_folder

    kind = output_kind(path)
    if kind == "folder":  # ours, and nothing in it but our frames: a file of the user's there is refused
        check_output_folder(path, KIND, allowed=our_frames(path))
    else:
        check_output_file(path)
        if kind != "gif":
            encoder(kind)
    return kind


def frame_name(index: int) -> str:
    return f"frame_{index + 1:05d}.png"


def is_frame_name(name: str) -> bool:
    """Whether ``name`` is one :func:`frame_name` gives: a frame nst-jax writes into a folder of frames."""
    return re.fullmatch(r"frame_\d{5,}\.png", name) is not None


def our_frames(folder: str | os.PathLike) -> set[str]:
    """The names in ``folder`` that are frames nst-jax writes (none when it does not exist)."""
    folder = Path(folder)
    return {name for name in os.listdir(folder) if is_frame_name(name)} if folder.is_dir() else set()


def write_clip(path: str | os.PathLike, frames: np.ndarray, fps: float, audio_from: str | None = None) -> str | None:
    """Writes ``frames`` (``[T, h, w, 3]`` in [0, 1]) as ``path``'s kind, replacing it only when whole.

    ``audio_from``: a video file whose audio is copied into the output, unchanged (where the
    container takes its codec). Returns a one-line note when audio was dropped, else None.
    """
    from nst_jax.files import write_folder
    from nst_jax.io import save_image, to_uint8

    path = Path(path)
    kind = output_kind(path)
    fps = float(min(MAX_FPS, max(fps, 1e-3)))
    if kind == "folder":
        names = [frame_name(i) for i in range(len(frames))]

        def fill(staging: Path) -> None:
            for name, frame in zip(names, frames, strict=True):
                save_image(staging / name, frame)

        write_folder(path, KIND, fill, allowed=our_frames(path) | set(names))
        return "the audio is not kept in a folder of frames" if audio_from else None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
    try:
        if kind == "gif":
            images = [Image.fromarray(to_uint8(f), "RGB") for f in frames]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                           duration=max(20, round(1000 / fps)), loop=0)  # fmt: skip
            note = "a GIF has no audio; the audio is not kept" if audio_from else None
        else:
            note = _write_video(Path(tmp), kind, frames, fps, audio_from)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return note


def _write_video(path: Path, suffix: str, frames: np.ndarray, fps: float, audio_from: str | None) -> str | None:
    from nst_jax.io import to_uint8

    av = _av("output")
    codec = encoder(suffix)
    h, w = frames.shape[1:3]
    # yuv420p (what every player takes) needs even sides: the last row or column is repeated.
    even_h, even_w = h + h % 2, w + w % 2
    note = None
    source = None
    with av.open(str(path), "w", format={".mkv": "matroska", ".mov": "mov"}.get(suffix, suffix[1:])) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "17", "preset": "medium"}
        elif codec.startswith("libvpx"):
            stream.options = {"crf": "20", "b": "0"}
        audio_out = None
        if audio_from is not None:
            try:
                source = av.open(audio_from)
                if source.streams.audio:
                    audio_out = out.add_stream_from_template(source.streams.audio[0])
                else:
                    source.close()
                    source = None
            except (av.error.FFmpegError, ValueError) as e:
                note = f"the audio could not be copied into {suffix} ({e}); it is dropped"
                if source is not None:
                    source.close()
                source, audio_out = None, None
        for frame in frames:
            pixels = to_uint8(frame)
            if (even_h, even_w) != (h, w):
                pixels = np.pad(pixels, ((0, even_h - h), (0, even_w - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if source is not None and audio_out is not None:
            try:
                for packet in source.demux(source.streams.audio[0]):
                    if packet.dts is None:
                        continue
                    packet.stream = audio_out
                    out.mux(packet)
            except av.error.FFmpegError as e:
                note = f"the audio could not be copied into {suffix} ({e}); it is cut short"
            finally:
                source.close()
    return note
