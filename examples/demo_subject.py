"""A process in several states a dumper cares about, for `make demo` and the README.

It holds an established TCP connection, an flock, a deleted 3 MiB file, and a
child with /dev/kvm open; it prints its pid and its child's pid, then waits.
"""
import fcntl
import os
import socket
import subprocess
import sys
import tempfile
import time

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
client = socket.create_connection(server.getsockname())
peer, _ = server.accept()

lock = tempfile.NamedTemporaryFile(prefix="crwatch-demo-", suffix=".lock")
fcntl.flock(lock, fcntl.LOCK_EX)

scratch = tempfile.NamedTemporaryFile(prefix="crwatch-demo-", delete=False)
scratch.write(os.urandom(3 << 20))
scratch.flush()
os.unlink(scratch.name)

device = "import time; kvm = open('/dev/kvm', 'rb', buffering=0); time.sleep(3600)"
worker = subprocess.Popen([sys.executable, "-c", device], stdout=subprocess.DEVNULL)

print(os.getpid(), worker.pid, flush=True)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # let go of the reader's pipe: not part of the demo
try:
    time.sleep(3600)
finally:
    worker.kill()
