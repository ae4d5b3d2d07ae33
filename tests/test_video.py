"""Video: optical flow and its masks, the warp, the clip objective, stylize_video, clip files and `nst-jax video`."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL_NETWORK_CONFIG, one_line_error
from jax.test_util import check_grads

from nst_jax import clips, flow, samples, video
from nst_jax.image import resize


def _pan(count=5, h=24, w=32, speed=2):
    """A clip panning right over the built-in village by ``speed`` px a frame, and its true backward flow."""
    source = np.asarray(resize(jnp.asarray(samples.village(96, 128)), (h + 8, w + speed * count + 8)))
    frames = np.stack([source[4 : 4 + h, 4 + speed * t : 4 + speed * t + w] for t in range(count)])
    true = np.zeros((count, h, w, 2), np.float32)
    true[1:, ..., 0] = speed
    masks = np.ones((count, h, w), np.float32)
    masks[0] = 0
    masks[1:, :, w - speed - 1 :] = 0  # seen in frame t, not in frame t-1
    return frames.astype(np.float32), true, masks


def test_flow_of_a_shift_is_the_shift_and_its_mask_drops_what_was_not_seen():
    big = np.asarray(samples.village(96, 128))
    a, b = big[10:74, 10:106], big[10:74, 13:109]  # b(p) = a(p + (3, 0))
    for method in flow.FLOWS:
        backward = flow.optical_flow(b, a, method)
        assert np.median(backward[..., 0]) == pytest.approx(3.0, abs=0.2), method
        assert np.median(backward[..., 1]) == pytest.approx(0.0, abs=0.2), method
    backward, forward = flow.optical_flow(b, a), flow.optical_flow(a, b)
    mask = flow.reliability(backward, forward)
    assert mask[:, -3:].max() == 0.0  # those columns of b were never in a
    assert mask[:, :-6].mean() > 0.9
    warped = np.asarray(flow.warp(jnp.asarray(a), jnp.asarray(backward)))
    assert np.abs(warped - b)[mask > 0].mean() < 0.1 * np.abs(a - b).mean()


def test_reliability_marks_a_disocclusion_and_a_motion_boundary():
    h, w = 40, 40
    backward = np.zeros((h, w, 2), np.float32)
    backward[10:20, 10:20, 0] = -4.0  # a square moved 4 px right; the background stood still
    forward = np.zeros((h, w, 2), np.float32)
    forward[10:20, 6:16, 0] = 4.0
    mask = flow.reliability(backward, forward)
    assert mask[30:, 30:].min() == 1.0  # still background
    assert mask[12:18, 12:18].min() == 1.0  # the square's inside: both flows agree
    assert mask[12:18, 20].max() == 0.0 or mask[12:18, 19].max() == 0.0  # its edge: a motion boundary
    # Where forward and backward disagree (the background the square uncovered, here made inconsistent) is 0.
    forward[12:18, 6:10, 0] = 4.0
    backward_uncovered = backward.copy()
    backward_uncovered[12:18, 6:10, 0] = 0.0
    assert flow.reliability(backward_uncovered, forward)[13:17, 7:9].max() == 0.0


def test_warp_moves_by_whole_pixels_and_its_gradients_are_right(rng):
    image = jnp.asarray(rng.random((12, 16, 3)), jnp.float32)
    shift = jnp.zeros((12, 16, 2)).at[..., 0].set(2.0).at[..., 1].set(1.0)
    warped = flow.warp(image, shift)
    np.testing.assert_allclose(warped[:-1, :-2], image[1:, 2:], atol=1e-6)
    np.testing.assert_allclose(warped[:, -1], image[jnp.minimum(jnp.arange(12) + 1, 11), -1], atol=1e-6)  # clamped
    fractional = jnp.asarray(rng.uniform(-2.3, 2.3, (12, 16, 2)), jnp.float32)
    check_grads(lambda x: flow.warp(x, fractional), (image,), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
    check_grads(lambda f: flow.warp(image, f), (fractional,), order=1, modes=("rev",), atol=5e-2, rtol=5e-2)


def test_resize_flow_scales_the_vectors_with_the_picture():
    field = np.zeros((20, 40, 2), np.float32)
    field[..., 0], field[..., 1] = 4.0, -2.0
    half = np.asarray(flow.resize_flow(field, (10, 20)))
    np.testing.assert_allclose(half[..., 0], 2.0, atol=1e-5)
    np.testing.assert_allclose(half[..., 1], -1.0, atol=1e-5)
    mask = np.ones((20, 40), np.float32)
    mask[5, 5] = 0
    assert np.asarray(flow.resize_mask(mask, (10, 20)))[2, 2] == 0.0


def test_frame_flows_finds_the_cut():
    frames, _, _ = _pan(4, 48, 64)
    other = np.asarray(samples.swirls(48, 64))
    clip = np.concatenate([frames, other[None], other[None]])
    _, masks, cuts = flow.frame_flows(clip)
    assert cuts == [4]
    assert masks[4].max() == 0.0 and masks[0].max() == 0.0
    assert masks[1].mean() > 0.8 and masks[5].mean() > 0.9


def _objectives(small_network, frames, style):
    _, network, params = small_network
    from nst_jax.objective import make_objective

    return params, [
        make_objective(params, jnp.asarray(f), jnp.asarray(style), SMALL_NETWORK_CONFIG, network=network)
        for f in frames
    ]


def test_clip_objective_is_the_frames_mean_plus_the_temporal_terms(small_network, rng):
    """By hand, with a long-term offset: frame t against warped frames t-1 and t-2, two of them held (finished)."""
    frames, true, _ = _pan(3)
    style = rng.random((24, 24, 3)).astype(np.float32)
    params, objectives = _objectives(small_network, frames, style)
    held = rng.random((2, *frames.shape[1:])).astype(np.float32)  # frames -2 and -1, oldest first
    flows = np.stack([true, 2 * true])  # the pan's backward flow to one and to two frames back
    masks = (rng.random((2, *frames.shape[:3])) > 0.3).astype(np.float32)
    clip = video.ClipObjective(
        params=params,
        frames=jax.tree.map(lambda *x: jnp.stack(x), *[o.replace(params=None) for o in objectives]),
        flows=jnp.asarray(flows),
        masks=jnp.asarray(masks),
        held=jnp.asarray(held),
        temporal_weight=jnp.asarray(7.0),
        offsets=(1, 2),
    )
    images = jnp.asarray(rng.random(frames.shape), jnp.float32)
    loss, aux = clip(images)
    own = np.mean([float(o(images[t])[0]) for t, o in enumerate(objectives)])
    sequence = np.concatenate([held, np.asarray(images)])  # index 2 + t is frame t
    temporal = 0.0
    for k, j in enumerate((1, 2)):
        terms = []
        for t in range(3):
            shifted = np.asarray(flow.warp(jnp.asarray(sequence[2 + t - j]), jnp.asarray(flows[k, t])))
            terms.append(np.mean(masks[k, t][..., None] * (np.asarray(images[t]) - shifted) ** 2))
        temporal += np.mean(terms)
    assert float(loss) == pytest.approx(own + 7.0 * temporal, rel=1e-5)
    assert float(aux["temporal"]) == pytest.approx(7.0 * temporal, rel=1e-5)
    assert float(jax.jit(lambda c, x: c(x)[0])(clip, images)) == pytest.approx(float(loss), rel=1e-5)  # jit == eager
    # A later pass: pixels no neighbour holds are held to the frames' last results.
    stay = rng.random(frames.shape).astype(np.float32)
    stay_masks = np.clip(1.0 - masks.sum(axis=0), 0.0, 1.0)
    later = clip.replace(stay=jnp.asarray(stay), stay_masks=jnp.asarray(stay_masks))
    staying = np.mean(stay_masks[..., None] * (np.asarray(images) - stay) ** 2)
    assert float(later(images)[0]) == pytest.approx(own + 7.0 * (temporal + staying), rel=1e-5)


def test_long_term_masks_keep_what_nearer_frames_do_not_cover():
    frames, _, _ = _pan(5, 48, 64)
    settings = video.VideoConfig(long_term=(1, 2, 4))
    flows, masks, cuts = flow.span_flows(frames, range(1, 5), settings.long_term)
    assert flows.shape == (3, 4, 48, 64, 2) and cuts == []
    assert np.median(flows[1, 1][..., 0]) == pytest.approx(4.0, abs=0.3)  # frame 2 to frame 0: two steps of 2 px
    assert masks[2, :3].max() == 0.0  # frames 1-3 have no frame 4 back
    assert np.all(masks.sum(axis=0) <= 1.0)  # each pixel held to one frame at most
    assert masks[1, 1].sum() > 0  # the columns frame 1 never showed come from frame 0


def _stylize(small_network, frames, style, steps=15, **video_settings):
    _, network, params = small_network
    config = SMALL_NETWORK_CONFIG.replace(num_steps=steps, base_size=16, num_scales=1)
    settings = video.VideoConfig(**video_settings)
    return video.stylize_video(frames, style, config, settings, params=params, network=network)


def test_the_temporal_term_removes_flicker(small_network, rng):
    frames, true, masks = _pan(5)
    style = rng.random((32, 32, 3)).astype(np.float32)
    alone = _stylize(small_network, frames, style, temporal_weight=0.0, window=1)
    held = _stylize(small_network, frames, style, temporal_weight=2000.0, window=5)
    error = lambda result: video.temporal_error(result.frames, true, masks)[1:].mean()
    assert error(held) < 0.5 * error(alone)
    assert held.frames.shape == frames.shape and held.window == 5
    assert held.batched_evaluations < alone.batched_evaluations  # one evaluation steps every frame of the window


def test_windows_and_resume_are_the_same_clip(small_network, rng):
    frames, _, _ = _pan(4)
    style = rng.random((32, 32, 3)).astype(np.float32)
    whole = _stylize(small_network, frames, style, window=2)
    _, network, params = small_network
    config = SMALL_NETWORK_CONFIG.replace(num_steps=15, base_size=16, num_scales=1)
    resumed = video.stylize_video(
        frames, style, config, video.VideoConfig(window=2), params=params, network=network, finished=whole.frames[:2]
    )
    np.testing.assert_array_equal(resumed.frames[:2], whole.frames[:2])
    np.testing.assert_allclose(resumed.frames[2:], whole.frames[2:], atol=1e-5)


def test_a_stop_keeps_the_finished_windows(small_network, rng):
    frames, _, _ = _pan(4)
    style = rng.random((32, 32, 3)).astype(np.float32)
    _, network, params = small_network
    config = SMALL_NETWORK_CONFIG.replace(num_steps=10, chunk_size=5, base_size=16, num_scales=1)
    saved = []
    with pytest.raises(video.VideoInterrupted) as caught:
        video.stylize_video(
            frames, style, config, video.VideoConfig(window=2), params=params, network=network,
            callback=lambda p: p.frames.start >= 2, on_window=lambda span, images: saved.append(span),
        )  # fmt: skip
    assert len(caught.value.result.frames) == 2 and saved == [range(0, 2)]


def test_later_passes_go_backward_then_forward_and_keep_the_clip_steady(small_network, rng):
    frames, true, masks = _pan(4)
    style = rng.random((32, 32, 3)).astype(np.float32)
    _, network, params = small_network
    config = SMALL_NETWORK_CONFIG.replace(num_steps=15, base_size=16, num_scales=1)
    one = video.stylize_video(frames, style, config, video.VideoConfig(temporal_weight=2000.0), params=params,
                              network=network)  # fmt: skip
    seen, passes = [], []
    three = video.stylize_video(
        frames, style, config, video.VideoConfig(temporal_weight=2000.0, passes=3, pass_steps=5), params=params,
        network=network, callback=lambda p: seen.append((p.pass_number, p.frames)) and None,
        on_pass=lambda number, images: passes.append((number, images.shape)),
    )  # fmt: skip
    assert passes == [(2, frames.shape), (3, frames.shape)]
    assert [n for n, _ in dict.fromkeys(seen)] == [0] * 4 + [1] * 4 + [2] * 4  # a chunk of every frame, each pass
    backward = [f for n, f in dict.fromkeys(seen) if n == 1]
    assert [f.start for f in backward] == [3, 2, 1, 0] and all(f.step == -1 for f in backward)
    assert three.evaluations > one.evaluations and np.all(np.isfinite(three.frames))
    assert not np.array_equal(three.frames, one.frames)
    flicker = lambda result: video.temporal_error(result.frames, true, masks)[1:].mean()
    assert flicker(three) <= 1.1 * flicker(one)
    assert three.temporal_error.shape == (4,) and three.temporal_error[0] == 0.0
    with pytest.raises(ValueError, match="`passes` 3 > 1 need more"):
        video.stylize_video(frames, style, config, video.VideoConfig(passes=3), params=params, network=network,
                            flows=(true, masks, []))  # fmt: skip


def test_video_settings_are_checked():
    with pytest.raises(ValueError, match="`temporal_weight` must be in"):
        video.VideoConfig(temporal_weight=-1.0)
    with pytest.raises(ValueError, match="`window` must be an integer from 1 to"):
        video.VideoConfig(window=0)
    with pytest.raises(ValueError, match=r"`flow` must be one of \('dis', 'farneback'\), got 'deep'"):
        video.VideoConfig(flow="deep")
    with pytest.raises(ValueError, match="`long_term` must be increasing frame offsets"):
        video.VideoConfig(long_term=(2, 4))
    with pytest.raises(ValueError, match="`passes` must be an integer from 1 to 64, got 0"):
        video.VideoConfig(passes=0)
    with pytest.raises(ValueError, match="`pass_steps` must be an integer from 1 to"):
        video.VideoConfig(pass_steps=0)
    with pytest.raises(ValueError, match=r"`blend` must be in \[0, 1\], got 1.5"):
        video.VideoConfig(blend=1.5)
    with pytest.raises(ValueError, match="`frames` has shape"):
        video.check_frames(np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm", "clip.gif", "frames"])
def test_clips_round_trip(tmp_path, name):
    frames, _, _ = _pan(4, 30, 40)
    path = tmp_path / name
    assert clips.check_output_clip(path) in (".mp4", ".webm", "gif", "folder")
    assert clips.write_clip(path, frames, 12.0) is None
    info = clips.clip_info(path)
    assert info.frames == 4 and info.fps == pytest.approx(12.0 if name != "frames" else 25.0, rel=0.05)
    back = clips.read_clip(path, 40)
    assert back.frames.shape == (4, 30, 40, 3)
    tolerance = 0.01 if name == "frames" else 0.06  # lossy codecs; a GIF's 256 colours
    assert np.abs(back.frames - frames).mean() < tolerance
    part = clips.read_clip(path, 20, start=1, end=3)
    assert part.frames.shape == (2, 15, 20, 3)


def test_clip_files_are_checked(tmp_path):
    with pytest.raises(ValueError, match="is not a clip nst-jax writes"):
        clips.check_output_clip(tmp_path / "out.txt")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="files nst-jax did not write"):
        clips.check_output_clip(user)
    with pytest.raises(ValueError, match="holds no frames"):
        clips.clip_info(user)
    ours = tmp_path / "ours"  # a folder of frames nst-jax wrote, with a file of the user's added
    clips.write_clip(ours, np.zeros((2, 8, 8, 3), np.float32), 10.0)
    (ours / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="also holds 'notes.txt'"):
        clips.check_output_clip(ours)
    with pytest.raises(ValueError, match="also holds 'notes.txt'"):
        clips.write_clip(ours, np.zeros((3, 8, 8, 3), np.float32), 10.0)
    assert (ours / "notes.txt").read_text() == "mine"
    (ours / "notes.txt").unlink()
    clips.write_clip(ours, np.zeros((3, 8, 8, 3), np.float32), 10.0)  # ours alone: replaced, longer or shorter
    assert sorted(clips.our_frames(ours)) == ["frame_00001.png", "frame_00002.png", "frame_00003.png"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clips.clip_info(tmp_path / "missing.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 40)
    with pytest.raises(ValueError, match="is not a readable video"):
        clips.clip_info(tmp_path / "broken.mp4")
    with pytest.raises(ValueError, match="frames at .* take .* GiB"):
        clips.check_span(50_000, (2160, 3840), 3840, 0, None, "input")
    with pytest.raises(ValueError, match="is not a frame range"):
        clips.check_span(10, (20, 20), 20, 5, 3, "input")


def test_video_command_mistakes_are_one_line(tmp_path, capsys):
    frames, _, _ = _pan(3, 30, 40)
    clips.write_clip(tmp_path / "in.gif", frames, 10)
    style = tmp_path / "style.png"
    from nst_jax.io import save_image

    save_image(style, samples.swirls(32, 32))
    one_line_error(capsys, ["video", str(tmp_path / "in.gif"), str(style), "-o", str(tmp_path / "o.txt")],
                   "is not a clip nst-jax writes")  # fmt: skip
    one_line_error(capsys, ["video", str(tmp_path / "none.gif"), str(style), "-o", str(tmp_path / "o.gif")],
                   "does not exist")  # fmt: skip
    one_line_error(capsys, ["video", str(tmp_path / "in.gif"), str(style), "-o", str(tmp_path / "o.gif"),
                            "--window", "0"], "`window` must be an integer")  # fmt: skip
    one_line_error(capsys, ["video", str(tmp_path / "in.gif"), str(style), "-o", str(tmp_path / "o.gif"),
                            "--start", "5"], "`input` has 3 frames")  # fmt: skip
    assert not (tmp_path / "o.gif").exists() and not (tmp_path / "o.gif.partial").exists()


def test_video_command_writes_the_clip(tmp_path, capsys):
    """End to end on VGG-19 at 48 px (two steps): the GIF appears, the partial frames go."""
    from nst_jax import cli
    from nst_jax.io import save_image

    frames, _, _ = _pan(3, 36, 48)
    clips.write_clip(tmp_path / "in", frames, 10)  # a folder of frames
    save_image(tmp_path / "style.png", samples.swirls(48, 48))
    argv = ["video", str(tmp_path / "in"), str(tmp_path / "style.png"), "-o", str(tmp_path / "out.gif"),
            "--size", "48", "--steps", "2", "--window", "2", "--fps", "8",
            "--passes", "2", "--pass-steps", "1"]  # fmt: skip
    assert cli.main([*argv, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["frames"] == 3 and plan["window"] == 2 and plan["shape"] == [36, 48] and plan["passes"] == 2
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "pass 2 of 2 done" in err and "wrote" in err
    info = clips.clip_info(tmp_path / "out.gif")
    assert info.shape == (36, 48) and info.fps == pytest.approx(8.0, rel=0.05)
    assert not (tmp_path / "out.gif.partial").exists()


def _clip_with_audio(path, seconds=1.0, fps=10, size=(32, 48)):
    """An H.264 + AAC clip (a grey ramp over time and a 440 Hz tone), made with PyAV."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        audio = out.add_stream("aac", rate=44100)
        for t in range(int(seconds * fps)):
            image = np.full((*size, 3), t * 20 % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        total = int(seconds * 44100)
        for start in range(0, total, 1024):
            n = min(1024, total - start)
            wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(start, start + n) / 44100)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, start
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)


