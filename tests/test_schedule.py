"""The coarse-to-fine schedule stylize and sweep share (nst_jax.schedule)."""

import numpy as np

from nst_jax import StyleConfig, schedule
from nst_jax.image import resize


def test_stages_follow_the_config_and_keep_the_output_proportions():
    config = StyleConfig(scales=(100, 200, 400), num_steps=50, coarse_steps=10)
    stages = schedule.stages(config, (300, 400))
    assert [s.shape for s in stages] == [(75, 100), (150, 200), (300, 400)]
    assert [s.ratio for s in stages] == [0.25, 0.5, 1.0]
    assert [s.config.num_steps for s in stages] == [10, 10, 50]
    assert [s.config.size for s in stages] == [100, 200, 400]
    assert all(s.config.scales == () and s.config.num_scales == 1 for s in stages)
    assert [s.last for s in stages] == [False, False, True]
    assert schedule.is_staged(config, (300, 400))
    assert not schedule.is_staged(StyleConfig(size=400, num_scales=1), (300, 400))
    assert schedule.is_staged(StyleConfig(scales=(200,)), (300, 400))  # one stage, at another size


def test_at_stage_scales_every_input_by_the_stage(rng):
    content, style = rng.random((40, 60, 3), np.float32), rng.random((200, 160, 3), np.float32)
    masks = np.stack([np.ones((40, 60), np.float32), np.zeros((40, 60), np.float32)])
    inputs = schedule.Inputs(content, [style, None], (40, 60), "noise", masks, [np.ones((200, 160), np.float32), None])
    stage = schedule.stages(StyleConfig(scales=(30, 60)), (40, 60))[0]
    seen = schedule.at_stage(inputs, stage)
    assert seen.shape == (20, 30) and seen.init == "noise"
    np.testing.assert_array_equal(seen.content, resize(content, (20, 30)))
    assert seen.styles[0].shape == (100, 80, 3) and seen.styles[1] is None  # (a style keeps 64 px at least)
    assert seen.masks.shape == (2, 20, 30)
    assert seen.style_masks[0].shape == (100, 80) and seen.style_masks[1] is None


def test_stage_callback_fills_in_the_stage_and_remembers_a_stop():
    from nst_jax.transfer import Progress

    stage = schedule.stages(StyleConfig(scales=(30, 60)), (40, 60))[1]
    seen = []
    callback = schedule.StageCallback(lambda p: seen.append(p) or p.step >= 2, stage)
    progress = Progress(step=1, num_steps=10, loss=1.0, image=np.zeros((4, 4, 3)), seconds=0.5, num_evals=1)
    assert callback(progress) is False and not callback.stopped
    assert (seen[0].stage, seen[0].num_stages) == (1, 2)
    assert callback(progress._replace(step=2)) is True and callback.stopped


def test_a_later_stage_sees_the_fine_styles(rng):
    style, fine = rng.random((80, 60, 3), np.float32), rng.random((60, 80, 3), np.float32)
    inputs = schedule.Inputs(rng.random((40, 60, 3), np.float32), [style], (40, 60), fine_styles=[fine])
    first, last = schedule.stages(StyleConfig(scales=(30, 60)), (40, 60))
    np.testing.assert_array_equal(schedule.at_stage(inputs, first).styles[0], schedule.scaled(style, first.ratio))
    assert schedule.at_stage(inputs, first).fine_styles is None  # the first stage composes with the style alone
    later = schedule.at_stage(inputs, last)  # the later ones see both: the fine styles set the fine layers
    np.testing.assert_array_equal(later.styles[0], schedule.scaled(style, last.ratio))
    np.testing.assert_array_equal(later.fine_styles[0], schedule.scaled(fine, last.ratio))
