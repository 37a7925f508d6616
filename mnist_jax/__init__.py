"""mnist_jax: the limits of linearity on MNIST, in JAX and Flax NNX.

    from mnist_jax.data import load_mnist
    from mnist_jax.train import TrainConfig, train

    result = train(TrainConfig("mlp_bn"), load_mnist())
    print(result.test_accuracy)
"""

__version__ = "0.1.0"