def test_the_audio_is_copied_or_dropped_with_a_note(tmp_path):
    _clip_with_audio(tmp_path / "in.mp4")
    info = clips.clip_info(tmp_path / "in.mp4")
    assert info.audio and info.frames == 10 and info.fps == pytest.approx(10.0)
    frames = clips.read_clip(tmp_path / "in.mp4", 48).frames
    assert clips.write_clip(tmp_path / "out.mp4", frames, 10.0, audio_from=str(tmp_path / "in.mp4")) is None
    assert clips.clip_info(tmp_path / "out.mp4").audio
    note = clips.write_clip(tmp_path / "out.webm", frames, 10.0, audio_from=str(tmp_path / "in.mp4"))
    assert "could not be copied into .webm" in note and not clips.clip_info(tmp_path / "out.webm").audio
    assert "no audio" in clips.write_clip(tmp_path / "out.gif", frames, 10.0, audio_from=str(tmp_path / "in.mp4"))


def test_an_interrupted_clip_keeps_its_finished_frames_and_resumes(tmp_path, capsys, monkeypatch):
    """Ctrl-C after the first window: OUT is not written, OUT.partial holds the frame; --resume passes it back."""
    from nst_jax import cli
    from nst_jax.io import save_image

    frames, _, _ = _pan(3, 36, 48)
    clips.write_clip(tmp_path / "in.gif", frames, 10)
    save_image(tmp_path / "style.png", samples.swirls(48, 48))
    seen = {}

    def interrupted(frames, style, config, settings, **kwargs):
        seen["finished"] = kwargs["finished"]
        kwargs["on_window"](range(0, 1), frames[:1])
        raise video.VideoInterrupted(video.VideoResult(frames[:1], [], np.zeros(1), 0.0, 0, 0.0, 0.0, 1))

    monkeypatch.setattr(video, "stylize_video", interrupted)
    argv = ["video", str(tmp_path / "in.gif"), str(tmp_path / "style.png"), "-o", str(tmp_path / "out.mp4"),
            "--size", "48"]  # fmt: skip
    assert cli.main(argv) == 130
    assert "continue with --resume" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists() and (tmp_path / "out.mp4.partial" / "frame_00001.png").is_file()
    assert seen["finished"] is None
    assert cli.main([*argv, "--resume"]) == 130
    assert seen["finished"].shape == (1, 36, 48, 3)
    np.testing.assert_allclose(seen["finished"][0], clips.read_clip(tmp_path / "in.gif", 48).frames[0], atol=0.6 / 255)


