"""The daemon keeps freed tensor-sized blocks for reuse instead of page-faulting them in on every request."""
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import numpy as np
from memserve import hostmem
from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
from memserve_api.tensors import add
if sys.argv[1] == "tuned":
    assert hostmem.keep_tensor_memory()
req = pb.ExecuteRequest()
add(req.inputs, "x", np.ones((1, 262144), np.float32))  # 1 MiB
req.SerializeToString()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    req.SerializeToString()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_serializing_1_mib_fifty_times_faults_its_pages_in_once():
    # 1 MiB is 256 pages: untuned, each serialization maps and faults a fresh block.
    assert faults("plain") >= 50 * 200
    assert faults("tuned") < 50 * 20
