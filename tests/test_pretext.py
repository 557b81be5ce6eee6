"""jssl.augment.pretext: labels invert the transformations; colour spaces and bins."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.augment import ops, pretext

KEY = jax.random.PRNGKey(0)


def _noise(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape).astype(np.float32))


# ---------------------------------------------------------------------------- rotation
def test_rotation_labels_invert_the_rotation():
    images = _noise((3, 6, 6, 3))
    rot, labels = jax.jit(pretext.rotate_batch)(images)
    assert rot.shape == (12, 6, 6, 3) and labels.tolist() == [0, 1, 2, 3] * 3
    for i in range(12):
        back = np.rot90(np.asarray(rot[i]), -int(labels[i]), axes=(0, 1))
        np.testing.assert_array_equal(back, images[i // 4])
    assert not np.array_equal(rot[1], rot[0])  # so the check above can fail
    traced = jax.jit(jax.vmap(pretext.rotate))(jnp.repeat(images[:1], 4, 0), jnp.arange(4))
    np.testing.assert_array_equal(traced, rot[:4])
    np.testing.assert_array_equal(pretext.rotate(pretext.rotate(images[0], 3), -3), images[0])
    with pytest.raises(ValueError, match="square"):
        pretext.rotate_batch(jnp.zeros((2, 4, 6, 3)))


# ------------------------------------------------------------------------------ jigsaw
def test_jigsaw_permutation_set_is_greedy_max_min_hamming():
    perms = pretext.jigsaw_permutations(100, seed=0)
    assert perms.shape == (100, 9)
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert len({tuple(p) for p in perms.tolist()}) == 100
    np.testing.assert_array_equal(perms, pretext.jigsaw_permutations(100, seed=0))
    assert not np.array_equal(perms, pretext.jigsaw_permutations(100, seed=1))
    # measured: greedy over 10k random candidates reaches 6 (a random set of 100 gets ~2)
    assert pretext.hamming_min(perms) >= 6
    rand = np.argsort(np.random.default_rng(0).random((100, 9)), axis=1)
    assert pretext.hamming_min(rand) < pretext.hamming_min(perms)


def test_jigsaw_tiles_reassemble_to_the_image():
    perms = pretext.jigsaw_permutations(100)
    images = _noise((16, 12, 15, 3))  # 4x5 cells
    run = jax.jit(jax.vmap(lambda k, x: pretext.jigsaw(k, x, perms)))
    tiles, labels = run(jax.random.split(KEY, 16), images)
    assert tiles.shape == (16, 9, 4, 5, 3) and labels.dtype == jnp.int32
    assert len(set(labels.tolist())) > 8 and 0 <= int(labels.min()) <= int(labels.max()) < 100
    for b in range(16):
        order = np.asarray(tiles[b])[np.argsort(perms[int(labels[b])])]
        grid = order.reshape(3, 3, 4, 5, 3).transpose(0, 2, 1, 3, 4).reshape(12, 15, 3)
        np.testing.assert_array_equal(grid, images[b])
        if int(labels[b]) != 0:
            assert not np.array_equal(tiles[b], np.asarray(tiles[b])[np.argsort(perms[0])])


def test_jigsaw_jitter_and_tile_normalisation():
    perms = pretext.jigsaw_permutations(10)
    img = np.asarray(_noise((30, 30, 1)))
    tiles, label = jax.jit(lambda k, x: pretext.jigsaw(k, x, perms, tile_jitter=3))(KEY, img)
    assert tiles.shape == (9, 7, 7, 1)
    inorder = np.asarray(tiles)[np.argsort(perms[int(label)])]
    for cell in range(9):  # each tile is a crop of its own cell at an offset in [0, 3]
        r, c = divmod(cell, 3)
        hits = [(dy, dx) for dy in range(4) for dx in range(4) if np.array_equal(
            inorder[cell], img[10 * r + dy:10 * r + dy + 7, 10 * c + dx:10 * c + dx + 7])]
        assert len(hits) == 1, cell
    norm, _ = jax.jit(lambda k, x: pretext.jigsaw(k, x, perms, normalize_tiles=True))(KEY, img)
    np.testing.assert_allclose(norm.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(norm.std(axis=(1, 2)), 1.0, atol=1e-3)
    with pytest.raises(ValueError, match="tile_jitter"):
        pretext.jigsaw(KEY, jnp.asarray(img), perms, tile_jitter=10)


# ------------------------------------------------------------------------ colorization
def test_lab_known_values_and_roundtrip():
    known = {(1.0, 1.0, 1.0): (100.0, 0.0, 0.0), (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
             (1.0, 0.0, 0.0): (53.2408, 80.0925, 67.2032),  # standard sRGB D65 values
             (0.0, 0.0, 1.0): (32.2970, 79.1875, -107.8602)}
    lab = np.asarray(pretext.rgb_to_lab(jnp.asarray(list(known))))
    np.testing.assert_allclose(lab, np.asarray(list(known.values())), atol=2e-3)
    rgb = np.random.default_rng(2).uniform(size=(4000, 3)).astype(np.float32)
    rgb[:10] = 0.01  # the linear segments of the sRGB curve and of f(t)
    back = jax.jit(lambda x: pretext.lab_to_rgb(pretext.rgb_to_lab(x)))(rgb)
    np.testing.assert_allclose(back, rgb, atol=2e-5)


def test_colorization_targets_bins():
    centres = pretext.ab_bin_centers()
    assert centres.shape == (261, 2)  # in-gamut 10x10 bins of the 23x23 grid centred on 0
    img = _noise((16, 16, 3), seed=3)
    l_in, labels = jax.jit(pretext.colorization_targets)(img)
    lab = np.asarray(pretext.rgb_to_lab(img))
    np.testing.assert_allclose(l_in[..., 0], lab[..., 0] / 100, atol=1e-6)
    assert labels.shape == (16, 16) and int(labels.min()) >= 0 and int(labels.max()) < 261
    # every pixel of a real RGB image falls inside its class's 10x10 bin
    assert (np.abs(centres[np.asarray(labels)] - lab[..., 1:]) <= 5.0 + 1e-4).all()
    _, gray_labels = pretext.colorization_targets(img[..., :1])
    assert np.unique(gray_labels).size == 1  # grey input: ab = 0, one class (documented)
    np.testing.assert_allclose(centres[int(gray_labels[0, 0])], (0.0, 0.0))


# ------------------------------------------------------------------ context prediction
def _locate(img, patch):
    p = patch.shape[0]
    hits = [(y, x) for y in range(img.shape[0] - p + 1) for x in range(img.shape[1] - p + 1)
            if np.array_equal(img[y:y + p, x:x + p], patch)]
    assert len(hits) == 1
    return np.array(hits[0])


def test_context_label_matches_the_patch_offset():
    img = np.asarray(_noise((24, 26, 3), seed=4))
    keys = jax.random.split(KEY, 24)
    run = jax.jit(jax.vmap(lambda k: pretext.context_pair(k, jnp.asarray(img), 4, 2)))
    centre, neigh, labels = run(keys)
    assert centre.shape == neigh.shape == (24, 4, 4, 3)
    assert set(labels.tolist()) == set(range(8))  # 24 draws hit every class (p > 0.96)
    for b in range(24):
        offset = _locate(img, np.asarray(neigh[b])) - _locate(img, np.asarray(centre[b]))
        np.testing.assert_array_equal(offset, 6 * np.array(pretext.CONTEXT_OFFSETS[int(labels[b])]))
    run_j = jax.jit(jax.vmap(lambda k: pretext.context_pair(k, jnp.asarray(img), 4, 2, 2)))
    centre, neigh, labels = run_j(keys)
    for b in range(6):
        offset = _locate(img, np.asarray(neigh[b])) - _locate(img, np.asarray(centre[b]))
        expect = 6 * np.array(pretext.CONTEXT_OFFSETS[int(labels[b])])
        assert (np.abs(offset - expect) <= 4).all()
    with pytest.raises(ValueError, match="patch_size"):
        pretext.context_pair(KEY, jnp.asarray(img), 8, 4)


def test_pretext_inputs_batch_with_apply_batch():
    perms = pretext.jigsaw_permutations(100)
    run = jax.jit(lambda key, x: ops.apply_batch(
        lambda k, im: pretext.jigsaw(k, im, perms, tile_jitter=1), key, x))
    tiles, labels = run(KEY, _noise((4, 9, 9, 1)))
    assert tiles.shape == (4, 9, 2, 2, 1) and labels.shape == (4,)