def test_the_partial_folder_loses_only_our_frames(tmp_path):
    from nst_jax.commands import _remove_partial
    from nst_jax.files import MARKER

    partial = tmp_path / "out.mp4.partial"
    partial.mkdir()
    for name in ("frame_00001.png", "frame_00002.png", MARKER):
        (partial / name).write_bytes(b"x")
    (partial / "notes.txt").write_text("mine")
    _remove_partial(partial)
    assert sorted(p.name for p in partial.iterdir()) == ["notes.txt"]
    (partial / "notes.txt").unlink()
    (partial / "frame_00001.png").write_bytes(b"x")
    _remove_partial(partial)
    assert not partial.exists()


def test_luminance_only_frames_keep_their_own_colours(small_network, rng):
    """With preserve_colour 'luminance' each frame's chroma is its content's; the temporal term still holds them."""
    from nst_jax.image import rgb_to_yiq

    frames, _, _ = _pan(3)
    style = rng.random((32, 32, 3)).astype(np.float32)
    _, network, params = small_network
    config = SMALL_NETWORK_CONFIG.replace(num_steps=10, base_size=16, num_scales=1, preserve_colour="luminance")
    result = video.stylize_video(frames, style, config, video.VideoConfig(), params=params, network=network)
    chroma = lambda x: np.asarray(rgb_to_yiq(jnp.asarray(x)))[..., 1:]
    inside = (slice(2, -2), slice(2, -2))  # away from pixels clipped into [0, 1]
    np.testing.assert_allclose(chroma(result.frames)[:, inside[0], inside[1]], chroma(frames)[:, inside[0], inside[1]],
                               atol=0.02)  # fmt: skip
    assert not np.allclose(result.frames, frames, atol=0.02)  # styled, in luminance


