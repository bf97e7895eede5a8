"""deblur given a dask array (issue 24): lazy, same chunks, every frame as in memory."""

from __future__ import annotations

import numpy as np
import pytest

import psfmap

da = pytest.importorskip("dask.array")


def scene(rng, shape) -> np.ndarray:
    """Blobs and points blurred a little: texture the estimator accepts."""
    from scipy.ndimage import gaussian_filter

    sharp = rng.random(shape) < 0.01
    image = gaussian_filter(sharp.astype(float) + gaussian_filter(rng.random(shape), 3),
                            (0,) * (len(shape) - 2) + (1.5, 1.5))
    return (image / image.max()).astype(np.float32)


def test_deblur_of_a_dask_time_lapse_equals_the_in_memory_frames(rng):
    frames = scene(rng, (2, 96, 96))
    lazy = psfmap.deblur(da.from_array(frames, chunks=(1, 96, 96)), iterations=3)
    assert isinstance(lazy, da.Array) and lazy.chunks == ((1, 1), (96,), (96,))
    assert np.array_equal(lazy.compute(), psfmap.deblur(frames, iterations=3))


def test_deblur_gathers_split_frames_with_a_note_and_refuses_return_map(rng):
    frame = scene(rng, (96, 96))
    with pytest.warns(UserWarning, match="gathered into one chunk each"):
        lazy = psfmap.deblur(da.from_array(frame, chunks=48), iterations=2)
    assert lazy.chunks == ((48, 48), (48, 48))
    with pytest.raises(ValueError, match="return_map=True needs an in-memory image"):
        psfmap.deblur(da.from_array(frame), return_map=True)


def test_a_chunk_of_a_lazy_stack_names_its_frame_in_the_whole_stack(rng):
    import warnings

    frames = np.concatenate([scene(rng, (2, 2, 96, 96)).reshape(4, 96, 96),
                             np.zeros((2, 96, 96), np.float32)]).reshape(3, 2, 96, 96)
    stack = da.from_array(frames, chunks=(1, 2, 96, 96))  # frames 4 and 5 are empty
    with pytest.raises(ValueError, match=r"^frame 4 of 6: "):
        psfmap.deblur(stack, iterations=2).compute(scheduler="sync")
    # a frame's warnings carry its number in the stack, as in memory (were all "frame 0")
    from scipy.ndimage import gaussian_filter

    blurred = gaussian_filter(frames[0, 0], 8)  # beyond the model's range: a warning
    flat = np.stack([frames[0, 0], frames[0, 1], blurred / blurred.max()])
    with warnings.catch_warnings(record=True) as lazy_caught:
        warnings.simplefilter("always")
        psfmap.deblur(da.from_array(flat, chunks=(1, 96, 96)), iterations=2).compute(
            scheduler="sync")
    with warnings.catch_warnings(record=True) as memory_caught:
        warnings.simplefilter("always")
        psfmap.deblur(flat, iterations=2)
    lazy_messages = sorted(str(w.message) for w in lazy_caught)
    assert lazy_messages == sorted(str(w.message) for w in memory_caught)
    assert any(message.startswith("frame 2: ") for message in lazy_messages)


def test_a_lazy_stack_takes_one_map_per_frame_and_names_them(rng):
    import warnings

    from scipy.ndimage import gaussian_filter

    frames = scene(rng, (3, 96, 96))
    frames[2] = gaussian_filter(frames[2], 8) / gaussian_filter(frames[2], 8).max()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = psfmap.estimate(frames)  # frame 2's map is flagged
    records = {}
    for kind, image in (("memory", frames), ("lazy", da.from_array(frames, chunks=(1, 96, 96)))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            restored = psfmap.deblur(image, psf_map=maps, iterations=2)
            records[kind] = (np.asarray(restored), sorted(str(w.message) for w in caught))
    assert np.array_equal(records["lazy"][0], records["memory"][0])
    assert records["lazy"][1] == records["memory"][1]
    assert any("psf_map[2]: " in message for message in records["lazy"][1])
