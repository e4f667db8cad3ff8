# Batch entry executed by GIMP's python-fu-eval: exec(open(CI_DIR + '/run.py').read()).
# Runs the in-GIMP tests ($INPAINTD_GIMP_TESTS, default test_in_gimp.py) with GIMP's pytest.  A failing batch command makes
# gimp-console exit non-zero, so failures are raised rather than printed.
import os
import sys

import pytest

sys.stdout.flush()
_ci = os.environ.get("INPAINTD_CI_DIR", "/ci")
_args = ["-q", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", _ci, "--junitxml", _ci + "/junit.xml",
         _ci + "/" + os.environ.get("INPAINTD_GIMP_TESTS", "test_in_gimp.py")] + os.environ.get("INPAINTD_GIMP_PYTEST_ARGS", "").split()
_rc = pytest.main(_args)
sys.stdout.flush()
if _rc:
    raise RuntimeError(f"in-GIMP pytest failed with exit status {_rc}")