_FOUR_DEVICES = """
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from nst_jax import StyleConfig, optim, samples, transfer, video
from nst_jax.image import resize
from nst_jax.network import from_flax

class Small(nn.Module):  # the test suite's SmallCNN
    @nn.compact
    def __call__(self, x):
        c1 = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x - 0.5))
        c2 = nn.relu(nn.Conv(12, (3, 3), name="conv2")(nn.avg_pool(c1, (2, 2), strides=(2, 2))))
        return {"c1": c1, "c2": c2}

assert len(jax.devices()) == 4
module = Small()
params = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
network = from_flax(module, name="small")
source = np.asarray(resize(jnp.asarray(samples.village(96, 128)), (32, 60)))
frames = np.stack([source[4:28, 4 + 2 * t : 36 + 2 * t] for t in range(6)]).astype(np.float32)
style = np.asarray(samples.swirls(32, 32), np.float32)
config = StyleConfig(network="custom", content_layers=("c2",), style_layers=("c1", "c2"), num_steps=8,
                     base_size=16, num_scales=1)
settings = video.VideoConfig(window=4, temporal_weight=2000.0)
one = video.stylize_video(frames, style, config, settings, params=params, network=network)
mesh = optim.image_mesh()
seen, optimize = [], transfer.optimize

def watched(objective, image, *args, mesh=None, **kwargs):
    result = optimize(objective, image, *args, mesh=mesh, **kwargs)
    seen.append((image.shape[0], None if mesh is None else mesh.size))
    return result

transfer.optimize = watched
four = video.stylize_video(frames, style, config, settings, params=params, network=network, mesh=mesh)
assert seen == [(4, 4), (2, None)], seen  # the window of four frames split, the last two on one device
assert np.abs(four.frames - one.frames).mean() < 2e-3, np.abs(four.frames - one.frames).mean()
try:
    video.stylize_video(frames, style, config, video.VideoConfig(window=2), params=params, network=network, mesh=mesh)
    raise AssertionError("a window of 2 over 4 devices was taken")
except ValueError as e:
    assert "must be a multiple of 4" in str(e), e

# The command line: --shard-frames' plan, and a window that does not split refused in one line.
import contextlib, io, json
from nst_jax import cli, clips, save_image
clips.write_clip("in", frames, 10)
save_image("style.png", style)
argv = ["video", "in", "style.png", "-o", "out.gif", "--size", "32", "--shard-frames", "--dry-run"]
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    assert cli.main([*argv, "--window", "4"]) == 0
    assert cli.main([*argv, "--window", "2"]) == 2
plan = json.loads(out.getvalue().strip())
assert plan["devices"] == 4 and plan["window"] == 4, plan
said = err.getvalue()
assert len(said.splitlines()) == 1 and "--window must be a multiple of 4, got 2" in said, said
print("ok")
"""


@pytest.mark.slow
def test_a_windows_frames_split_over_devices(tmp_path):
    """Four forced host devices (a subprocess: XLA_FLAGS must come before JAX starts)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", _FOUR_DEVICES], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-2000:] + done.stderr[-4000:]
