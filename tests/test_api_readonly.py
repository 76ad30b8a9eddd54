"""The scripting API takes read-only arrays without PyTorch's "not writable" warning, and never writes them."""
from __future__ import annotations

import numpy as np
import pytest

from napari_cellclass import api


def test_read_only_input_becomes_a_private_copy_and_writable_input_is_not_copied():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert api._data(a) is a  # no copy of the user's ordinary array
    a.setflags(write=False)
    b = api._data(a)
    assert b is not a and b.flags.writeable and np.array_equal(a, b) and not a.flags.writeable


SCRIPT = """
import sys, warnings
import numpy as np
from skimage.io import imread
from napari_cellclass import api
if sys.argv[2] == "unfixed":
    api._writable = lambda a: a  # what the API did before: hand the user's array through
image = imread(sys.argv[1])
image.setflags(write=False)
warnings.simplefilter("error")  # PyTorch's UserWarning fails the run
res = api.analyse_smear(image, device="cpu")
assert not image.flags.writeable and set(res["counts"]) == {"RBC", "WBC", "Platelets"}
"""


@pytest.mark.realdata
@pytest.mark.slow
def test_analyse_smear_on_a_read_only_array_gives_no_warning(shared_data, tmp_path):
    """In a fresh process each: PyTorch says "not writable" only once per process."""
    import subprocess
    import sys

    image = shared_data / "bccd" / "JPEGImages" / "BloodImage_00041.jpg"
    if not image.exists():
        image = sorted((shared_data / "bccd" / "JPEGImages").glob("*.jpg"))[0]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}

    def run(mode):
        return subprocess.run([sys.executable, "-c", SCRIPT, str(image), mode], capture_output=True, text=True,
                              env=env, timeout=600)

    fixed = run("fixed")
    assert fixed.returncode == 0 and "not writable" not in fixed.stderr, fixed.stderr[-2000:]
    unfixed = run("unfixed")  # the check can fail: without the copy the warning is an error here
    assert unfixed.returncode != 0 and "not writable" in unfixed.stderr
