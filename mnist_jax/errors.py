"""Every failure raised on purpose and its exit status (README's table; `cli.run` exits): a leaf any module may import."""

EXIT_USAGE = 2  # bad arguments, bad or missing data, an unwritable or busy --out, a damaged file
EXIT_DIVERGED = 3  # the loss stopped being finite
EXIT_DOES_NOT_FIT = 4  # more memory than the device has
EXIT_WRITE_FAILED = 5  # a save failed (disk full, I/O error): the last complete save is kept
EXIT_PEER_LOST = 6  # another process of the run died or hung, or the coordinator could not be reached
EXIT_HANGUP = 129  # SIGHUP (the terminal closed): what was saved is kept
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): likewise
EXIT_BROKEN_PIPE = 141  # the output's reader stopped early (`| head`), as a shell reports SIGPIPE
EXIT_TERMINATED = 143  # SIGTERM (`kill`, `timeout`, SLURM's scancel, a preempted VM): likewise
DOCUMENTED_EXITS = (0, EXIT_USAGE, EXIT_DIVERGED, EXIT_DOES_NOT_FIT, EXIT_WRITE_FAILED, EXIT_PEER_LOST,
                    EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE, EXIT_TERMINATED)


class UsageError(ValueError):
    """What was asked cannot be done as asked (exit 2); the message says why."""


class DataError(UsageError):
    """MNIST could not be read or did not verify."""


class CheckpointError(UsageError):
    """A run's checkpoint cannot be restored or resumed."""


class ProgressError(UsageError):
    """A study's or sweep's saved progress cannot be continued."""


class ResultFileError(UsageError):
    """A result file (`results.json`, `study_arrays.npz`, `sweep.json`) is not what the scripts write."""


class NonFiniteLoss(Exception):
    """Training diverged (exit 3); what was saved up to the epoch before is intact."""

    def __init__(self, epoch: int, where: str = ""):
        super().__init__(f"non-finite loss in epoch {epoch}{where}")
        self.epoch = epoch


class DoesNotFit(Exception):
    """The work asked for needs more memory than the device has (exit 4)."""


class PeerLost(Exception):
    """Another process of the run died or hung, or none could join (exit 6)."""


class StopAgreed(Exception):
    """A SIGTERM reached a process of a run of several, and all agreed to stop here (exit 143)."""
