#!/usr/bin/env python3
"""Container entrypoint: torchrun, exiting with the failed rank's own code instead of torchrun's 1.

The Kubeflow operator's `restartPolicy: ExitCode` retries exit codes 128-255 and stops on 1-127, and the
trainer's codes (2 bad config or data, 3 divergence, 143 preempted after a checkpoint) only mean something if
they reach the kubelet. torchrun reads PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT (and
PET_RDZV_* for elastic jobs) from the environment the operator injects; arguments are torchrun's.
"""

from __future__ import annotations

import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun


def failed_rank_code(error: ChildFailedError) -> int:
    """Exit code of the first failed rank; a rank killed by signal N gives 128 + N, as a shell would."""
    _, failure = error.get_first_failure()
    return failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode


def main(argv: list[str]) -> int:
    """Run torchrun with ARGV and return the exit code the container should end with."""
    try:
        torchrun(argv)
    except ChildFailedError as error:
        return failed_rank_code(error)
    except SignalException as error:
        # torchrun forwarded the signal to the ranks and waited for them (PET_SHUTDOWN_TIMEOUT seconds)
        return 128 + int(error.sigval)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main(sys.argv[1:]))
