"""cli.exit_now: the command's process ends without the interpreter's teardown, and loses nothing."""

import subprocess
import sys

# Unflushed output on both streams, a non-daemon thread still writing, an atexit handler and a
# logging file handler: all must be done when the process has gone, with the code given.
CHILD = r"""
import atexit, logging, sys, threading, time
from instructglm.cli import exit_now
out = sys.argv[1]
logging.basicConfig(filename=out + ".log", level=logging.INFO)
logging.getLogger("child").info("logged before exit")
atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
def late():
    time.sleep(0.3)
    open(out + ".thread", "w").write("finished")
threading.Thread(target=late).start()
sys.stdout.write("no newline on stdout")
sys.stderr.write("no newline on stderr")
exit_now(3)
"""


def test_exit_now_keeps_output_handlers_threads_and_code(tmp_path):
    out = str(tmp_path / "child")
    proc = subprocess.run([sys.executable, "-c", CHILD, out], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stdout == "no newline on stdout" and proc.stderr.endswith("no newline on stderr")
    assert (tmp_path / "child.atexit").read_text() == "ran"
    assert (tmp_path / "child.thread").read_text() == "finished"
    assert "logged before exit" in (tmp_path / "child.log").read_text()


def test_module_entry_point_keeps_exit_codes(tmp_path):
    """``python -m instructglm``: a user error still exits 2 with its one line."""
    proc = subprocess.run([sys.executable, "-m", "instructglm", "convert", str(tmp_path / "missing.json"), "-o",
                           str(tmp_path / "out.jsonl")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "missing.json" in proc.stderr and "Traceback" not in proc.stderr
