"""mnist_jax: the limits of linearity on MNIST, in JAX and Flax NNX.

    from mnist_jax.data import load_mnist
    from mnist_jax.train import TrainConfig, train

    result = train(TrainConfig("mlp_bn"), load_mnist())
    print(result.test_accuracy)
"""

__version__ = "0.1.0"


# The command that uses each library module (one not named here: any command).
COMMAND_OF = {"train": "train checkpoint evaluate models data stages",
              "study": "study results progress memory sharding distributed", "sweep": "sweep",
              "linearity": "linearity", "compare": "comparison torch_reference", "make_assets": "plots"}


def _refuse_a_library_module_run() -> None:
    """`python -m mnist_jax.train` runs a library module, which does nothing: say in one line what to run (exit 2)."""
    import sys

    argv = getattr(sys, "orig_argv", [])
    module = argv[argv.index("-m") + 1] if sys.argv[:1] == ["-m"] and "-m" in argv[:-1] else ""
    name = module.removeprefix("mnist_jax.")
    if module.startswith("mnist_jax.") and name != "__main__" and not name.startswith("scripts"):
        command = next((c for c, modules in COMMAND_OF.items() if name in modules.split()), "COMMAND")
        sys.exit(print(f"{module} is a library module, not a command; run: python -m mnist_jax {command} ... (or mnist-jax "
                       f"{command} ...); python -m mnist_jax --help lists the commands", file=sys.stderr) or 2)


_refuse_a_library_module_run()
